"""`mvm-probe`: the evaluation gate — frozen encoder, linear probe, pretrained vs random encoders."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from ingest.motion import MotionThresholds
from probe.run import ProbeConfig, SceneOverlapError, run_probe
from probe.tasks import TASKS

EXIT_PASS, EXIT_USAGE, EXIT_FAIL = 0, 2, 3


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="""\b
Exit codes:
  0  gate passed: pretrained beats the best random encoder, 95% CI of the difference above 0
  2  usage error: bad option, missing shards or checkpoint, train/val sharing a scene
  3  gate failed (the report is still written)
  1  any other error""",
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
    help="Output folder: report.json, report.md, confusion.png or speed.png.",
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
    type=click.Choice(["decord", "pyav"]),
    default="decord",
    show_default=True,
    help="Video decoder.",
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
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resampling.")
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
):
    """Freeze the encoder of CHECKPOINT, fit a linear probe on --train-shards, score it on
    --val-shards, and compare with the same architecture randomly initialised and with the
    majority-class (or mean) predictor, on identical clips and splits.

    Features: the encoder on unmasked clips, pooled by MaskedVideoModel.features (per-frame token
    means, summarised by their time mean, second-half minus first-half change and mean absolute
    frame-to-frame change), standardized on the training clips. Heads: logistic regression
    (balanced class weights) or ridge, regularization chosen by cross-validation grouped by
    training scene. Uncertainty: percentile bootstrap over validation scenes.

    Verdict: pass when the pretrained primary metric exceeds the best random encoder's and the 95%
    CI of the paired difference (pretrained minus the best random encoder of each replicate) lies
    above zero.
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
    )
    try:
        result = run_probe(config)
    except (SceneOverlapError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]mvm-probe: {error}[/red]")
        sys.exit(EXIT_USAGE)
    color = "green" if result["gate"] == "pass" else "red"
    console.print(f"[{color}]gate {result['gate'].upper()}[/{color}]: {result['reason']}")
    console.print(f"report: {out / 'report.md'}")
    sys.exit(EXIT_PASS if result["gate"] == "pass" else EXIT_FAIL)
