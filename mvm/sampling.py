"""Where clips start inside a continuous segment: seeded by (seed, scene name), never by time."""

from __future__ import annotations

import hashlib

import numpy as np


def scene_rng(seed: int, scene: str) -> np.random.Generator:
    """A generator that depends on (seed, scene name) only, so a scene samples the same in any part."""
    digest = hashlib.sha256(f"mvm-ingest/{seed}/{scene}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def clip_span(clip_len: int, stride: int) -> int:
    """Chain positions covered by one clip: frames f, f+s, ..., f+(T-1)s."""
    return (clip_len - 1) * stride + 1


def clip_starts(
    segment_len: int, clip_len: int, stride: int, hop: int, rng: np.random.Generator
) -> list[int]:
    """Clip start offsets within a segment of `segment_len` frames, `hop` apart.

    The first offset is drawn uniformly from the slack the segment leaves after the most clips
    that fit, so the random offset never costs a clip. A segment shorter than one clip span gives
    no starts and draws nothing.
    """
    span = clip_span(clip_len, stride)
    if segment_len < span:
        return []
    count = (segment_len - span) // hop + 1
    slack = segment_len - span - (count - 1) * hop
    offset = int(rng.integers(0, slack + 1))
    return [offset + index * hop for index in range(count)]


def spread_subset(count: int, max_clips: int | None) -> np.ndarray:
    """Indices of at most max_clips of `count` items, evenly spread over the set (all if None).

    Spreading (rather than taking the first clips) keeps every scene of a scene-ordered shard set
    represented; it depends only on (count, max_clips), so it is deterministic.
    """
    if max_clips is None or max_clips >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, max_clips).round().astype(int))
