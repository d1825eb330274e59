"""`mvm-probe`: the evaluation gate — frozen encoder, linear probe, pretrained vs random encoders."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from mvm.atomic import OutputError
from mvm.ego_motion import MotionThresholds
from mvm.options import click_options, option
from mvm.probe.gate import PASS, STRONG
from mvm.probe.run import ProbeConfig, SceneOverlapError, run_probe
from mvm.probe.tasks import TASKS
from mvm.shards import DamagedShardError
from mvm.video import DECODER_CHOICES

EXIT_PASS, EXIT_ERROR, EXIT_USAGE, EXIT_FAIL = 0, 1, 2, 3


@dataclass(frozen=True)
class ProbeOptions:
    """The options of mvm-probe, each declared once (mvm/options.py): flag, help, default, range."""

    checkpoint: str = option(free_text=True)
    """Run folder (newest complete checkpoint) or a checkpoints/step-NNNNNN folder."""
    train_shards: str = option(free_text=True)
    """Shards the linear heads are fitted on: brace pattern, folder with manifest.json, or comma list."""
    val_shards: str = option(free_text=True)
    """Shards the heads are scored on (same forms); must share no scene with --train-shards."""
    out: Path = option()
    """Output folder: report.json and report.md (a section per task), confusion.png or speed.png,
    controls.png with the controls, depth.png."""
    task: tuple[str, ...] = option((), choices=TASKS)
    """A task to probe; repeat for several in one run (--task ego-motion --task depth), one report.
    ego-motion: stopped/straight/left/right from the clip's ego poses, scored by balanced accuracy;
    speed: mean ego speed regression, scored by R²; depth: per-token log depth from the shards'
    LIDAR_TOP depth maps, scored by delta < 1.25 and AbsRel. Default: ego-motion, plus depth when the
    shards carry depth targets (else the report says depth was skipped and why)."""
    stopped_speed: float = option(MotionThresholds.stopped_speed_mps, low=0)
    """Mean speed (m/s) below which a clip is 'stopped'."""
    turn_yaw_rate: float = option(MotionThresholds.turn_yaw_rate_rps, low=0)
    """|Mean yaw rate| (rad/s) beyond which a moving clip is 'left' (positive, counter-clockwise) or 'right'."""
    seeds: int = option(3, low=1)
    """Randomly initialised encoders of the checkpoint's architecture (seeds 0..N-1); the best one is the baseline."""
    batch_size: int = option(16, low=1)
    """Clips per forward pass."""
    device: str = option("auto", choices=("auto", "cpu", "cuda"))
    """Where the encoders run (auto: CUDA when available)."""
    decoder: str = option("auto", choices=DECODER_CHOICES)
    """RGB video decoder (auto and pyav-i420: PyAV, the fastest measured in bench/results.md; a missing
    one falls back to PyAV)."""
    max_clips: int | None = option(None, low=1)
    """Use at most this many clips per split, evenly spread over it (default: all)."""
    bootstrap: int = option(1000, low=100)
    """Bootstrap replicates; each resamples validation scenes (not clips) with replacement."""
    seed: int = option(0, low=0)
    """Seed of the bootstrap resampling and of the shuffled view's frame permutations."""
    controls: str = option("all", choices=("all", "none"))
    """all: also probe the no-learning pixels baseline and flow reference (block matching) and the
    shuffled-frames and first-frame-only views of every source, with per-class recall, controls.png and
    `strength`; none: the gate only."""
    require: str = option(PASS, choices=(PASS, STRONG))
    """What exit code 0 needs: pass = the gate passed; strong = the gate passed and strength is strong
    (pretrained also beats pixels and drops when frames are shuffled, both CIs above 0)."""


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="""\b
Exit codes:
  0  the requirement holds for every task run: with --require pass (default) each gate passed
     (pretrained beats the best random encoder, 95% CI of the difference above 0); with
     --require strong each gate passed AND each strength is strong
  2  usage error: bad option, missing shards or checkpoint, train/val sharing a scene,
     --require strong with --controls none, --task depth on shards without depth targets or
     whose depth patch differs from the encoder's patch size
  3  gate failed (any task), or a strength below a --require strong (the report is still
     written)
  1  any other error: a damaged shard or manifest (sha256 mismatch, broken tar, undecodable or
     short clip, missing metadata, a FIFO or other non-file), an output folder that cannot be
     written or that another mvm-probe is writing""",
)
@click_options(ProbeOptions)
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

    Depth (mvm/probe/depth.py): each patch with a LIDAR_TOP value at the clip's depth frame is a
    sample; a ridge head on the token at that step and position fits log depth minus
    `position-only` (each token position's mean log depth over the training clips), which is
    also a row; `pixels` reads the patch's pixels. Gate as above on delta < 1.25; strength:
    pretrained also beats pixels and position-only. Every task reads the same forward passes.

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
    console = Console(stderr=True, soft_wrap=True)  # one message, one line (no wrapping at 80 columns)
    # Library warnings (a shard named twice, a decoder fallback) as one console line each.
    warnings.showwarning = lambda message, *_: console.print(f"[yellow]mvm-probe: {escape(str(message))}")
    config = ProbeConfig(
        checkpoint=checkpoint,
        train_shards=train_shards,
        val_shards=val_shards,
        out=out,
        tasks=task,
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
    met = True
    for outcome in result.results:
        name, passed = outcome.task.name, outcome.verdict.gate == PASS
        console.print(
            f"[{'green' if passed else 'red'}]{name}: gate {outcome.verdict.gate.upper()}[/]: "
            f"{escape(outcome.verdict.reason)}"
        )
        if outcome.strength is not None:
            strong = outcome.strength == STRONG
            console.print(
                f"[{'green' if strong else 'yellow'}]{name}: strength {outcome.strength.upper()}[/]: "
                f"{escape(outcome.strength_reason)}"
            )
        met = met and passed and (require == PASS or outcome.strength == STRONG)
    for name, reason in result.skipped.items():
        console.print(f"[yellow]{name}: skipped: {escape(reason)}")
    console.print(f"report: {out / 'report.md'}")
    sys.exit(EXIT_PASS if met else EXIT_FAIL)
