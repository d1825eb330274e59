"""Ego motion of a clip from its ego poses, and the ego-motion class derived from it.

Used by the ingest (derived fields in the clip metadata), the audit (label distribution) and
the probes (labels). Everything here is a pure function of the clip metadata fields
`timestamps`, `ego_translation` and `ego_rotation` (see shards/README.md).

Conventions (nuScenes): translations in metres in the global frame, rotations as quaternions
[w, x, y, z], yaw about +z, positive yaw rate = counter-clockwise seen from above = left turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EGO_MOTION_CLASSES = ("stopped", "straight", "left", "right")


@dataclass(frozen=True)
class MotionThresholds:
    """Thresholds that turn (speed, yaw rate) into an ego-motion class."""

    stopped_speed_mps: float = 0.5
    """Mean speed below this is `stopped` (0.5 m/s = 1.8 km/h: creeping in a queue counts as stopped)."""
    turn_yaw_rate_rps: float = 0.1
    """|mean yaw rate| above this is a turn (0.1 rad/s ≈ 5.7°/s; a 90° junction turn is ~0.2–0.4 rad/s)."""


def yaw_from_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Yaw about +z in radians. rotation: (..., 4) as [w, x, y, z] -> (...)."""
    w, x, y, z = np.moveaxis(np.asarray(rotation, dtype=np.float64), -1, 0)
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def clip_motion(timestamps, ego_translation, ego_rotation) -> tuple[float, float]:
    """Mean ego speed (m/s) and mean yaw rate (rad/s, + = left) over a clip.

    timestamps: (T,) µs ints, strictly increasing; ego_translation: (T, 3); ego_rotation: (T, 4).
    Speed is path length in the ground plane over elapsed time; yaw rate is the unwrapped yaw
    change over elapsed time, so both are exact for any spacing of the frames.
    """
    t_s = np.asarray(timestamps, dtype=np.float64) * 1e-6
    xy = np.asarray(ego_translation, dtype=np.float64)[:, :2]
    elapsed = t_s[-1] - t_s[0]
    if len(t_s) < 2 or elapsed <= 0:
        raise ValueError("clip_motion needs at least two frames with increasing timestamps")
    path = np.linalg.norm(np.diff(xy, axis=0), axis=1).sum()
    yaw = np.unwrap(yaw_from_quaternion(ego_rotation))
    return float(path / elapsed), float((yaw[-1] - yaw[0]) / elapsed)


def ego_motion_label(
    speed_mps: float, yaw_rate_rps: float, thresholds: MotionThresholds = MotionThresholds()
) -> str:
    """One of EGO_MOTION_CLASSES. Stopped wins over turning (a car turning on the spot is rare)."""
    if speed_mps < thresholds.stopped_speed_mps:
        return "stopped"
    if yaw_rate_rps > thresholds.turn_yaw_rate_rps:
        return "left"
    if yaw_rate_rps < -thresholds.turn_yaw_rate_rps:
        return "right"
    return "straight"
