"""The depth probe's inputs: which clips carry a depth target, the tokens at their depth frame, the samples.

A clip's metadata `depth` (shards/README.md, format v2) is null or names the frame i of the clip the
LIDAR_TOP depth map belongs to and the map's patch p; the map is the clip's `depth.npy` member
(read by mvm.probe.data.read_depth_maps). `DepthTokens` is a token sink for
mvm.features.extract_features: it keeps each source's token grid at token step i // token_frames
for the clips with a target, so depth shares the forward passes of the clip-level tasks.
`depth_split` turns those and the maps into one sample per patch with a value (mvm.probe.depth).
"""

from __future__ import annotations

import numpy as np
import torch

from mvm.features import INGESTED
from mvm.probe.depth import DepthSplit
from mvm.probe.evaluate import Source
from mvm.shards import DamagedShardError


def depth_frames(metas: list[dict]) -> list[int | None]:
    """Per clip, the frame index of its depth target, None for a clip without one (no `depth`, or null).

    DamagedShardError naming the clip when `depth` is neither null nor an object with an integer
    `frame` in [0, clip_len) and a positive integer `patch`.
    """
    frames = []
    for meta in metas:
        depth = meta.get("depth")
        if depth is None:
            frames.append(None)
            continue
        frame, patch = (depth.get("frame"), depth.get("patch")) if isinstance(depth, dict) else (None, None)
        valid = all(isinstance(value, int) and not isinstance(value, bool) for value in (frame, patch))
        if not (valid and 0 <= frame < meta["clip_len"] and patch > 0):
            raise DamagedShardError(
                f"clip {meta['key']}: metadata `depth` {depth!r} is not null or "
                "{frame: 0..clip_len-1, patch: > 0, ...}"
            )
        frames.append(frame)
    return frames


def depth_problem(splits: dict[str, list[dict]], patch_size: int) -> str | None:
    """Why the depth probe cannot run on these clip sets (split name -> metadata), None when it can.

    It needs a depth target in some clip of every split, and every target's patch equal to the
    encoder's patch size (so each target patch is one token).
    """
    for name, metas in splits.items():
        if not any(frame is not None for frame in depth_frames(metas)):
            return (
                f"the {name} shards carry no depth targets (no clip has a `depth` in its metadata: "
                "shards ingested before shard format v2, or no LIDAR_TOP keyframe near any clip); "
                "re-ingest them with mvm-ingest's depth targets, or leave out --task depth"
            )
    patches = sorted({m["depth"]["patch"] for metas in splits.values() for m in metas if m.get("depth")})
    if patches != [patch_size]:
        return (
            f"the shards' depth patch {', '.join(map(str, patches))} differs from the encoder's patch size "
            f"{patch_size}; re-ingest with --depth-patch {patch_size}, or leave out --task depth"
        )
    return None


class DepthTokens:
    """Token sink (mvm.features.extract_features): each named source's tokens at every clip's depth frame.

    names: the sources kept, in the order the split's features keep them (an encoder's layers
    shallow to deep); frames: per clip of the stream, its depth frame or None; clip_len: T; layout:
    (R, C) of the depth maps. A source's (B, T', rows, cols, d) grid with rows = kR, cols = kC (k = 1 for the
    encoders, k = p for pixels) gives each depth patch the (k * k * d) values inside it.
    """

    def __init__(
        self, names: tuple[str, ...], frames: list[int | None], clip_len: int, layout: tuple[int, int]
    ):
        self.names, self.frames, self.clip_len, self.layout = names, frames, clip_len, layout
        self.tokens: dict[str, dict[int, np.ndarray]] = {name: {} for name in names}
        """Source name -> clip index -> (R, C, k * k * d) float32."""

    def __call__(self, name: str, view: str, first: int, tokens: torch.Tensor) -> None:
        if view != INGESTED or name not in self.names:
            return
        batch, steps, rows, cols, dim = tokens.shape
        (height, width), (fold_r, fold_c) = self.layout, (rows // self.layout[0], cols // self.layout[1])
        if (fold_r * height, fold_c * width) != (rows, cols) or self.clip_len % steps:
            raise ValueError(
                f"{name}'s {steps}x{rows}x{cols} token grid does not tile the {height}x{width} depth map "
                f"of {self.clip_len}-frame clips"
            )
        for offset in range(batch):
            frame = self.frames[first + offset]
            if frame is not None:
                grid = tokens[offset, frame // (self.clip_len // steps)]
                cells = grid.reshape(height, fold_r, width, fold_c, dim).permute(0, 2, 1, 3, 4)
                self.tokens[name][first + offset] = cells.reshape(height, width, -1).cpu().numpy()


def depth_split(
    sink: DepthTokens, metas: list[dict], maps: dict[str, np.ndarray], sources: dict[str, Source]
) -> DepthSplit:
    """One sample per patch with a value, over the clips with a depth target (metas in stream order).

    maps: key -> (R, C) float32 metres (NaN = no value); sources: source name -> Source of each
    name the sink collected. DamagedShardError when a map is not (R, C) or holds a value <= 0;
    ValueError when no patch has a value.
    """
    rows, cols = sink.layout
    depth, positions, scenes = [], [], []
    features: dict[str, list[np.ndarray]] = {name: [] for name in sink.names}
    clips = 0
    for index, frame in enumerate(sink.frames):
        if frame is None:
            continue
        values = maps[metas[index]["key"]]
        if values.shape != (rows, cols) or np.any(values[np.isfinite(values)] <= 0):
            raise DamagedShardError(
                f"clip {metas[index]['key']}: depth map {values.shape} is not {rows}x{cols} positive metres"
            )
        where = np.flatnonzero(np.isfinite(values.ravel()))
        clips += len(where) > 0
        depth.append(values.ravel()[where].astype(np.float64))
        positions.append(where)
        scenes.append(np.full(len(where), metas[index]["scene"]))
        for name in sink.names:
            features[name].append(sink.tokens[name][index].reshape(rows * cols, -1)[where])
    if not clips:
        raise ValueError("no clip's depth map has a value in any patch")
    return DepthSplit(
        {sources[name]: np.concatenate(parts) for name, parts in features.items()},
        np.concatenate(depth),
        np.concatenate(positions),
        np.concatenate(scenes),
        (rows, cols),
        clips,
    )
