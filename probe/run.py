"""One probe run: shards + checkpoint -> features of every encoder -> evaluation -> report files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvm.atomic import exclusive_lock
from mvm.ego_motion import MotionThresholds
from mvm.features import INGESTED, VIEWS, EncoderLayer, token_layout
from mvm.probe.data import read_metadata
from mvm.probe.encoders import encode_clips, load_sources, resolve_device
from mvm.probe.evaluate import FLOW, PRETRAINED, ProbeResult, Split, evaluate_encoders, shared_scenes
from mvm.probe.layers import encode_layers, layer_names, select
from mvm.probe.pooling import candidate_grids
from mvm.probe.report_files import write_outputs
from mvm.probe.tasks import make_task, targets
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
    task: str = "ego-motion"
    """Task name: "ego-motion" (4 classes, balanced accuracy) or "speed" (regression, R²)."""
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


def run_probe(config: ProbeConfig) -> ProbeResult:
    """Run the gate and its controls; write the outputs; return the result.

    Raises SceneOverlapError before loading any model when the splits share scenes, ValueError on
    bad inputs (both before the output folder is created), BusyError when another process holds
    the output folder's lock.
    """
    task = make_task(config.task, config.thresholds)
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
    pretrained = next(model for source, model in sources.items() if source.kind == PRETRAINED)
    grids = candidate_grids(token_layout(pretrained, model_config.clip_len, tuple(model_config.image_size)))
    views = VIEWS if config.controls else (INGESTED,)
    # One writer per --out, taken once every input is checked (a usage error creates no folder):
    # a second probe into the same folder stops here, before the expensive part (BusyError).
    with exclusive_lock(config.out, "mvm-probe"):
        # The training clips' ingested view at every layer and grid chooses the grid, then each
        # encoder's layer (probe/layers.py); the rest is encoded at those choices only.
        train_keys = [m["key"] for m in train_metas]
        train_targets, train_scenes = targets(task, train_metas), np.array([m["scene"] for m in train_metas])
        every_layer = encode_layers(
            {source.name: model for source, model in sources.items()},
            train_urls,
            train_keys,
            config.decoder,
            grids,
            layer_names(model_config.depth),
            config.batch_size,
            device,
            config.seed,
        )
        kinds = {source.name: source.kind for source in sources if source.kind != FLOW}
        selection = select(task, every_layer, kinds, train_targets, train_scenes)
        grid, layer_of = selection.pooling.grid, selection.layers.chosen
        chosen = {
            source: EncoderLayer(model, layer_of[source.name]) if source.name in layer_of else model
            for source, model in sources.items()
        }
        train_features = {
            (source, INGESTED, grid): every_layer[(source.name, layer_of.get(source.name), grid)]
            for source in sources
        }
        del every_layer  # every other layer and grid: the bulk of the feature memory
        other_views = [view for view in views if view != INGESTED]
        if other_views:
            train_features |= encode_clips(
                chosen, train_urls, train_keys, config.decoder, [grid], other_views,
                config.batch_size, device, config.seed, "train features, controls",
            )  # fmt: skip
        val_features = encode_clips(
            chosen, val_urls, [m["key"] for m in val_metas], config.decoder, [grid], views,
            config.batch_size, device, config.seed, "val features",
        )  # fmt: skip
        result = evaluate_encoders(
            task,
            Split(train_features, train_targets, train_scenes),
            Split(val_features, targets(task, val_metas), np.array([m["scene"] for m in val_metas])),
            n_boot=config.bootstrap,
            seed=config.seed,
            controls=config.controls,
            selection=selection,
        )
        extra = {
            "checkpoint": str(config.checkpoint),
            "checkpoint_step": int(step_folder.name.split("-")[1]),
            "model": {
                "preset": train_config.preset,
                "image_size": list(model_config.image_size),
                "clip_len": model_config.clip_len,
            },
        }
        write_outputs(result, config.out, extra)
    return result
