"""`mvm-synth`: write a synthetic nuScenes-format dataroot (see mvm.synth.dataroot.generate)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mvm.atomic import OutputError
from mvm.synth.camera import image_size
from mvm.synth.dataroot import DEFAULT_DROP_RATE, DEFAULT_TRAFFIC, OutputFolderError, check_output, generate
from mvm.synth.schedule import VERSIONS, scene_names

EPILOG = """\b
Exit codes: 0 success; 2 usage error (invalid option value, e.g. 0 scenes, a width that
is not a multiple of 32, more scenes than the version has names); 1 the output folder
cannot be used (not empty and not a previous mvm-synth output) or generation failed.

\b
Example (the full-size default, 10 mini scenes at 1600x900):
  mvm-synth --out data/nuscenes
"""


def _check_width(ctx: click.Context, param: click.Parameter, value: int) -> int:
    try:
        image_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    return value


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Dataroot folder to write. Must be new, empty, or a previous mvm-synth output "
    "(recognised by its mvm-synth.json, and then replaced). Any other folder is refused.",
)
@click.option(
    "--version",
    type=click.Choice(VERSIONS),
    default="v1.0-mini",
    show_default=True,
    help="nuScenes version folder and scene names: v1.0-mini uses the 10 mini scenes "
    "(mini_train/mini_val select them); v1.0-trainval uses train/val names (about 30% val).",
)
@click.option(
    "--scenes",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Number of scenes (at most 10 for v1.0-mini, 850 for v1.0-trainval).",
)
@click.option(
    "--frames-per-scene",
    type=click.IntRange(min=1),
    default=240,
    show_default=True,
    help="CAM_FRONT frames per scene (12 Hz on the 50 ms grid: 240 frames = 20 s, like nuScenes).",
)
@click.option(
    "--width",
    type=int,
    default=1600,
    show_default=True,
    callback=_check_width,
    help="Image width in pixels, a multiple of 32 (>= 64); height = width*9/16 (1600 -> 900). "
    "Intrinsics scale with it.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed; every scene derives its randomness from (seed, scene name). Same arguments, same bytes.",
)
@click.option(
    "--drop-rate",
    type=click.FloatRange(0.0, 0.5),
    default=DEFAULT_DROP_RATE,
    show_default=True,
    help="Chance that a CAM_FRONT non-keyframe is dropped, leaving an interval of 150 ms or more "
    "(real nuScenes drops frames under load).",
)
@click.option(
    "--traffic",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_TRAFFIC,
    show_default=True,
    help="Density of other road users (moving, queued and parked vehicles, pedestrians), which move "
    "on their own and are annotated (instance, sample_annotation). Each scene draws how busy it is "
    "(at 1: some empty, most light to busy); this scales it. 0: no other road users.",
)
def main(
    out: str,
    version: str,
    scenes: int,
    frames_per_scene: int,
    width: int,
    seed: int,
    drop_rate: float,
    traffic: float,
) -> None:
    """Write a synthetic nuScenes-format dataroot that the real nuscenes-devkit loads.

    All 13 tables plus map masks; CAM_FRONT JPEGs rendered from each scene's ego trajectory
    (stops, cruising, speed changes, left and right turns; day and night) through a procedural
    3D world that does not follow the trajectory: a street grid whose crossings look alike
    whichever way the car turns, or an open parking lot, so a turn shows in the motion, not in a
    single frame. Other road users drive, stand, park and walk on their own, with devkit
    annotations. LIDAR_TOP at 20 Hz: keyframe point clouds ray cast from the same world and its
    traffic (about 26 thousand points, 0.5 MB each), the other sweeps empty placeholders.
    """
    try:
        scene_names(version, scenes)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--scenes") from error
    if Path(out).is_symlink():
        raise click.ClickException(f"--out {out} is a symlink; give the real folder")
    try:
        check_output(Path(out))
    except OutputFolderError as error:
        raise click.ClickException(str(error)) from error
    columns = (
        TextColumn("[bold]mvm-synth[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns) as progress:
        task = progress.add_task("render", total=scenes * frames_per_scene)
        try:
            dataroot = generate(
                out,
                version=version,
                scenes=scenes,
                frames_per_scene=frames_per_scene,
                width=width,
                seed=seed,
                drop_rate=drop_rate,
                traffic=traffic,
                progress=lambda count: progress.advance(task, count),
            )
        except (OutputFolderError, OutputError) as error:
            raise click.ClickException(str(error)) from None
        except OSError as error:  # read-only, full or vanished output: one line, not a traceback
            raise click.ClickException(f"cannot write {error.filename or out}: {error.strerror}") from None
    click.echo(
        f"wrote {version} dataroot {dataroot}: {scenes} scenes x {frames_per_scene} CAM_FRONT frames "
        f"at {width}x{image_size(width)[1]} in {time.perf_counter() - started:.1f} s"
    )
