"""The encoders compared by the gate and their frozen features.

- "pretrained": the checkpoint, loaded with train.checkpoint.load_for_eval.
- "random-<seed>": the same architecture (the checkpoint's saved ModelConfig) built by
  train.model.build_model right after torch.manual_seed(seed), for seed in 0..seeds-1.

Every encoder sees the same decoded clips in the same batches and goes through the same
`train.online_probe.extract_features` (eval mode, no gradients, `MaskedVideoModel.features`
pooling), so the comparison differs only in the weights.
"""

from __future__ import annotations

import numpy as np
import torch
from rich.progress import track

from probe.data import iter_selected_frames
from probe.evaluate import PRETRAINED, random_name
from train.checkpoint import load_for_eval
from train.model import build_model
from train.online_probe import extract_features


def resolve_device(device: str) -> torch.device:
    """Device for "auto" (CUDA when available, else CPU), "cpu" or "cuda" (ValueError if CUDA is missing)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    return torch.device(device)


def load_encoders(
    checkpoint: str, seeds: int, device: torch.device
) -> tuple[dict[str, torch.nn.Module], object]:
    """(name -> model on `device` in eval mode, the checkpoint's TrainConfig)."""
    pretrained, config = load_for_eval(checkpoint, device=device)
    encoders = {PRETRAINED: pretrained}
    for seed in range(seeds):
        torch.manual_seed(seed)
        encoders[random_name(seed)] = build_model(config.model).to(device)
    for model in encoders.values():
        model.eval()
    return encoders, config


def encode_clips(
    encoders: dict[str, torch.nn.Module],
    urls: list[str],
    keys: list[str],
    decoder: str,
    batch_size: int,
    device: torch.device,
    description: str = "features",
) -> dict[str, np.ndarray]:
    """name -> (len(keys), F) float32 features of the named clips, decoded once for all encoders."""
    frames = track(
        iter_selected_frames(urls, keys, decoder), total=len(keys), description=description, transient=True
    )
    return extract_features(encoders, frames, batch_size=batch_size, device=device)
