"""The sources the gate compares, and their features on a clip set.

- "pretrained": the checkpoint, loaded with mvm.train.checkpoint.load_for_eval.
- "random-<seed>": the same architecture (the checkpoint's saved ModelConfig) built by
  mvm.train.model.build_model right after torch.manual_seed(seed), for seed in 0..seeds-1.
- "pixels": no encoder at all (mvm.features.PIXELS), the floor a representation must beat.
- "flow": no encoder either (mvm.probe.flow.FlowSource): block-matching displacement of each encoder
  patch between consecutive frames, the reference a classical motion estimate sets.

Every source sees the same decoded clips in the same batches and goes through the same
`mvm.features.extract_features` (eval mode, no gradients, the same pooling), so the comparison
differs only in the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from mvm.features import PIXELS, Grid, extract_features
from mvm.probe.data import iter_selected_frames
from mvm.probe.evaluate import Source
from mvm.probe.flow import FlowSource
from mvm.train.checkpoint import load_for_eval
from mvm.train.model import build_model


def resolve_device(device: str) -> torch.device:
    """Device for "auto" (CUDA when available, else CPU), "cpu" or "cuda" (ValueError if CUDA is missing)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    return torch.device(device)


def load_sources(
    checkpoint: str, seeds: int, device: torch.device, flow: bool = True
) -> tuple[dict[Source, object], object, Path]:
    """(Source -> model on `device` in eval mode, PIXELS or FlowSource; the checkpoint's TrainConfig; its step folder).

    Pixels are always included (they take part in the grid choice); flow only when `flow` (the
    controls report it, nothing else uses it).
    """
    pretrained, config, folder = load_for_eval(checkpoint, device=device)
    sources: dict[Source, object] = {Source.pretrained(): pretrained}
    for seed in range(seeds):
        torch.manual_seed(seed)
        sources[Source.random(seed)] = build_model(config.model).to(device)
    for model in sources.values():
        model.eval()
    sources[Source.pixels()] = PIXELS
    if flow:
        sources[Source.flow()] = FlowSource(config.model.patch_size)
    return sources, config, folder


def encode_clips(
    sources: dict[Source, object],
    urls: list[str],
    keys: list[str],
    decoder: str,
    grids: Sequence[Grid],
    views: Sequence[str],
    batch_size: int,
    device: torch.device,
    seed: int,
    description: str = "features",
    token_sink=None,
) -> dict[tuple[Source, str, Grid], np.ndarray]:
    """(source, view, grid) -> (len(keys), F) float32 features of the named clips, decoded once.

    token_sink: passed to mvm.features.extract_features (the unpooled tokens of every batch, by source name).
    """
    frames = track(
        iter_selected_frames(urls, keys, decoder), total=len(keys), description=description, transient=True
    )
    by_name = {source.name: source for source in sources}
    features = extract_features(
        {source.name: model for source, model in sources.items()},
        frames,
        grids,
        views,
        batch_size=batch_size,
        device=device,
        seed=seed,
        token_sink=token_sink,
    )
    return {(by_name[name], view, grid): values for (name, view, grid), values in features.items()}
