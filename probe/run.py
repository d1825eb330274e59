"""One probe run: shards + checkpoint -> features of every encoder, extracted once for every task ->
evaluation per task -> one report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvm.atomic import exclusive_lock
from mvm.ego_motion import MotionThresholds
from mvm.features import INGESTED, VIEWS, token_layout
from mvm.probe.data import read_depth_maps, read_metadata
from mvm.probe.depth import DepthResult, evaluate_depth
from mvm.probe.depth_data import DepthTokens, depth_frames, depth_problem, depth_split
from mvm.probe.encoders import encode_clips, load_sources, resolve_device
from mvm.probe.evaluate import (
    FLOW,
    PIXELS,
    PRETRAINED,
    RANDOM,
    ProbeResult,
    Split,
    evaluate_encoders,
    shared_scenes,
)
from mvm.probe.pooling import candidate_grids
from mvm.probe.report_run import write_report
from mvm.probe.tasks import CLIP_TASKS, DEPTH, make_task, targets
from mvm.sampling import spread_subset
from mvm.shards import resolve_shards


class SceneOverlapError(ValueError):
    """Train and val clip sets share scenes: the probe would measure memorisation, not generalisation."""


@dataclass(frozen=True)
class ProbeConfig:
    """Everything one `mvm-probe` run needs."""

    checkpoint: str
    """A run folder (newest complete checkpoint) or a checkpoints/step-NNNNNN folder."""
    train_shards: str
    """Shard spec of the clips the linear heads are fitted on (brace pattern, folder, or comma list)."""
    val_shards: str
    """Shard spec of the clips the heads are scored on; must share no scene with train_shards."""
    out: Path
    """Output folder for report.json, report.md and the PNG."""
    tasks: tuple[str, ...] = ()
    """Task names (mvm.probe.tasks.TASKS), each reported in its own section; () = ego-motion, plus
    depth when the shards carry depth targets (plan_tasks)."""
    thresholds: MotionThresholds = field(default_factory=MotionThresholds)
    """Ego-motion class thresholds."""
    seeds: int = 3
    """Random-initialisation baselines, seeds 0..seeds-1."""
    batch_size: int = 16
    """Clips per forward pass during feature extraction."""
    device: str = "auto"
    """Where encoders run: "auto", "cpu" or "cuda"."""
    decoder: str = "auto"
    """RGB video decoder (mvm.video.DECODERS or "auto" = the fastest measured, PyAV)."""
    max_clips: int | None = None
    """Cap per split (evenly spread over the split); None = all clips."""
    bootstrap: int = 1000
    """Bootstrap replicates over validation scenes."""
    seed: int = 0
    """Seed of the bootstrap resampling and of the shuffled view's frame permutations."""
    controls: bool = True
    """Add the pixels baseline, the flow reference, the shuffled and static views and `strength` to the report."""


def load_split_metadata(spec: str, max_clips: int | None) -> tuple[list[str], list[dict]]:
    """(shard urls, metadata of the selected clips in shard order)."""
    urls = resolve_shards(spec)
    metas = read_metadata(urls)
    if not metas:
        raise ValueError(f"no clips in {spec}")
    return urls, [metas[i] for i in spread_subset(len(metas), max_clips)]


def check_clip_shape(model_config, metas: list[dict]) -> None:
    """ValueError unless every clip has the clip_len and (H, W) size the encoder was built for."""
    expected = (model_config.clip_len, tuple(model_config.image_size))
    wrong = sorted({(m["clip_len"], tuple(m["size"])) for m in metas} - {expected})
    if wrong:
        raise ValueError(
            f"the checkpoint's encoder takes (clip_len, size) {expected}, but the shards hold {wrong}; "
            "probe with shards ingested at the training shards' clip length and size"
        )


@dataclass
class RunResult:
    """What one mvm-probe run found: one result per task run, in the order asked, and the tasks skipped."""

    results: list[ProbeResult | DepthResult]
    skipped: dict[str, str] = field(default_factory=dict)
    """Task -> why it did not run (depth on shards without depth targets, when no --task was given)."""


def plan_tasks(requested: tuple[str, ...], depth_problem: str | None) -> tuple[list[str], dict[str, str]]:
    """(tasks to run, skipped task -> reason) for the --task values given (none: the default).

    Default: ego-motion, and depth when the shards allow it (`depth_problem` None), else depth is
    skipped with that reason. Depth asked for when the shards do not allow it is a usage error
    (ValueError with the reason). Repeated names count once.
    """
    if requested:
        if DEPTH in requested and depth_problem:
            raise ValueError(depth_problem)
        return list(dict.fromkeys(requested)), {}
    if depth_problem:
        return ["ego-motion"], {DEPTH: depth_problem}
    return ["ego-motion", DEPTH], {}


def run_probe(config: ProbeConfig) -> RunResult:
    """Run every task's gate and its controls on features extracted once; write the outputs; return the result.

    Raises SceneOverlapError before loading any model when the splits share scenes, ValueError on
    bad inputs (both before the output folder is created), BusyError when another process holds
    the output folder's lock.
    """
    for name in config.tasks:
        make_task(name)  # an unknown name fails before any shard is read
    train_urls, train_metas = load_split_metadata(config.train_shards, config.max_clips)
    val_urls, val_metas = load_split_metadata(config.val_shards, config.max_clips)
    overlap = shared_scenes((m["scene"] for m in train_metas), (m["scene"] for m in val_metas))
    if overlap:
        raise SceneOverlapError(
            f"train and val shards share {len(overlap)} scene(s): {', '.join(overlap)}. "
            "A probe scored on scenes it was fitted on measures memorisation; use disjoint scene splits."
        )

    device = resolve_device(config.device)
    sources, train_config, step_folder = load_sources(
        str(config.checkpoint), config.seeds, device, flow=config.controls
    )
    model_config = train_config.model
    check_clip_shape(model_config, train_metas + val_metas)
    may_run_depth = not config.tasks or DEPTH in config.tasks
    problem = (
        depth_problem({"train": train_metas, "val": val_metas}, model_config.patch_size)
        if may_run_depth
        else None
    )
    names, skipped = plan_tasks(config.tasks, problem)
    clip_tasks = [make_task(name, config.thresholds) for name in names if name in CLIP_TASKS]
    if not clip_tasks:  # flow is a reference of the clip-level tasks only
        sources = {source: model for source, model in sources.items() if source.kind != FLOW}
    pretrained = next(model for source, model in sources.items() if source.kind == PRETRAINED)
    size = tuple(model_config.image_size)
    layout = token_layout(pretrained, model_config.clip_len, size)
    grids = candidate_grids(layout) if clip_tasks else []
    # Every view at every candidate grid in one decode pass: pooling is cheap next to the encoders.
    views = VIEWS if config.controls and clip_tasks else (INGESTED,)
    depth_names = {
        source.name
        for source in sources
        if source.kind in (PRETRAINED, RANDOM) or (source.kind == PIXELS and config.controls)
    }
    # One writer per --out, taken once every input is checked (a usage error creates no folder):
    # a second probe into the same folder stops here, before the expensive part (BusyError).
    with exclusive_lock(config.out, "mvm-probe"):
        splits, depth_splits = {}, {}
        for name, urls, metas in (("train", train_urls, train_metas), ("val", val_urls, val_metas)):
            sink = None
            if DEPTH in names:
                frames = depth_frames(metas)
                sink = DepthTokens(depth_names, frames, model_config.clip_len, layout)
                maps = read_depth_maps(
                    urls, [m["key"] for m, f in zip(metas, frames, strict=True) if f is not None]
                )
            features = encode_clips(
                sources,
                urls,
                [m["key"] for m in metas],
                config.decoder,
                grids,
                views,
                config.batch_size,
                device,
                config.seed,
                f"{name} features",
                token_sink=sink,
            )
            splits[name] = (features, np.array([m["scene"] for m in metas]), metas)
            if sink is not None:
                depth_splits[name] = depth_split(sink, metas, maps, {s.name: s for s in sources})
        results = {}
        for task in clip_tasks:
            train, val = (Split(f, targets(task, metas), scenes) for f, scenes, metas in splits.values())
            results[task.name] = evaluate_encoders(
                task, train, val, n_boot=config.bootstrap, seed=config.seed, controls=config.controls
            )
        if DEPTH in names:
            results[DEPTH] = evaluate_depth(
                depth_splits["train"],
                depth_splits["val"],
                n_boot=config.bootstrap,
                seed=config.seed,
                controls=config.controls,
            )
        extra = {
            "checkpoint": str(config.checkpoint),
            "checkpoint_step": int(step_folder.name.split("-")[1]),
            "model": {
                "preset": train_config.preset,
                "image_size": list(model_config.image_size),
                "clip_len": model_config.clip_len,
                "patch_size": model_config.patch_size,
            },
        }
        run = RunResult([results[name] for name in names], skipped)
        write_report(run.results, config.out, extra, skipped)
    return run
