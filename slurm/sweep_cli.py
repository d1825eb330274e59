"""What slurm/scaling.sh calls: `plan` prints the sweep's jobs, `scenes` writes its training-scene
chunks, `gate` reads a probed base point's verdict.

    MVM_SWEEP_STEPS=20 python -m mvm.slurm.sweep_cli plan --local sweep     # show a local sweep's jobs
    python -m mvm.slurm.sweep_cli gate sweep/runs/NAME/probe/report.json   # exit 3 when it failed
    python -m mvm.slurm.sweep_cli scenes --dataroot D --version v1.0-mini --split mini_train \\
        --seed 0 --scales 1,2 --out sweep/scenes
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from mvm.atomic import OutputError, ensure_dir, write_atomic
from mvm.report_format import dumps_json
from mvm.slurm.grid import estimate_s, experiments
from mvm.slurm.plan import (
    Plan,
    chunk_bounds,
    experiment_dir,
    experiment_record,
    is_probed,
    job_line,
    plan_sweep,
    scene_chunks,
)
from mvm.slurm.probe_report import ProbeReportError, read_probe_report
from mvm.slurm.settings import SettingsError, SweepSettings, settings_from_env

EXIT_CODES = "Exit codes: 0 success; 2 usage error (a setting or argument); 1 failure (reading or writing)."


def _fail(message: str, code: int) -> None:
    click.echo(f"sweep: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
def main() -> None:
    """The scaling sweep's planner (slurm/scaling.sh runs or submits what `plan` prints)."""


@main.command(epilog=EXIT_CODES)
@click.argument("sweep_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--local", "local", is_flag=True, help="Plan to run here, one step after another (no Slurm).")
@click.option(
    "--gpus-per-node",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="GPUs per Slurm node (the site's MVM_GPUS_PER_NODE); 0 = CPU nodes. Ignored with --local.",
)
@click.option(
    "--no-gate",
    "no_gate",
    is_flag=True,
    help="Run the scaled points without waiting for the base point's probe gate to pass; every "
    "point's experiment.json, and so the report, marks it as run under this override.",
)
@click.option(
    "--quick", is_flag=True, help="The small local grid of the tests (seconds per point, not a result)."
)
def plan(sweep_dir: Path, local: bool, gpus_per_node: int, no_gate: bool, quick: bool) -> None:
    """Plan the sweep in SWEEP_DIR: print one line per job still to run, in order.

    Settings come from the MVM_SWEEP_* environment variables (listed in slurm/scaling.sh), and for
    Slurm from the site's MVM_DATAROOT and MVM_VERSION. Writes SWEEP_DIR/sweep.env (the resolved
    settings) and runs/NAME/experiment.json of each planned experiment; creates scenes/, shards/,
    runs/ and logs/. Each printed line is ID, HOW, AFTER and the command, tab-separated (see
    slurm/plan.py); the base point's probe (the gate) comes before every scaled point. Experiments
    already probed are kept and named on stderr, with the estimated running time of a local plan.
    """
    mode = "local" if local else "slurm"
    try:
        settings = settings_from_env(
            os.environ, mode, sweep_dir, gpus_per_node, quick=quick, gate=not no_gate
        )
        found = plan_sweep(settings, Path.exists, sys.executable)
        lines = [job_line(job) for job in found.jobs]
    except (SettingsError, ValueError) as error:
        _fail(str(error), 2)
    try:
        for folder in ("scenes", "shards", "runs", "logs"):
            ensure_dir(settings.sweep_dir / folder)
        write_atomic(settings.sweep_dir / "sweep.env", settings.to_env_text())
        axes = experiments(settings)
        for experiment in found.planned:
            write_atomic(experiment_dir(settings, experiment) / "experiment.json",
                         dumps_json(experiment_record(settings, experiment, axes[experiment])))  # fmt: skip
    except OutputError as error:
        _fail(str(error), 1)
    for experiment in found.kept:
        click.echo(f"sweep: {experiment.name}: already probed, kept", err=True)
    click.echo(
        f"sweep: {len(found.planned)} experiments to run, {len(found.kept)} kept, {len(found.jobs)} jobs",
        err=True,
    )
    if not settings.gate:
        click.echo("sweep: --no-gate: scaled points run whatever the base gate says (marked in the report)",
                   err=True)  # fmt: skip
    if settings.mode == "local":
        click.echo(f"sweep: {estimate_text(settings, found)}", err=True)
    click.echo("".join(line + "\n" for line in lines), nl=False)


def estimate_text(settings: SweepSettings, found: Plan) -> str:
    """The plan's estimated running time on 2 quiet cores, in total and per kind (slurm/grid.py's costs)."""
    # Imported here: the synthetic world's scene names tell the split sizes before anything exists.
    from mvm.synth.schedule import scene_names

    def sizes(count: int, scales: tuple[int, ...]) -> dict[str, int]:
        splits = [split for _, split in scene_names(settings.version, count)]
        bounds = chunk_bounds(splits.count("train"), scales)
        return {f"train-{k}": b - a for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))} | {
            "val": splits.count("val")
        }

    worlds = {1: sizes(settings.synth_scenes, settings.scales), 2: sizes(settings.replica_scenes, (1,))}
    ingests = [
        Path(job.argv[job.argv.index("--out") + 1]) for job in found.jobs if job.id.startswith("ingest")
    ]
    probes = [point for point in found.planned if is_probed(point)]
    counts = {
        "synth": sum(
            settings.synth_scenes if job.id == "synth" else settings.replica_scenes
            for job in found.jobs
            if job.id.startswith("synth")
        ),  # fmt: skip
        "ingests": len(ingests),
        "ingest": sum(worlds[1 if out.parent.parent.name == "shards" else 2][out.name] for out in ingests),
        "probes": len(probes),
        "probe": sum(worlds[min(p.world, 2)]["train-0"] + worlds[min(p.world, 2)]["val"] for p in probes),
    }
    seconds = estimate_s(counts, found.planned)
    parts = ", ".join(f"{kind} {value / 60:.0f}" for kind, value in seconds.items())
    return (f"estimate on 2 quiet CPU cores: {sum(seconds.values()) / 60:.0f} min ({parts}; "
            f"{len(found.planned)} points, {len(probes)} probed: slurm/grid.py)")  # fmt: skip


def _scene_names(dataroot: Path, version: str) -> list[str]:
    table = dataroot / version / "scene.json"
    try:
        return [scene["name"] for scene in json.loads(table.read_text())]
    except (OSError, ValueError, KeyError, TypeError) as error:
        _fail(f"cannot read the scene table {table}: {error}", 1)


@main.command(epilog=EXIT_CODES)
@click.option("--dataroot", required=True, type=click.Path(path_type=Path), help="nuScenes dataroot.")
@click.option("--version", "nusc_version", required=True, help="nuScenes version folder, e.g. v1.0-trainval.")
@click.option("--split", required=True, help="The training split (any mvm-ingest --scenes value).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the shuffle.")
@click.option("--scales", required=True, help="Dataset scales, comma-separated and increasing, e.g. 1,2,4.")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for train-K.txt."
)
def scenes(dataroot: Path, nusc_version: str, split: str, seed: int, scales: str, out: Path) -> None:
    """Shuffle the split's scenes with the seed and write chunk K's names to OUT/train-K.txt.

    Scale scales[K] trains on chunks 0..K: the first scales[K]/max(scales) of the shuffled scenes.
    """
    # Imported here: mvm.ingest.scenes loads the devkit's split lists.
    from mvm.ingest.scenes import SceneSpecError, resolve_scenes

    try:
        scale_list = [int(scale) for scale in scales.split(",")]
        names = resolve_scenes(split, _scene_names(dataroot, nusc_version)).names
        chunks = scene_chunks(names, scale_list, seed)
    except SceneSpecError as error:
        _fail(f"split {split}: {error}", 2)
    except ValueError as error:
        _fail(f"{split}: {error} (set fewer MVM_SWEEP_SCALES or use more scenes)", 2)
    try:
        for index, chunk in enumerate(chunks):
            write_atomic(out / f"train-{index}.txt", "".join(name + "\n" for name in chunk))
    except OutputError as error:
        _fail(str(error), 1)
    click.echo(f"sweep: {len(names)} {split} scenes -> chunks of {', '.join(str(len(c)) for c in chunks)}",
               err=True)  # fmt: skip


@main.command(epilog="Exit codes: 0 the gate passed; 3 it failed; 1 the report cannot be read.")
@click.argument("report", type=click.Path(dir_okay=False, path_type=Path))
def gate(report: Path) -> None:
    """Exit 0 when the probe REPORT (the base point's report.json) passed its gate, 3 when it failed."""
    try:
        verdict = read_probe_report(report).gate
    except ProbeReportError as error:
        _fail(str(error), 1)
    if verdict != "pass":
        _fail(f"the base point's probe gate failed ({report.parent / 'report.md'} says why): "
              "no scaled point runs (--no-gate runs them anyway)", 3)  # fmt: skip
    click.echo(f"sweep: the base point's probe gate passed ({report})", err=True)


if __name__ == "__main__":
    main()
