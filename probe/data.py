"""Clip sets of the probe: metadata first (no decoding), then the frames of the selected clips.

The metadata pass lets the CLI refuse overlapping train/val scenes and choose a `--max-clips`
subset before any model is loaded or any video decoded. Both passes read the shards through
mvm.shards.iter_verified (names checked against the manifest, sha256 verified on first open,
errors naming shard and key) and decode with mvm.train.data.decode_sample.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from mvm.shards import DEPTH_MEMBER, DamagedShardError, clip_shape_of, decode_depth
from mvm.shards import iter_verified as iter_samples
from mvm.train.data import decode_sample

PROBE_FIELDS = ("key", "scene", "clip_len", "size", "speed_mps", "yaw_rate_rps")
"""Metadata fields the probe reads (shards/README.md); a clip without them is refused by name."""


def read_metadata(urls: list[str]) -> list[dict]:
    """Clip metadata of every sample, in shard order then sample order (the order of iter_clips)."""
    metas = []
    for url in urls:
        for sample in iter_samples(url):
            where = f"shard {url}, sample {sample['key']}"
            try:
                meta = json.loads(sample["json"])
            except (KeyError, ValueError):
                raise DamagedShardError(f"{where}: no readable .json metadata member") from None
            if not isinstance(meta, dict) or not set(PROBE_FIELDS) <= meta.keys():
                raise DamagedShardError(f"{where}: metadata lacks some of {', '.join(PROBE_FIELDS)}")
            metas.append(meta)
    return metas


def iter_selected_frames(urls: list[str], keys: list[str], decoder: str) -> Iterator[np.ndarray]:
    """(T, H, W, 3) uint8 frames of the clips named in `keys`, in that order (which is shard order).

    Only the selected clips are decoded. Raises DamagedShardError naming the shard and key for a clip
    that does not decode to the manifest's (T, H, W) (a short clip would otherwise surface only when
    the batch is stacked, nameless), or if the shards do not hold exactly these keys in this order (a
    shard changed between the metadata pass and decoding).
    """
    clip_len, (height, width) = clip_shape_of(urls)
    wanted = set(keys)
    position = 0
    for url in urls:
        for sample in iter_samples(url):
            if sample["key"] not in wanted:
                continue
            if position >= len(keys) or sample["key"] != keys[position]:
                raise DamagedShardError(f"shard {url} changed while probing: unexpected clip {sample['key']}")
            position += 1
            yield decode_sample(sample, decoder, (clip_len, height, width, 3))[0]
    if position != len(keys):
        raise DamagedShardError(
            f"shards changed while probing: {len(keys) - position} selected clips not found"
        )


def read_depth_maps(urls: list[str], keys: list[str]) -> dict[str, np.ndarray]:
    """key -> (H/p, W/p) float32 depth map of every clip named in `keys` (no video decoded).

    DamagedShardError when a named clip has no depth member (its metadata promised one) or is missing.
    """
    wanted, maps = set(keys), {}
    for url in urls:
        for sample in iter_samples(url):
            if sample["key"] in wanted:
                depth = decode_depth(sample)
                if depth is None:
                    raise DamagedShardError(
                        f"shard {url}, sample {sample['key']}: metadata names a depth target but "
                        f"there is no {DEPTH_MEMBER} member"
                    )
                maps[sample["key"]] = depth
    missing = wanted - maps.keys()
    if missing:
        raise DamagedShardError(f"shards changed while probing: {len(missing)} clips with depth not found")
    return maps
