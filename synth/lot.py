"""Free driving on an open paved lot: the second kind of synthetic scene, next to the street grid.

A lot is a large paved square with painted parking rows, lamp posts on a regular grid and
buildings along its far edges; nothing in it marks a path, so the car's turns there can only be
seen from the motion. The driving is a list of maneuver segments of 2-5 s (stop, cruise,
accelerate, brake, turn left, turn right) in shuffled rounds, so each motion kind gets about a
quarter of the scene; each segment sets a target speed and a yaw rate, the speed follows the
target with bounded acceleration and braking, and the yaw rate fades out near standstill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvm.synth.trajectory import MAX_ACCEL, MAX_BRAKE, STEP_S, Trajectory

FULL_TURN_SPEED = 2.0
"""Below this speed (m/s) the yaw rate shrinks linearly to zero at standstill."""
MAX_LOT_SPEED = 10.0
"""Fastest driving on a lot (m/s); the lot reaches farther than a scene can drive at it."""
MOTION_KINDS = ("stopped", "straight", "left", "right")


@dataclass(frozen=True)
class Segment:
    """One stretch of driving on a lot."""

    duration_s: float
    target_speed: float
    """Speed (m/s) the car heads for."""
    yaw_rate: float
    """Yaw rate (rad/s, + = left) at FULL_TURN_SPEED and above."""


def plan_segments(duration_s: float, start_speed: float, rng: np.random.Generator) -> list[Segment]:
    """Segments covering `duration_s`: shuffled rounds of stopped/straight/left/right."""
    segments: list[Segment] = []
    elapsed, speed, previous = 0.0, start_speed, ""
    while elapsed < duration_s:
        order = [str(kind) for kind in rng.permutation(MOTION_KINDS)]
        if order[0] == previous:
            order.append(order.pop(0))
        for kind in order:
            segment = _segment(kind, speed, rng)
            segments.append(segment)
            elapsed += segment.duration_s
            speed, previous = segment.target_speed, kind
    return segments


def _segment(kind: str, speed: float, rng: np.random.Generator) -> Segment:
    # Turns and stops last a little longer than straight driving because the speed changes
    # at their start (braking into a stop, speeding up out of it) read as straight driving.
    if kind == "stopped":
        return Segment(float(rng.uniform(3.0, 5.0)) + speed / MAX_BRAKE, 0.0, 0.0)
    if kind in ("left", "right"):
        sign = 1.0 if kind == "left" else -1.0
        return Segment(
            float(rng.uniform(3.0, 5.5)), float(rng.uniform(2.5, 8.0)), sign * float(rng.uniform(0.2, 0.45))
        )
    return Segment(float(rng.uniform(2.0, 4.0)), float(rng.uniform(2.0, MAX_LOT_SPEED)), 0.0)


def integrate(
    segments: list[Segment], start_xy: tuple[float, float], start_yaw: float, start_speed: float
) -> Trajectory:
    """Integrate the segments from a start pose and speed (midpoint rule, step STEP_S)."""
    total_s = sum(s.duration_s for s in segments)
    steps = int(np.ceil(total_s / STEP_S)) + 1
    ends = np.cumsum([s.duration_s for s in segments])
    xy = np.empty((steps, 2))
    yaw = np.empty(steps)
    speed = np.empty(steps)
    x, y, heading, v = start_xy[0], start_xy[1], start_yaw, start_speed
    index = 0
    for step in range(steps):
        xy[step], yaw[step], speed[step] = (x, y), heading, v
        while index < len(segments) - 1 and step * STEP_S >= ends[index]:
            index += 1
        segment = segments[index]
        dv = min(max(segment.target_speed - v, -MAX_BRAKE * STEP_S), MAX_ACCEL * STEP_S)
        v_next = v + dv
        v_mid = 0.5 * (v + v_next)
        yaw_rate = segment.yaw_rate * min(1.0, v_mid / FULL_TURN_SPEED)
        heading_mid = heading + 0.5 * yaw_rate * STEP_S
        x += v_mid * math.cos(heading_mid) * STEP_S
        y += v_mid * math.sin(heading_mid) * STEP_S
        heading += yaw_rate * STEP_S
        v = v_next
    return Trajectory(times_s=np.arange(steps) * STEP_S, xy=xy, yaw=yaw, speed=speed)
