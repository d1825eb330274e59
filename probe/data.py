"""Clip sets of the probe: metadata first (cheap, no decoding), then the selected clips' frames.

Reading only the `.json` members lets the CLI refuse overlapping train/val scenes and choose a
`--max-clips` subset before any model is loaded or any video decoded.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator

import numpy as np

from train.data import iter_clips


def read_metadata(urls: list[str]) -> list[dict]:
    """Clip metadata of every sample, in shard order then sample order (the order of iter_clips).

    urls: local shard paths (as from train.data.resolve_shards). Only `<key>.json` members are read.
    """
    metas = []
    for url in urls:
        path = url.removeprefix("file:")
        try:
            with tarfile.open(path) as archive:
                for member in archive:
                    if member.isfile() and member.name.endswith(".json"):
                        metas.append(json.loads(archive.extractfile(member).read()))
        except (OSError, tarfile.TarError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read clip metadata from shard {url}: {error}") from error
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

    Raises ValueError if the shards do not hold exactly these keys in this order (a shard changed
    between the metadata pass and decoding).
    """
    wanted = set(keys)
    position = 0
    for key, frames, _meta in iter_clips(urls, decoder=decoder):
        if key not in wanted:
            continue
        if position >= len(keys) or key != keys[position]:
            raise ValueError(f"shard contents changed while probing: got clip {key}, expected {keys[position:position + 1]}")
        position += 1
        yield frames
    if position != len(keys):
        raise ValueError(f"shard contents changed while probing: {len(keys) - position} selected clips not found")
