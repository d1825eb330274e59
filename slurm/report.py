"""`mvm-report`: collect training runs and their probes into scaling.json, scaling.md and PNG plots.

mvm-report sweep --out sweep/report          # a sweep folder from mvm.slurm/scaling.sh (make sweep)
mvm-report runs/a runs/b --out report        # any mvm-train run folders
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import click

from mvm.atomic import OutputError, ensure_dir, write_atomic
from mvm.report_format import MISSING, dumps_json, fmt, fmt_ci, markdown_table
from mvm.slurm.report_collect import RunRecord, collect
from mvm.slurm.report_plots import AXES, plot_all, series

COLUMNS = ("run", "preset", "scale", "train clips", "T", "world", "steps", "final loss", "clips/s", "step s",
           "DDP overhead", "data wait", "comm", "peak MB", "probe (95% CI)", "best random", "gate")  # fmt: skip


def _row(r: RunRecord) -> list[str]:
    """One table row; every number through the one formatter (a missing value reads "—")."""
    probe = MISSING if r.probe_pretrained is None else f"{fmt(r.probe_pretrained)} {fmt_ci(r.probe_ci)}"
    return [r.name, r.preset, fmt(r.data_scale, 0), fmt(r.n_train_clips), fmt(r.clip_len), fmt(r.world_size),
            fmt(r.steps), fmt(r.final_loss, 4), fmt(r.clips_per_s, 1), fmt(r.step_time_s),
            fmt(r.ddp_overhead), fmt(r.data_wait_frac), fmt(r.comm_frac), fmt(r.peak_mem_mb, 0), probe,
            fmt(r.probe_random_best), fmt(r.probe_gate)]  # fmt: skip


def markdown(records: list[RunRecord], skipped: list[dict], plots: list[Path]) -> str:
    """scaling.md: one table row per run, which axes the plots could draw, skipped runs, the plots."""
    lines = [
        "# Scaling report",
        "",
        f"{len(records)} runs. Throughput and step time are second-half means of the logged steps "
        "(steady state); clips/s counts all ranks; memory is the peak per rank (RSS on CPU, "
        "max allocated on GPU). DDP overhead is the exposed cost of data parallelism: step time at "
        "world size N over step time of the one-process run at the same per-rank batch, data, T and "
        "preset, minus 1. Probe: the pretrained encoder's primary metric with its 95% CI over "
        "validation scenes, the best random encoder, and the gate verdict.",
        "",
        markdown_table(COLUMNS, [_row(record) for record in records]),
        "",
        "## Axes",
        "",
    ]
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
    epilog="Exit codes: 0 report written (unreadable runs are skipped and named); 2 usage error (missing "
    "path); 1 no readable run found or writing failed.",
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
    """Collect runs under PATHS (sweep folders from mvm.slurm/scaling.sh, or mvm-train run folders)
    into a scaling report.

    A run is a folder with config.json and metrics.jsonl; its probe is mvm-probe's report.json in
    RUN/probe/ or a sibling probe/ folder; a sibling experiment.json (written by slurm/scaling.sh)
    names its dataset scale and world size. Writes OUT/scaling.json (one record per run, plus the
    runs skipped and why), OUT/scaling.md and plots: probe metric vs training clips, clips/s and
    peak memory vs dataset scale, step time, comm_frac, DDP overhead and throughput vs world size,
    probe metric and throughput vs T.
    """
    # Library warnings (a run's shard spec naming a shard twice) as one line each.
    warnings.showwarning = lambda message, *_: click.echo(f"mvm-report: {message}", err=True)
    records, skipped = collect(list(paths))
    for item in skipped:
        click.echo(f"mvm-report: skipped {item['run']}: {item['reason']}", err=True)
    if not records:
        click.echo(f"mvm-report: no run with logged steps under {', '.join(map(str, paths))}", err=True)
        sys.exit(1)
    try:
        ensure_dir(out)
        plots = plot_all(records, out)
        summary = {"runs": [asdict(r) for r in records], "skipped": skipped, "plots": [p.name for p in plots]}
        write_atomic(out / "scaling.json", dumps_json(summary))
        write_atomic(out / "scaling.md", markdown(records, skipped, plots))
    except OutputError as error:
        click.echo(f"mvm-report: {error}", err=True)
        sys.exit(1)
    click.echo(f"mvm-report: {len(records)} runs -> {out}/scaling.md, scaling.json, {len(plots)} plots")
