"""Clip sets of the probe: metadata first (no decoding), then the frames of the selected clips.

The metadata pass lets the CLI refuse overlapping train/val scenes and choose a `--max-clips`
subset before any model is loaded or any video decoded. Both passes read the shards through
train.data (same tar layout, same error messages naming shard and key).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from train.data import ShardError, decode_sample, iter_samples


def read_metadata(urls: list[str]) -> list[dict]:
    """Clip metadata of every sample, in shard order then sample order (the order of iter_clips)."""
    metas = []
    for url in urls:
        for sample in iter_samples(url):
            if "json" not in sample:
                raise ShardError(f"shard {url}, sample {sample['key']}: no .json metadata member")
            metas.append(json.loads(sample["json"]))
    return metas


def spread_subset(count: int, max_clips: int | None) -> np.ndarray:
    """Indices of at most max_clips of `count` clips, evenly spread over the set (all if None).

    Spreading (rather than taking the first clips) keeps every scene of a scene-ordered shard set
    represented; it depends only on (count, max_clips), so it is deterministic.
    """
    if max_clips is None or max_clips >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, max_clips).round().astype(int))


def iter_selected_frames(urls: list[str], keys: list[str], decoder: str) -> Iterator[np.ndarray]:
    """(T, H, W, 3) uint8 frames of the clips named in `keys`, in that order (which is shard order).

    Only the selected clips are decoded. Raises ShardError if the shards do not hold exactly these
    keys in this order (a shard changed between the metadata pass and decoding).
    """
    wanted = set(keys)
    position = 0
    for url in urls:
        for sample in iter_samples(url):
            if sample["key"] not in wanted:
                continue
            if position >= len(keys) or sample["key"] != keys[position]:
                raise ShardError(f"shard {url} changed while probing: unexpected clip {sample['key']}")
            position += 1
            yield decode_sample(sample, decoder, None)[0]
    if position != len(keys):
        raise ShardError(f"shards changed while probing: {len(keys) - position} selected clips not found")
