"""One probe run: shards + checkpoint -> features of every encoder, extracted once for every task ->
evaluation per task -> one report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvm.atomic import exclusive_lock
from mvm.ego_motion import MotionThresholds
from mvm.features import INGESTED, VIEWS, EncoderLayer, token_layout
from mvm.probe.data import read_depth_maps, read_metadata
from mvm.probe.depth import DepthResult, choose_depth_layers, evaluate_depth
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
from mvm.probe.layers import encode_layers, layer_names, select
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
    layout = token_layout(pretrained, model_config.clip_len, tuple(model_config.image_size))
    grids = candidate_grids(layout) if clip_tasks else []
    views = VIEWS if config.controls and clip_tasks else (INGESTED,)
    layers = layer_names(model_config.depth)
    encoders = [source for source in sources if source.kind in (PRETRAINED, RANDOM)]
    # The depth probe reads every layer of every encoder (and the patches' pixels with the controls).
    depth_keys = {f"{source.name}/{layer}": (source, layer) for source in encoders for layer in layers}
    if config.controls:
        depth_keys |= {source.name: (source, None) for source in sources if source.kind == PIXELS}
    models = {source.name: model for source, model in sources.items()}
    # One writer per --out, taken once every input is checked (a usage error creates no folder):
    # a second probe into the same folder stops here, before the expensive part (BusyError).
    with exclusive_lock(config.out, "mvm-probe"):
        # Each split's ingested view at every layer (and, for the training clips, every grid) in one
        # decode pass: it chooses the grid and each encoder's layer per clip task (probe/layers.py,
        # training clips only) and feeds the depth probe's tokens. The control views are encoded
        # afterwards at the chosen grid and layers only.
        layered, depth_splits = {}, {}
        splits = {"train": (train_urls, train_metas), "val": (val_urls, val_metas)}
        for name, (urls, metas) in splits.items():
            sink = None
            if DEPTH in names:
                frames = depth_frames(metas)
                sink = DepthTokens(tuple(depth_keys), frames, model_config.clip_len, layout)
                maps = read_depth_maps(
                    urls, [m["key"] for m, f in zip(metas, frames, strict=True) if f is not None]
                )
            layered[name] = encode_layers(
                models, urls, [m["key"] for m in metas], config.decoder, grids, layers,
                config.batch_size, device, config.seed, f"{name} features, every layer", token_sink=sink,
            )  # fmt: skip
            if sink is not None:
                depth_splits[name] = depth_split(sink, metas, maps, depth_keys)
        results = {}
        kinds = {source.name: source.kind for source in sources if source.kind != FLOW}
        for task in clip_tasks:
            results[task.name] = _clip_task(task, sources, layered, kinds, views, splits, config, device)
        del layered  # every other layer and grid: the bulk of the feature memory
        if DEPTH in names:
            train, val, layer_choice = choose_depth_layers(depth_splits["train"], depth_splits["val"])
            results[DEPTH] = evaluate_depth(
                train,
                val,
                n_boot=config.bootstrap,
                seed=config.seed,
                controls=config.controls,
                layers=layer_choice,
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


def _clip_task(
    task,
    sources: dict,
    layered: dict[str, dict],
    kinds: dict[str, str],
    views: tuple[str, ...],
    splits: dict[str, tuple[list[str], list[dict]]],
    config: ProbeConfig,
    device,
) -> ProbeResult:
    """One clip-level task: grid and layers chosen on the training clips' ingested view (every layer
    and grid in `layered["train"]`), the control views encoded at those choices, then the gate.

    layered: split -> (source name, layer or None, grid) -> (N, F) ingested features (the validation
    clips' at every layer of every grid too); splits: split -> (shard urls, clip metadata).
    """
    scenes = {name: np.array([m["scene"] for m in metas]) for name, (_, metas) in splits.items()}
    train_targets = targets(task, splits["train"][1])
    selection = select(task, layered["train"], kinds, train_targets, scenes["train"])
    grid, layer_of = selection.pooling.grid, selection.layers.chosen
    chosen = {
        source: EncoderLayer(model, layer_of[source.name]) if source.name in layer_of else model
        for source, model in sources.items()
    }
    features = {
        name: {
            (source, INGESTED, grid): layered[name][(source.name, layer_of.get(source.name), grid)]
            for source in sources
        }
        for name in splits
    }
    other_views = [view for view in views if view != INGESTED]
    if other_views:
        for name, (urls, metas) in splits.items():
            features[name] |= encode_clips(
                chosen, urls, [m["key"] for m in metas], config.decoder, [grid], other_views,
                config.batch_size, device, config.seed, f"{name} features, controls",
            )  # fmt: skip
    return evaluate_encoders(
        task,
        Split(features["train"], train_targets, scenes["train"]),
        Split(features["val"], targets(task, splits["val"][1]), scenes["val"]),
        n_boot=config.bootstrap,
        seed=config.seed,
        controls=config.controls,
        selection=selection,
    )
