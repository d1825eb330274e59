"""scaling.md, the material of docs/scaling.md: the gate, one table per sweep axis (mean ± sd over
seeds, the probe's scene CIs), systems rows per data scale, DDP overhead, the machine, every run.

Points run under the sweep's --no-gate are marked † in every table.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from mvm.report_format import MISSING, fmt, fmt_ci, markdown_table
from mvm.slurm.report_axes import (
    AXIS_X,
    Point,
    ci_half_width,
    points,
    spread,
    spread_text,
    task_names,
    task_value,
)
from mvm.slurm.report_collect import RunRecord

OVERRIDE = "†"
"""Mark of a point run under --no-gate."""

RUN_COLUMNS = ("run", "preset", "scale", "scenes", "train clips", "T", "procs", "batch/rank", "seed", "steps",
               "final loss", "clips/s", "step s", "DDP overhead", "data wait", "comm", "peak MB", "probe (95% CI)",
               "best random", "gate")  # fmt: skip


def _name(record: RunRecord) -> str:
    return record.name + (f" {OVERRIDE}" if record.gate_override else "")


def _run_row(r: RunRecord) -> list[str]:
    """One run; every number through the one formatter (a missing value reads "—")."""
    probe = MISSING if r.probe_pretrained is None else f"{fmt(r.probe_pretrained)} {fmt_ci(r.probe_ci)}"
    return [_name(r), r.preset, fmt(r.data_scale, 0), fmt(r.n_train_scenes), fmt(r.n_train_clips), fmt(r.clip_len),
            fmt(r.world_size), fmt(r.batch_size), fmt(r.seed), fmt(r.steps), fmt(r.final_loss, 4),
            fmt(r.clips_per_s, 1), fmt(r.step_time_s), fmt(r.ddp_overhead), fmt(r.data_wait_frac),
            fmt(r.comm_frac), fmt(r.peak_mem_mb, 0), probe, fmt(r.probe_random_best), fmt(r.probe_gate)]  # fmt: skip


def _x(point: Point) -> str:
    return f"{point.x}{f' {OVERRIDE}' if point.overridden else ''}"


def _margin(record: RunRecord, task: str) -> float | None:
    """Pretrained minus the best random encoder of one run (what the gate tests), None if not probed."""
    pretrained, random_best = task_value(record, task), task_value(record, task, "random_best")
    return None if pretrained is None or random_best is None else pretrained - random_best


def _probe_header(tasks: list[str]) -> list[str]:
    return [name for t in tasks for name in (f"{t} (mean ± sd over seeds)", f"{t} minus best random")]


def _probe_cells(point: Point, tasks: list[str]) -> list[str]:
    """Per task: the pretrained score over seeds with its mean scene-CI half-width, then its margin."""
    cells = []
    for task in tasks:
        values = [task_value(r, task) for r in point.runs]
        width = spread([ci_half_width(r, task) for r in point.runs])
        cells.append(f"{spread_text(values)}; scene CI ±{fmt(width.mean)}" if width else MISSING)
        cells.append(spread_text([_margin(r, task) for r in point.runs]))
    return cells


def _systems_cells(point: Point) -> list[str]:
    runs = point.runs
    return [spread_text([r.clips_per_s for r in runs], 1), spread_text([r.step_time_s for r in runs]),
            spread_text([r.peak_mem_mb for r in runs], 0), spread_text([r.data_wait_frac for r in runs])]  # fmt: skip


def _gates(point: Point) -> str:
    verdicts = [r.probe_gate for r in point.runs if r.probe_gate]
    return f"{verdicts.count('pass')}/{len(verdicts)}" if verdicts else MISSING


def _data_table(pts: list[Point], tasks: list[str]) -> str:
    header = ("scenes", "train clips", "steps", "epochs", *_probe_header(tasks),
              "gates passed", "clips/s", "step s", "peak MB", "data wait")  # fmt: skip
    rows = []
    for p in pts:
        first = p.runs[0]
        epochs = first.clips_seen / first.n_train_clips if first.n_train_clips else None
        rows.append([_x(p), fmt(first.n_train_clips), fmt(first.steps), fmt(epochs, 1), *_probe_cells(p, tasks),
                     _gates(p), *_systems_cells(p)])  # fmt: skip
    return markdown_table(header, rows)


def _axis_table(pts: list[Point], tasks: list[str], label: str) -> str:
    header = (label, "train clips", "steps", *_probe_header(tasks), "gates passed", "clips/s",
              "step s", "peak MB", "data wait")  # fmt: skip
    rows = [[_x(p), fmt(p.runs[0].n_train_clips), fmt(p.runs[0].steps), *_probe_cells(p, tasks), _gates(p),
             *_systems_cells(p)] for p in pts]  # fmt: skip
    return markdown_table(header, rows)


def _ddp_table(pts: list[Point]) -> str:
    header = (
        "processes",
        "threads/process",
        "batch/rank",
        "global batch",
        "lr",
        "steps",
        "step s",
        "step s minus 1 process (same batch/rank)",
        "overhead ratio",
        "comm_frac",
        "clips/s",
        "peak MB",
    )
    rows = []
    for p in pts:
        first = p.runs[0]
        rows.append([_x(p), fmt(first.threads_per_process), fmt(first.batch_size),
                     fmt(first.batch_size * first.world_size), fmt(first.lr, 4), fmt(first.steps),
                     spread_text([r.step_time_s for r in p.runs]), spread_text([r.ddp_overhead_s for r in p.runs]),
                     spread_text([r.ddp_overhead for r in p.runs]), spread_text([r.comm_frac for r in p.runs]),
                     spread_text([r.clips_per_s for r in p.runs], 1), spread_text([r.peak_mem_mb for r in p.runs], 0)])  # fmt: skip
    return markdown_table(header, rows)


def _systems_per_scale(records: list[RunRecord], times: dict[str, float]) -> str:
    """Ingest time (local sweeps) and shard bytes per data scale of the compute-matched axis."""
    rows = []
    for p in points(records, "data-compute"):
        first = p.runs[0]
        chunks = [f"ingest-T{first.clip_len}-{Path(folder).name}" for folder in first.train_shards.split(",")]
        seconds = sum(times[c] for c in chunks) if chunks and all(c in times for c in chunks) else None
        rows.append([fmt(first.data_scale, 0), _x(p), fmt(first.n_train_clips),
                     fmt(first.shard_bytes / 2**20 if first.shard_bytes else None, 1), fmt(seconds, 0)])  # fmt: skip
    return markdown_table(
        ("scale", "scenes", "clips", "shard MB", "ingest s (chunks up to this scale)"), rows
    )


def machine_text(times: dict[str, float]) -> str:
    """The machine the report was written on and the local sweep's wall time (its jobs' seconds summed)."""
    cpus = os.cpu_count()
    wall = f"{sum(times.values()) / 60:.0f} min over {len(times)} jobs" if times else "not recorded (Slurm)"
    return f"Machine: {platform.node()}, {platform.platform()}, {cpus} CPUs. Wall time of the local sweep: {wall}."


def markdown(
    records: list[RunRecord], skipped: list[dict], plots: list[Path], times: dict[str, float]
) -> str:
    """The whole scaling.md."""
    tasks = task_names(records)
    base = [r for r in records if "base" in r.axes]
    gate = ", ".join(f"`{r.name}` {fmt(r.probe_gate)}" for r in base) or "no base point among these runs"
    overridden = [r.name for r in records if r.gate_override]
    lines = ["# Scaling report", "", machine_text(times), "",
             f"Gate (the base point's probe, before any scaling): {gate}. "
             + (f"{len(overridden)} runs ran under --no-gate (marked {OVERRIDE})." if overridden
                else "No run ran under --no-gate."), "",
             "Numbers over seeds are mean ± sample sd (n seeds); a probe cell adds the mean half-width of the "
             "per-run 95% CI over validation scenes. Throughput and step time are second-half means of the "
             "logged steps; clips/s counts all ranks; memory is the peak per rank (RSS on CPU, max allocated "
             "on GPU). DDP overhead: step time minus (and over) the one-process run's with the same data, "
             "T, per-rank batch and seed.", ""]  # fmt: skip
    sections = (("data-compute", "Data, compute-matched"), ("data-epoch", "Data, epoch-matched"),
                ("T", "Clip length T"), ("ddp-global", "DDP, the same global batch and learning rate"),
                ("ddp-rank", "DDP, the same per-rank batch"), ("world", "Synthetic worlds (replication)"))  # fmt: skip
    for axis, title in sections:
        pts = points(records, axis)
        if not pts:
            continue
        lines += [f"## {title}", "", f"x: {AXIS_X[axis][1]}.", ""]
        if axis.startswith("data"):
            lines.append(_data_table(pts, tasks))
        elif axis.startswith("ddp"):
            lines.append(_ddp_table(pts))
        else:
            lines.append(_axis_table(pts, tasks, "T" if axis == "T" else "world"))
        lines.append("")
    if points(records, "data-compute"):
        lines += ["## Systems per data scale", "", _systems_per_scale(records, times), ""]
    lines += ["## Runs", "", markdown_table(RUN_COLUMNS, [_run_row(r) for r in records]), ""]
    if skipped:
        lines += ["## Skipped", ""] + [f"- `{item['run']}`: {item['reason']}" for item in skipped] + [""]
    lines += ["## Plots", ""] + [f"![{plot.stem}]({plot.name})" for plot in plots]
    return "\n".join(lines) + "\n"
