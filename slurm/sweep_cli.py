"""What slurm/scaling.sh calls: `plan` prints the sweep's jobs, `scenes` writes its training-scene chunks.

    MVM_SWEEP_STEPS=20 python -m mvm.slurm.sweep_cli plan --local sweep     # show a local sweep's jobs
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
from mvm.slurm.plan import experiment_dir, experiment_record, job_line, plan_sweep, scene_chunks
from mvm.slurm.settings import SettingsError, settings_from_env

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
def plan(sweep_dir: Path, local: bool, gpus_per_node: int) -> None:
    """Plan the sweep in SWEEP_DIR: print one line per job still to run, in order.

    Settings come from the MVM_SWEEP_* environment variables (listed in slurm/scaling.sh), and for
    Slurm from the site's MVM_DATAROOT and MVM_VERSION. Writes SWEEP_DIR/sweep.env (the resolved
    settings) and runs/NAME/experiment.json of each planned experiment; creates scenes/, shards/,
    runs/ and logs/. Each printed line is ID, HOW, AFTER and the command, tab-separated (see
    slurm/plan.py); experiments already probed are kept and named on stderr.
    """
    try:
        settings = settings_from_env(os.environ, "local" if local else "slurm", sweep_dir, gpus_per_node)
        found = plan_sweep(settings, Path.exists, sys.executable)
        lines = [job_line(job) for job in found.jobs]
    except (SettingsError, ValueError) as error:
        _fail(str(error), 2)
    try:
        for folder in ("scenes", "shards", "runs", "logs"):
            ensure_dir(settings.sweep_dir / folder)
        write_atomic(settings.sweep_dir / "sweep.env", settings.to_env_text())
        for experiment in found.planned:
            write_atomic(experiment_dir(settings, experiment) / "experiment.json",
                         dumps_json(experiment_record(settings, experiment)))  # fmt: skip
    except OutputError as error:
        _fail(str(error), 1)
    for experiment in found.kept:
        click.echo(f"sweep: {experiment.name}: already probed, kept", err=True)
    click.echo(
        f"sweep: {len(found.planned)} experiments to run, {len(found.kept)} kept, {len(found.jobs)} jobs",
        err=True,
    )
    click.echo("".join(line + "\n" for line in lines), nl=False)


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


if __name__ == "__main__":
    main()
