"""Ego trajectories of synthetic scenes: a sequence of driving maneuvers integrated into poses.

A scene is a list of maneuver segments of 2-5 s (stop, cruise, accelerate, brake, turn left,
turn right). Each segment sets a target speed and a yaw rate; the speed follows the target
with bounded acceleration and braking, and the yaw rate fades out near standstill because a
car cannot turn on the spot. Conventions are nuScenes': metres in the global frame, yaw about
+z, positive yaw rate = counter-clockwise = left turn, quaternions [w, x, y, z].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STEP_S = 0.005
"""Integration step of the ego dynamics."""
MAX_ACCEL = 2.5
"""Largest speed-up in m/s²."""
MAX_BRAKE = 4.5
"""Hardest braking in m/s²."""
FULL_TURN_SPEED = 2.0
"""Below this speed (m/s) the yaw rate shrinks linearly to zero at standstill."""

MOTION_KINDS = ("stopped", "straight", "left", "right")
"""The four kinds cycled through in every scene, in equal shares; `straight` is one of cruise, accelerate, brake."""


@dataclass(frozen=True)
class Maneuver:
    """One segment of a scene's driving."""

    kind: str
    """stop, cruise, accelerate, brake, left or right."""
    duration_s: float
    """How long the segment lasts."""
    target_speed: float
    """Speed (m/s) the car heads for during the segment."""
    yaw_rate: float
    """Yaw rate (rad/s, + = left) at speeds of FULL_TURN_SPEED and above."""


PHRASES = {
    "stop": "wait at intersection",
    "cruise": "cruise",
    "accelerate": "accelerate",
    "brake": "brake",
    "left": "turn left",
    "right": "turn right",
}
"""Words for a maneuver in a scene description."""


def plan_maneuvers(duration_s: float, start_speed: float, rng: np.random.Generator) -> list[Maneuver]:
    """Maneuvers covering `duration_s`: shuffled rounds of stopped/straight/left/right, so each
    kind gets about a quarter of every scene and consecutive segments differ in kind."""
    maneuvers: list[Maneuver] = []
    elapsed, speed, previous = 0.0, start_speed, ""
    while elapsed < duration_s:
        order = list(rng.permutation(MOTION_KINDS))
        if order[0] == previous:
            order.append(order.pop(0))
        for kind in order:
            maneuver = _maneuver(str(kind), speed, rng)
            maneuvers.append(maneuver)
            elapsed += maneuver.duration_s
            speed, previous = maneuver.target_speed, kind
    return maneuvers


def _maneuver(kind: str, speed: float, rng: np.random.Generator) -> Maneuver:
    # Turns and stops last a little longer than straight driving because the speed changes
    # at their start (braking into a stop, speeding up out of it) read as straight driving.
    if kind == "stopped":
        return Maneuver("stop", float(rng.uniform(3.0, 5.0)) + speed / MAX_BRAKE, 0.0, 0.0)
    if kind in ("left", "right"):
        sign = 1.0 if kind == "left" else -1.0
        duration = float(rng.uniform(3.0, 5.5))
        return Maneuver(kind, duration, float(rng.uniform(4.0, 9.0)), sign * float(rng.uniform(0.2, 0.45)))
    duration = float(rng.uniform(2.0, 4.0))
    straight = str(rng.choice(["cruise", "accelerate", "brake"]))
    if straight == "accelerate" or (straight == "brake" and speed < 6.0):
        return Maneuver("accelerate", duration, float(min(15.0, speed + rng.uniform(4.0, 8.0))), 0.0)
    if straight == "brake":
        return Maneuver("brake", duration, float(max(2.0, speed - rng.uniform(4.0, 8.0))), 0.0)
    return Maneuver("cruise", duration, float(rng.uniform(2.0, 15.0)), 0.0)


@dataclass(frozen=True)
class Trajectory:
    """Ego state sampled every STEP_S from the scene start."""

    times_s: np.ndarray
    """(N,) seconds since the scene start."""
    xy: np.ndarray
    """(N, 2) global position in metres."""
    yaw: np.ndarray
    """(N,) unwrapped yaw in radians."""
    speed: np.ndarray
    """(N,) speed in m/s."""


def integrate(
    maneuvers: list[Maneuver], start_xy: tuple[float, float], start_yaw: float, start_speed: float
) -> Trajectory:
    """Integrate the maneuvers from a start pose and speed (midpoint rule, step STEP_S)."""
    total_s = sum(m.duration_s for m in maneuvers)
    steps = int(np.ceil(total_s / STEP_S)) + 1
    ends = np.cumsum([m.duration_s for m in maneuvers])
    xy = np.empty((steps, 2))
    yaw = np.empty(steps)
    speed = np.empty(steps)
    x, y, heading, v = start_xy[0], start_xy[1], start_yaw, start_speed
    segment = 0
    for step in range(steps):
        xy[step], yaw[step], speed[step] = (x, y), heading, v
        t = step * STEP_S
        while segment < len(maneuvers) - 1 and t >= ends[segment]:
            segment += 1
        maneuver = maneuvers[segment]
        dv = min(max(maneuver.target_speed - v, -MAX_BRAKE * STEP_S), MAX_ACCEL * STEP_S)
        v_next = v + dv
        v_mid = 0.5 * (v + v_next)
        yaw_rate = maneuver.yaw_rate * min(1.0, v_mid / FULL_TURN_SPEED)
        heading_mid = heading + 0.5 * yaw_rate * STEP_S
        x += v_mid * math.cos(heading_mid) * STEP_S
        y += v_mid * math.sin(heading_mid) * STEP_S
        heading += yaw_rate * STEP_S
        v = v_next
    return Trajectory(times_s=np.arange(steps) * STEP_S, xy=xy, yaw=yaw, speed=speed)


def poses_at(trajectory: Trajectory, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poses at arbitrary times, as written to `ego_pose` (rounded: translation to 1 µm, rotation
    to 1e-12), which are also the poses the renderer uses.

    times_s: (N,) -> translation (N, 3) with z = 0, rotation (N, 4) as [w, x, y, z].
    """
    x = np.interp(times_s, trajectory.times_s, trajectory.xy[:, 0])
    y = np.interp(times_s, trajectory.times_s, trajectory.xy[:, 1])
    yaw = np.interp(times_s, trajectory.times_s, trajectory.yaw)
    translation = np.round(np.stack([x, y, np.zeros_like(x)], axis=1), 6) + 0.0
    rotation = np.round(yaw_quaternion(yaw), 12) + 0.0
    return translation, rotation


def yaw_quaternion(yaw: np.ndarray) -> np.ndarray:
    """Rotation about +z as quaternions [w, x, y, z]. yaw: (N,) -> (N, 4)."""
    half = 0.5 * np.asarray(yaw, dtype=np.float64)
    zeros = np.zeros_like(half)
    return np.stack([np.cos(half), zeros, zeros, np.sin(half)], axis=-1)
