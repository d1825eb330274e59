"""`mvm-report`: collect training runs and their probes into scaling.json, scaling.md and PNG plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from probe.report_collect import RunRecord, as_dict, collect
from probe.report_plots import AXES, plot_all, series


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _probe_cell(record: RunRecord) -> str:
    if record.probe_pretrained is None:
        return "—"
    low, high = record.probe_ci
    return f"{record.probe_pretrained:.3f} [{low:.3f}, {high:.3f}]"


def ddp_overhead(records: list[RunRecord]) -> list[dict]:
    """Exposed DDP overhead = step time at world N / step time at world 1 - 1, for runs equal in
    everything else (preset, data scale, T, per-rank batch). Unlike comm_frac (all-reduce time in
    flight, overlapping backward), this is what the overlap leaves visible."""
    base = {(r.preset, r.data_scale, r.clip_len, r.batch_size): r for r in records if r.world_size == 1}
    rows = []
    for r in records:
        one = base.get((r.preset, r.data_scale, r.clip_len, r.batch_size))
        if r.world_size > 1 and one is not None and r.step_time_s and one.step_time_s:
            rows.append({"run": r.name, "world": r.world_size, "baseline": one.name,
                         "overhead": r.step_time_s / one.step_time_s - 1})  # fmt: skip
    return rows


def markdown(records: list[RunRecord], skipped: list[dict], plots: list[Path]) -> str:
    """scaling.md: one table row per run, which axes the plots could draw, skipped runs, the plots."""
    lines = [
        "# Scaling report",
        "",
        f"{len(records)} runs. Throughput and step time are second-half means of the logged steps "
        "(steady state); clips/s counts all ranks; memory is the peak per rank (RSS on CPU, "
        "max allocated on GPU). Probe: the pretrained encoder's primary metric with its 95% CI "
        "over validation scenes, the best random encoder, and the gate verdict.",
        "",
        "| run | preset | scale | train clips | T | world | steps | final loss | clips/s | step s "
        "| data wait | comm | peak MB | probe (95% CI) | best random | gate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r.name} | {r.preset} | {_fmt(r.data_scale, 0)} | {_fmt(r.n_train_clips)} | {r.clip_len} "
            f"| {r.world_size} | {r.steps} | {_fmt(r.final_loss, 4)} | {_fmt(r.clips_per_s, 1)} "
            f"| {_fmt(r.step_time_s)} | {_fmt(r.data_wait_frac)} | {_fmt(r.comm_frac)} "
            f"| {_fmt(r.peak_mem_mb, 0)} | {_probe_cell(r)} | {_fmt(r.probe_random_best)} "
            f"| {r.probe_gate or '—'} |"
        )
    overhead = ddp_overhead(records)
    if overhead:
        lines += [
            "",
            "## Exposed DDP overhead",
            "",
            "step time at world N / step time at world 1 - 1, "
            "equal per-rank batch (comm_frac above counts all-reduce time that overlaps backward).",
            "",
        ]
        lines += [
            f"- {o['run']} (world {o['world']}) vs {o['baseline']}: {_fmt(o['overhead'])}" for o in overhead
        ]
    lines += ["", "## Axes", ""]
    for axis, (_, _, label) in AXES.items():
        groups = series(records, axis)
        described = "; ".join(f"{name} ({len(runs)} runs)" for name, runs in groups.items())
        lines.append(f"- {label}: {described or 'no two runs differ only in this axis'}")
    if skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- `{item['run']}`: {item['reason']}" for item in skipped]
    lines += ["", "## Plots", ""]
    lines += [f"![{plot.stem}]({plot.name})" for plot in plots]
    return "\n".join(lines) + "\n"


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 report written; 2 usage error (missing path); 1 no run found or writing failed.",
)
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder for scaling.json, scaling.md and the PNG plots (created).",
)
def main(paths: tuple[Path, ...], out: Path) -> None:
    """Collect runs under PATHS (sweep folders from slurm/scaling.sh, or mvm-train run folders)
    into a scaling report.

    A run is a folder with config.json and metrics.jsonl; its probe is mvm-probe's report.json in
    RUN/probe/ or a sibling probe/ folder; a sibling experiment.json (written by slurm/scaling.sh)
    names its dataset scale and world size. Writes OUT/scaling.json (one record per run, plus the
    runs skipped and why), OUT/scaling.md and plots: probe metric vs training clips, clips/s and
    peak memory vs dataset scale, step time and comm_frac vs world size, probe metric and
    throughput vs T.
    """
    records, skipped = collect(list(paths))
    for item in skipped:
        click.echo(f"mvm-report: skipped {item['run']}: {item['reason']}", err=True)
    if not records:
        click.echo(f"mvm-report: no run with logged steps under {', '.join(map(str, paths))}", err=True)
        sys.exit(1)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_all(records, out)
    summary = {"runs": [as_dict(r) for r in records], "skipped": skipped, "plots": [p.name for p in plots]}
    (out / "scaling.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    (out / "scaling.md").write_text(markdown(records, skipped, plots))
    click.echo(f"mvm-report: {len(records)} runs -> {out}/scaling.md, scaling.json, {len(plots)} plots")
