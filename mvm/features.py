"""Probe features: the one path from decoded clips to the vectors every probe fits a head on.

Both the online probe (train/online_probe.py, during training) and the `mvm-probe` gate use
`extract_features`, so the number logged during training and the gate's verdict look at the same
features. Per clip (T, H, W, 3) uint8, for every view, source and grid:

1. view (VIEWS): `ingested` as decoded; `shuffled` the frames in a seeded permutation of
   (seed, clip index) that is never the identity (order destroyed, content kept); `static` frame 0
   repeated T times (no motion at all).
2. source: an encoder's token grid (`MaskedVideoModel.token_grid`, (B, T', R, C, d)), one named
   layer of an encoder (`EncoderLayer`: `token_layers(video)[layer]`; every layer of one encoder
   comes from a single forward pass per batch), or the raw pixels themselves (`PIXELS`:
   (B, T, H, W, 3) in [0, 1], a "token" per pixel, no learning).
3. spatial pooling to a (gh, gw) grid of cell averages (adaptive average pooling), per time step:
   (B, T', gh * gw * d). For pixels this is a gh x gw RGB thumbnail, so the pixel baseline never
   gets more spatial detail than the encoders at the same grid.
4. temporal pooling: [mean over time, mean of the second half − mean of the first half, mean
   |step-to-step change|] -> (B, 3 * gh * gw * d). The signed half-difference keeps the direction
   of change (left vs right) and the mean absolute step its magnitude (stopped vs moving).

Every source sees the same decoded clips in the same batches; decoding happens once, whatever the
number of sources, views and grids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mvm.tensors import frames_to_video

INGESTED, SHUFFLED, STATIC = "ingested", "shuffled", "static"
VIEWS = (INGESTED, SHUFFLED, STATIC)
"""The clip views; the gate itself uses only `ingested`, the controls the others."""

Grid = tuple[int, int]


class PixelSource:
    """The no-learning source: the frames themselves as a (B, T, H, W, 3) "token grid"."""

    def token_grid(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, T, 3, H, W) float [0, 1] -> (B, T, H, W, 3)."""
        return video.permute(0, 1, 3, 4, 2)


PIXELS = PixelSource()


class EncoderLayer:
    """One layer of an encoder as a source: `model.token_layers(video)[layer]` ((B, T', R, C, d)).

    model: anything with `token_layers(video) -> dict[str, Tensor]` (a MaskedVideoModel: layers
    stem, block1..blockN, last). extract_features runs each model once per batch and view, however
    many of its layers are sources.
    """

    def __init__(self, model, layer: str):
        self.model, self.layer = model, layer

    def token_grid(self, video: torch.Tensor) -> torch.Tensor:
        return self.model.token_layers(video)[self.layer]


def _tokens(source, video: torch.Tensor, layers_of: dict[int, dict[str, torch.Tensor]]) -> torch.Tensor:
    """(B, T', R, C, d) tokens of `source`; an EncoderLayer reads `layers_of` (id(model) -> its layers), filled once."""
    if not isinstance(source, EncoderLayer):
        return source.token_grid(video)
    if id(source.model) not in layers_of:
        layers_of[id(source.model)] = source.model.token_layers(video)
    return layers_of[id(source.model)][source.layer]


def shuffled_order(frames: int, seed: int, clip_index: int) -> np.ndarray:
    """(frames,) permutation of range(frames) from PCG64 seeded with (seed, clip_index); never the identity.

    A drawn identity (probability 1/frames!) is rotated by one, so every shuffled clip has its order
    changed. Deterministic: the same (frames, seed, clip_index) always gives the same permutation.
    """
    order = np.random.default_rng((seed, clip_index)).permutation(frames)
    if frames > 1 and np.array_equal(order, np.arange(frames)):
        order = np.roll(order, 1)
    return order


def apply_view(clip: np.ndarray, view: str, seed: int, clip_index: int) -> np.ndarray:
    """One view of a (T, H, W, 3) clip, same shape and dtype. ValueError for an unknown view."""
    if view == INGESTED:
        return clip
    if view == SHUFFLED:
        return clip[shuffled_order(len(clip), seed, clip_index)]
    if view == STATIC:
        return np.repeat(clip[:1], len(clip), axis=0)
    raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")


def temporal_pool(per_step: torch.Tensor) -> torch.Tensor:
    """(B, T', F) -> (B, 3F): [mean over time, second-half mean − first-half mean, mean |step|]."""
    if per_step.shape[1] == 1:  # one step (the single frame pair of a 2-frame clip): nothing changes
        return torch.cat(
            [per_step[:, 0], torch.zeros_like(per_step[:, 0]), torch.zeros_like(per_step[:, 0])], dim=1
        )
    half = per_step.shape[1] // 2
    change = per_step[:, half:].mean(dim=1) - per_step[:, :half].mean(dim=1)
    step = (per_step[:, 1:] - per_step[:, :-1]).abs().mean(dim=1)
    return torch.cat([per_step.mean(dim=1), change, step], dim=1)


def batched(clips: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Group (T, H, W, 3) clips into (B, T, H, W, 3) stacks of at most batch_size, in order."""
    batch: list[np.ndarray] = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def grid_pool(tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B, T', R, C, d) -> (B, T', gh * gw * d): the average of each of gh x gw cells, per time step.

    ValueError when the grid is finer than the token layout (that would invent detail).
    """
    batch, steps, rows, cols, dim = tokens.shape
    if grid[0] > rows or grid[1] > cols:
        raise ValueError(f"grid {grid} is finer than the {rows}x{cols} token layout")
    maps = tokens.reshape(batch * steps, rows, cols, dim).permute(0, 3, 1, 2)
    cells = F.adaptive_avg_pool2d(maps, grid)  # (B * T', d, gh, gw)
    return cells.permute(0, 2, 3, 1).reshape(batch, steps, -1)


def pool(tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B, T', R, C, d) token grid -> (B, 3 * gh * gw * d) probe features (spatial, then temporal pooling)."""
    return temporal_pool(grid_pool(tokens, grid))


def token_layout(source, frames: int, size: tuple[int, int]) -> tuple[int, int]:
    """(R, C) of a source's token grid for clips of `frames` frames of size (H, W)."""
    probe = torch.zeros(1, frames, 3, *size)
    with torch.no_grad():
        shape = source.token_grid(probe.to(_device_of(source))).shape
    return int(shape[2]), int(shape[3])


def _device_of(source) -> torch.device:
    parameters = getattr(source, "parameters", None)
    return next(parameters()).device if parameters else torch.device("cpu")


@torch.no_grad()
def extract_features(
    sources: dict[str, object],
    clips: Iterable[np.ndarray],
    grids: Sequence[Grid],
    views: Sequence[str] = (INGESTED,),
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    token_sink: Callable[[str, str, int, torch.Tensor], None] | None = None,
) -> dict[tuple[str, str, Grid], np.ndarray]:
    """Probe features of every clip for every (source, view, grid), in one pass over the clips.

    sources: name -> an encoder with `.token_grid(video (B, T, 3, H, W)) -> (B, T', R, C, d)`, an
    EncoderLayer, or PIXELS; clips: (T, H, W, 3) uint8 arrays, consumed once (clip i of the stream is clip index i
    of the shuffled view); every grid must be at most each source's (R, C) or PIXELS' (H, W).
    Returns (name, view, grid) -> float32 (N, 3 * gh * gw * d) in clip order. nn.Module sources run
    in eval mode without gradients; their train/eval mode is restored afterwards.
    token_sink: called as (name, view, index of the batch's first clip, tokens (B, T', R, C, d)) for
    every batch, so per-token probes (mvm.probe's depth) read the same forward passes unpooled.
    """
    models = {name: s.model if isinstance(s, EncoderLayer) else s for name, s in sources.items()}
    modules = {name: model for name, model in models.items() if isinstance(model, torch.nn.Module)}
    was_training = {name: module.training for name, module in modules.items()}
    for module in modules.values():
        module.eval()
    chunks: dict[tuple[str, str, Grid], list[np.ndarray]] = {
        (name, view, tuple(grid)): [] for name in sources for view in views for grid in grids
    }
    first = 0
    try:
        for frames in batched(clips, batch_size):
            for view in views:
                viewed = np.stack(
                    [apply_view(clip, view, seed, first + offset) for offset, clip in enumerate(frames)]
                )
                video = frames_to_video(viewed).to(device)
                layers_of: dict[int, dict[str, torch.Tensor]] = {}  # this batch's forward pass per encoder
                for name, source in sources.items():
                    tokens = _tokens(source, video, layers_of).float()
                    if token_sink is not None:
                        token_sink(name, view, first, tokens)
                    for grid in grids:
                        chunks[(name, view, tuple(grid))].append(pool(tokens, grid).cpu().numpy())
            first += len(frames)
    finally:
        for name, module in modules.items():
            module.train(was_training[name])
    return {
        key: np.concatenate(parts) if parts else np.zeros((0, 0), np.float32) for key, parts in chunks.items()
    }
