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
from mvm.report_format import dumps_json
from mvm.slurm.report_collect import collect
from mvm.slurm.report_markdown import markdown
from mvm.slurm.report_plots import plot_all


def local_times(paths: tuple[Path, ...]) -> dict[str, float]:
    """Seconds per job of local sweeps under `paths` (SWEEP/logs/local-times.tsv: id, seconds, status)."""
    times: dict[str, float] = {}
    for path in paths:
        table = path / "logs" / "local-times.tsv"
        if table.is_file():
            for line in table.read_text(errors="replace").splitlines():
                fields = line.split("\t")
                if len(fields) == 3 and fields[1].isdigit():
                    times[fields[0]] = times.get(fields[0], 0.0) + float(fields[1])
    return times


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
    names its axes, seed and settings. Writes OUT/scaling.json (one record per run, plus the runs
    skipped and why), OUT/scaling.md (the gate, a table per sweep axis with mean ± sd over seeds and
    the probe's scene CIs, systems rows per data scale, the machine and wall time, every run; points
    run under --no-gate marked) and plots with ± sd error bars: probe score (every task) vs training
    scenes, compute- and epoch-matched; throughput and memory vs data; probe and throughput vs T;
    step time, exposed DDP overhead and comm_frac vs processes.
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
        times = local_times(paths)
        summary = {"runs": [asdict(r) for r in records], "skipped": skipped, "plots": [p.name for p in plots],
                   "local_times_s": times}  # fmt: skip
        write_atomic(out / "scaling.json", dumps_json(summary))
        write_atomic(out / "scaling.md", markdown(records, skipped, plots, times))
    except OutputError as error:
        click.echo(f"mvm-report: {error}", err=True)
        sys.exit(1)
    click.echo(f"mvm-report: {len(records)} runs -> {out}/scaling.md, scaling.json, {len(plots)} plots")
