"""Which scenes a synthetic dataroot holds, and when each of its sensors fires.

Scene names come from the devkit's own split lists so `mini_train`/`mini_val` and `train`/`val`
select synthetic scenes exactly as they select real ones. Timing follows real nuScenes: the
lidar spins at 20 Hz on a 50 ms trigger grid, each camera fires when the lidar sweeps across
its field of view (so CAM_FRONT sits on the same grid, 12 Hz as intervals of 100, 100, 50 ms),
keyframes (`sample` records) come every 0.5 s, and frames are occasionally dropped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from nuscenes.utils import splits

VERSIONS = ("v1.0-mini", "v1.0-trainval")
VAL_FRACTION = 0.3
"""Share of val scene names in a synthetic dataroot (at least one val scene from two scenes on)."""

TICK_US = 50_000
"""The lidar's trigger grid: every sensor timestamp is a multiple of this plus a per-log offset."""
CAMERA_PHASES = (0, 2, 4)
"""Ticks (mod 5) at which CAM_FRONT fires: intervals 100, 100, 50 ms, a mean of 83.3 ms (12 Hz)."""
TICKS_PER_SAMPLE = 10
"""A keyframe every 10 ticks = 0.5 s (2 Hz), always on a tick where the camera fires."""


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded from (seed, names) only, so any one scene is reproducible on its own."""
    digest = hashlib.sha256("/".join([str(seed), *names]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def token(*parts: object) -> str:
    """A 32-hex-digit nuScenes-style token that is a pure function of `parts`."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def scene_names(version: str, count: int) -> list[tuple[str, str]]:
    """(scene name, split) pairs for `count` scenes of `version`, in generation order.

    v1.0-mini draws from the 10 mini scenes (`mini_train` 8, `mini_val` 2); v1.0-trainval from
    `train` and `val`. Either way round(0.3 * count) scenes (at least one from two scenes on, at
    most as many as the split has) are val scenes, the first ones of the sorted val list, spread
    evenly through the order; the rest are the first names of the sorted train list. The choice
    does not depend on the seed.
    """
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    train_pool, val_pool = (
        (splits.mini_train, splits.mini_val) if version == "v1.0-mini" else (splits.train, splits.val)
    )
    train_pool, val_pool = sorted(train_pool), sorted(val_pool)
    if not 1 <= count <= len(train_pool) + len(val_pool):
        raise ValueError(
            f"{version} has {len(train_pool) + len(val_pool)} scene names; asked for {count} scenes"
        )
    val_count = min(len(val_pool), max(1 if count >= 2 else 0, round(VAL_FRACTION * count)))
    val_count = max(val_count, count - len(train_pool))
    chosen, next_train, next_val = [], iter(train_pool), iter(val_pool)
    for index in range(count):
        is_val = (index + 1) * val_count // count > index * val_count // count
        chosen.append((next(next_val), "val") if is_val else (next(next_train), "train"))
    return chosen


@dataclass(frozen=True)
class SensorTimes:
    """Firing times of one scene's sensors as tick indices (multiples of TICK_US from the scene start)."""

    camera_ticks: np.ndarray
    """(F,) int64 ticks of the CAM_FRONT frames, increasing; the last one is a keyframe."""
    lidar_ticks: np.ndarray
    """(L,) int64 ticks of the LIDAR_TOP sweeps: every tick from the first camera frame to the last."""
    sample_ticks: np.ndarray
    """(S,) int64 ticks of the keyframes (`sample` records); each has a CAM_FRONT and a LIDAR_TOP frame."""


def sensor_times(frames: int, drop_rate: float, rng: np.random.Generator) -> SensorTimes:
    """Tick schedule of a scene with exactly `frames` CAM_FRONT frames.

    Built backwards from a keyframe at the scene's end so the last frame is a keyframe and every
    non-keyframe has a next sample to point to. Each non-keyframe frame except the first is
    dropped with probability `drop_rate`, which leaves an interval of 150 ms or more.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    ticks, tick = [], 0
    while len(ticks) < frames:
        if tick % 5 in CAMERA_PHASES:
            is_key = tick % TICKS_PER_SAMPLE == 0
            dropped = not is_key and len(ticks) < frames - 1 and rng.random() < drop_rate
            if not dropped:
                ticks.append(tick)
        tick -= 1
    camera = np.array(ticks[::-1], dtype=np.int64)
    camera -= camera[0] - camera[0] % TICKS_PER_SAMPLE  # shift so tick 0 is on the sample grid
    first_sample = -(-camera[0] // TICKS_PER_SAMPLE) * TICKS_PER_SAMPLE
    return SensorTimes(
        camera_ticks=camera,
        lidar_ticks=np.arange(camera[0], camera[-1] + 1, dtype=np.int64),
        sample_ticks=np.arange(first_sample, camera[-1] + 1, TICKS_PER_SAMPLE, dtype=np.int64),
    )


def next_sample_index(ticks: np.ndarray, sample_ticks: np.ndarray) -> np.ndarray:
    """Index of the sample each frame belongs to: the keyframe at its tick or the next one in time.

    ticks: (N,) int64, sample_ticks: (S,) int64 increasing -> (N,) int64 indices into sample_ticks.
    """
    return np.searchsorted(sample_ticks, ticks, side="left")
