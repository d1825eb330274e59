"""`mvm-probe`: the evaluation gate — frozen encoder, linear probe, pretrained vs random encoders."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from mvm.atomic import OutputError
from mvm.ego_motion import MotionThresholds
from mvm.probe.gate import PASS, STRONG
from mvm.probe.run import ProbeConfig, SceneOverlapError, run_probe
from mvm.probe.tasks import TASKS
from mvm.shards import DamagedShardError
from mvm.video import DECODERS

EXIT_PASS, EXIT_ERROR, EXIT_USAGE, EXIT_FAIL = 0, 1, 2, 3


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="""\b
Exit codes:
  0  the requirement holds: with --require pass (default) the gate passed (pretrained beats the
     best random encoder, 95% CI of the difference above 0); with --require strong the gate
     passed AND strength is strong
  2  usage error: bad option, missing shards or checkpoint, train/val sharing a scene,
     --require strong with --controls none
  3  gate failed, or strength below a --require strong (the report is still written)
  1  any other error: a damaged shard (sha256 mismatch, broken tar, undecodable clip, missing
     metadata), an output folder that cannot be written""",
)
@click.option(
    "--checkpoint",
    required=True,
    help="Run folder (newest complete checkpoint) or a checkpoints/step-NNNNNN folder.",
)
@click.option(
    "--train-shards",
    required=True,
    help="Shards the linear heads are fitted on: brace pattern, folder with manifest.json, or comma list.",
)
@click.option(
    "--val-shards",
    required=True,
    help="Shards the heads are scored on (same forms); must share no scene with --train-shards.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: report.json, report.md, confusion.png or speed.png, and controls.png with the controls.",
)
@click.option(
    "--task",
    type=click.Choice(TASKS),
    default="ego-motion",
    show_default=True,
    help="ego-motion: stopped/straight/left/right from the clip's ego poses, scored by balanced accuracy; "
    "speed: mean ego speed regression, scored by R².",
)
@click.option(
    "--stopped-speed",
    type=float,
    default=MotionThresholds.stopped_speed_mps,
    show_default=True,
    help="Mean speed (m/s) below which a clip is 'stopped'.",
)
@click.option(
    "--turn-yaw-rate",
    type=float,
    default=MotionThresholds.turn_yaw_rate_rps,
    show_default=True,
    help="|Mean yaw rate| (rad/s) beyond which a moving clip is 'left' (positive, counter-clockwise) or 'right'.",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Randomly initialised encoders of the checkpoint's architecture (seeds 0..N-1); the best one is the baseline.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Clips per forward pass."
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the encoders run (auto: CUDA when available).",
)
@click.option(
    "--decoder",
    type=click.Choice(["auto", *DECODERS]),
    default="auto",
    show_default=True,
    help="RGB video decoder (auto: PyAV, the fastest measured in bench/results.md; a missing one falls back to PyAV).",
)
@click.option(
    "--max-clips",
    type=click.IntRange(min=1),
    default=None,
    help="Use at most this many clips per split, evenly spread over it (default: all).",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=100),
    default=1000,
    show_default=True,
    help="Bootstrap replicates; each resamples validation scenes (not clips) with replacement.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the bootstrap resampling and of the shuffled view's frame permutations.",
)
@click.option(
    "--controls",
    type=click.Choice(["all", "none"]),
    default="all",
    show_default=True,
    help="all: also probe the no-learning pixels baseline and flow reference (block matching) and the "
    "shuffled-frames and first-frame-only views of every source, with per-class recall, controls.png "
    "and `strength`; none: the gate only.",
)
@click.option(
    "--require",
    type=click.Choice([PASS, STRONG]),
    default=PASS,
    show_default=True,
    help="What exit code 0 needs: pass = the gate passed; strong = the gate passed and strength is "
    "strong (pretrained also beats pixels and drops when frames are shuffled, both CIs above 0).",
)
def main(
    checkpoint,
    train_shards,
    val_shards,
    out,
    task,
    stopped_speed,
    turn_yaw_rate,
    seeds,
    batch_size,
    device,
    decoder,
    max_clips,
    bootstrap,
    seed,
    controls,
    require,
):
    """Freeze the encoder of CHECKPOINT, fit a linear probe on --train-shards, score it on
    --val-shards, and compare with the same architecture randomly initialised and with the
    majority-class (or mean) predictor, on identical clips and splits.

    Features (mvm/features.py): the encoder on unmasked clips, its tokens averaged over a grid
    of cells per frame, summarised over time by their mean, second-half minus first-half change
    and mean absolute frame-to-frame change. The grid (1x1, 2x2 or the full token layout) is
    chosen by scene-grouped CV on the training scenes only and used for every source. Heads:
    logistic regression (balanced class weights) or ridge, regularization chosen by
    cross-validation grouped by training scene. Uncertainty: percentile bootstrap over
    validation scenes.

    Gate: pass when the pretrained primary metric exceeds the best random encoder's and the 95%
    CI of the paired difference (pretrained minus the best random encoder of each replicate) lies
    above zero.

    Controls (on by default): `pixels`, RGB thumbnails at the same grid through the same pooling
    and heads (no learning: the floor to beat); views `shuffled` (each clip's frames in a seeded
    random order) and `static` (frame 0 repeated) of every source; per-class recall of every row;
    `flow`, each encoder patch's block-matching displacement between consecutive frames through the
    same pooling and heads (no learning: what a classical motion estimate reads; a reference that
    enters neither the verdict nor the grid choice).
    Strength: strong when the gate passed AND pretrained beats pixels AND pretrained drops on
    shuffled frames, each with the 95% CI of the paired difference above zero; weak when the gate
    passed without both; none when the gate failed.

    Example: mvm-probe --checkpoint demo/run --train-shards demo/shards/train
    --val-shards demo/shards/val --out demo/probe
    """
    console = Console(stderr=True)
    config = ProbeConfig(
        checkpoint=checkpoint,
        train_shards=train_shards,
        val_shards=val_shards,
        out=out,
        task=task,
        thresholds=MotionThresholds(stopped_speed_mps=stopped_speed, turn_yaw_rate_rps=turn_yaw_rate),
        seeds=seeds,
        batch_size=batch_size,
        device=device,
        decoder=decoder,
        max_clips=max_clips,
        bootstrap=bootstrap,
        seed=seed,
        controls=controls == "all",
    )
    if require == STRONG and not config.controls:
        console.print("[red]mvm-probe: --require strong needs the controls; drop --controls none[/red]")
        sys.exit(EXIT_USAGE)
    try:
        result = run_probe(config)
    except OutputError as error:
        console.print(f"[red]mvm-probe: {error}[/red]")
        sys.exit(EXIT_ERROR)
    except DamagedShardError as error:  # before ValueError: damaged data is a failure, not a usage error
        console.print(f"[red]mvm-probe: data error: {error}[/red]")
        sys.exit(EXIT_ERROR)
    except (SceneOverlapError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]mvm-probe: {error}[/red]")
        sys.exit(EXIT_USAGE)
    passed = result.verdict.gate == PASS
    console.print(
        f"[{'green' if passed else 'red'}]gate {result.verdict.gate.upper()}[/]: {result.verdict.reason}"
    )
    if result.strength is not None:
        strong = result.strength == STRONG
        console.print(
            f"[{'green' if strong else 'yellow'}]strength {result.strength.upper()}[/]: {result.strength_reason}"
        )
    console.print(f"report: {out / 'report.md'}")
    met = passed and (require == PASS or result.strength == STRONG)
    sys.exit(EXIT_PASS if met else EXIT_FAIL)
