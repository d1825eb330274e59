"""Ego trajectories of synthetic scenes: a route through the street grid, driven with a speed plan.

The route is planned in space first, on the scene's StreetGrid (mvm.synth.grid): straight
along street centrelines, and at each crossing straight on or a 90° turn on an arc inside the
crossing's paved square. Turning is a choice made at a crossing that looks the same in all four
directions, so nothing ahead of the car announces it; turns alternate in direction and a scene
opens at (or in) its first turn, so both directions are common in every scene. Then a speed plan drives the route: a
cruise speed per street, a turning speed per arc (sometimes a crawl), and stops: at the stop line
before a crossing, in the middle of a turn (standing on a curve), or mid-block. The speed follows
its limits with bounded acceleration and braking, braking ahead of time for slower limits and
stops; the yaw follows the route, so yaw rate = speed x curvature (zero when standing still).
Conventions are nuScenes': metres in the global frame, yaw about +z, positive yaw rate =
counter-clockwise = left turn, quaternions [w, x, y, z].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvm.synth.grid import StreetGrid

STEP_S = 0.005
"""Integration step of the ego dynamics."""
MAX_ACCEL = 2.5
"""Largest speed-up in m/s²."""
PLAN_BRAKE = 2.0
"""Braking (m/s²) the driver plans with when slowing for a turn or a stop."""
MAX_BRAKE = 4.5
"""Hardest braking in m/s² (the speed limits are met with PLAN_BRAKE, so this rarely binds)."""
TURN_SHARE = 0.85
"""Chance that the car turns at a crossing (alternately left and right); otherwise it goes straight on."""
TURNING_RPS = 0.02
"""Yaw rate (rad/s) above which a stretch of driving counts as a turn in the scene description."""
STOP_LINE_M = 2.0
"""Stops before a crossing are this far before the crossing's paved square."""


@dataclass(frozen=True)
class Piece:
    """A stretch of the route: a straight line (curvature 0) or a circular arc."""

    start_xy: tuple[float, float]
    """Global position (m) where the piece starts."""
    start_yaw: float
    """Heading (rad) at the start."""
    length: float
    """Arc length in metres."""
    curvature: float
    """1/radius in 1/m, + = left; 0 for a straight."""
    speed_limit: float
    """Speed (m/s) the car drives at on this piece when nothing slower is ahead."""


@dataclass(frozen=True)
class Stop:
    """A halt at a point of the route."""

    at_m: float
    """Route distance (m) of the halt."""
    wait_s: float
    """How long the car stands."""


@dataclass(frozen=True)
class Maneuver:
    """One stretch of a scene's driving in time, as read off the driven trajectory."""

    kind: str
    """stop, cruise, accelerate, brake, left or right."""
    start_s: float
    """Scene time (s) the stretch begins."""
    duration_s: float
    """How long it lasts."""


PHRASES = {
    "stop": "wait at intersection",
    "cruise": "cruise",
    "accelerate": "accelerate",
    "brake": "brake",
    "left": "turn left",
    "right": "turn right",
}
"""Words for a maneuver in a scene description."""


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


def piece_pose(piece: Piece, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (N, 2) and headings (N,) at distances (N,) from the start of a piece."""
    distance = np.asarray(distance, dtype=np.float64)
    x0, y0 = piece.start_xy
    yaw0, k = piece.start_yaw, piece.curvature
    if k == 0.0:
        xy = np.stack([x0 + distance * math.cos(yaw0), y0 + distance * math.sin(yaw0)], axis=-1)
        return xy, np.full_like(distance, yaw0)
    yaw = yaw0 + k * distance
    xy = np.stack([x0 + (np.sin(yaw) - math.sin(yaw0)) / k, y0 - (np.cos(yaw) - math.cos(yaw0)) / k], axis=-1)
    return xy, yaw


def _end_of(piece: Piece) -> tuple[tuple[float, float], float]:
    xy, yaw = piece_pose(piece, np.array([piece.length]))
    return (float(xy[0, 0]), float(xy[0, 1])), float(yaw[0])


def plan_route(
    grid: StreetGrid, length_m: float, rng: np.random.Generator
) -> tuple[list[Piece], list[Stop], float, float]:
    """A route through the grid, its stops, where on it the scene starts (m) and the car's start
    speed; at least `length_m` of route lie after the start.

    The route begins on a street centreline before a crossing where the car turns; the scene
    starts shortly before or inside that first turn, so even a short scene sees two turns. At
    every later crossing the car turns (each way TURN_SHARE / 2) or goes straight on.
    """
    node = np.array([int(rng.integers(-1, 2)), int(rng.integers(-1, 2))])
    direction = int(rng.integers(0, 4))  # heading = grid.rotation + direction · 90°
    crossing_half = grid.crossing_half_m
    # The route starts on the street before the first crossing.
    distance_before = float(rng.uniform(crossing_half + STOP_LINE_M + 3.0, crossing_half + 20.0))
    pieces: list[Piece] = []
    stops: list[Stop] = []
    travelled = 0.0
    xy = grid.node_xy(node) - distance_before * grid.direction_xy(direction)
    yaw = grid.heading(direction)
    cruise = _cruise_speed(rng)
    start_speed = float(rng.uniform(0.0, cruise))
    turn = str(rng.choice(["left", "right"]))
    start_m = None
    while start_m is None or travelled < start_m + length_m:
        if start_m is None:
            action = turn  # the first crossing always has a turn
        elif rng.random() < TURN_SHARE:
            # Turns alternate in direction, so every scene with two turns has both.
            action = turn = "right" if turn == "left" else "left"
        else:
            action = "straight"
        centre = grid.node_xy(node)
        radius = float(rng.uniform(grid.min_turn_radius_m, grid.max_turn_radius_m))
        to_centre = float(np.dot(centre - xy, grid.direction_xy(direction)))
        straight_length = to_centre - (radius if action != "straight" else 0.0)
        straight = Piece((float(xy[0]), float(xy[1])), yaw, straight_length, 0.0, cruise)
        stop_roll = rng.random()
        if stop_roll < 0.3:
            at = travelled + to_centre - crossing_half - STOP_LINE_M
            stops.append(Stop(at, float(rng.uniform(2.0, 4.0))))
        elif stop_roll < 0.35:
            at = travelled + float(rng.uniform(0.2, 0.8)) * max(to_centre - crossing_half - STOP_LINE_M, 1.0)
            stops.append(Stop(at, float(rng.uniform(1.0, 3.0))))
        pieces.append(straight)
        travelled += straight_length
        xy = np.array(_end_of(straight)[0])
        if action == "straight":
            node = node + grid.direction_steps(direction)
            cruise = _cruise_speed(rng)
            continue
        sign = 1.0 if action == "left" else -1.0
        # Mostly 2-4 m/s (yaw rate 0.2-0.6 rad/s); sometimes a crawl, labelled stopped or straight.
        turn_speed = float(rng.uniform(0.4, 1.0)) if rng.random() < 0.1 else float(rng.uniform(2.0, 4.0))
        arc = Piece((float(xy[0]), float(xy[1])), yaw, radius * math.pi / 2, sign / radius, turn_speed)
        if rng.random() < 0.3:
            # Standing on the curve (waiting for pedestrians): a turned view without yaw rate.
            stops.append(
                Stop(travelled + float(rng.uniform(0.25, 0.75)) * arc.length, float(rng.uniform(1.0, 3.5)))
            )
        pieces.append(arc)
        if start_m is None:
            start_m = max(0.0, travelled + float(rng.uniform(-8.0 / arc.length, 0.8)) * arc.length)
        travelled += arc.length
        xy = np.array(_end_of(arc)[0])
        # The exact quarter turn, so rounding never accumulates along the route.
        yaw = arc.start_yaw + sign * math.pi / 2
        direction = (direction + (1 if action == "left" else 3)) % 4
        node = node + grid.direction_steps(direction)
        cruise = _cruise_speed(rng)
    return pieces, [stop for stop in stops if stop.at_m > start_m + 0.5], start_m, start_speed


def _cruise_speed(rng: np.random.Generator) -> float:
    return float(rng.uniform(4.0, 8.0))


def drive(
    pieces: list[Piece], stops: list[Stop], start_m: float, start_speed: float, duration_s: float
) -> Trajectory:
    """Drive the route for `duration_s` from route distance `start_m` at `start_speed` (Euler
    steps of STEP_S).

    The speed heads for the current piece's limit, but never above what allows braking at
    PLAN_BRAKE to every slower limit and stop ahead; at a stop the car stands for its wait.
    """
    starts = np.concatenate([[0.0], np.cumsum([p.length for p in pieces])])
    limits = [(float(starts[i]), p.speed_limit) for i, p in enumerate(pieces)]
    steps = int(np.ceil(duration_s / STEP_S)) + 1
    position = np.empty(steps)
    speed = np.empty(steps)
    s = start_m
    v = min(start_speed, _allowed(s, limits, stops[:1], pieces, starts))
    next_stop, waited = 0, 0.0
    for step in range(steps):
        position[step], speed[step] = s, v
        if next_stop < len(stops) and abs(s - stops[next_stop].at_m) < 1e-9:
            waited += STEP_S
            if waited >= stops[next_stop].wait_s:
                next_stop, waited = next_stop + 1, 0.0
            continue
        target = _allowed(s, limits, stops[next_stop : next_stop + 1], pieces, starts)
        v_next = v + min(max(target - v, -MAX_BRAKE * STEP_S), MAX_ACCEL * STEP_S)
        ds = 0.5 * (v + v_next) * STEP_S
        if next_stop < len(stops) and s + ds >= stops[next_stop].at_m - 0.01:
            s, v = stops[next_stop].at_m, 0.0  # the last centimetre: stand exactly at the stop
            continue
        s, v = s + ds, max(v_next, 0.0)
    xy, yaw = route_poses(pieces, starts, position)
    return Trajectory(times_s=np.arange(steps) * STEP_S, xy=xy, yaw=yaw, speed=speed)


def _allowed(s: float, limits, stops: list[Stop], pieces: list[Piece], starts: np.ndarray) -> float:
    """Highest speed at route distance s that still meets every limit and stop ahead."""
    index = min(int(np.searchsorted(starts, s, side="right")) - 1, len(pieces) - 1)
    allowed = pieces[index].speed_limit
    for start, limit in limits[index + 1 : index + 4]:
        allowed = min(allowed, math.sqrt(limit * limit + 2 * PLAN_BRAKE * max(start - s, 0.0)))
    for stop in stops:
        allowed = min(allowed, math.sqrt(2 * PLAN_BRAKE * max(stop.at_m - s, 0.0)) + 0.3)
    return allowed


def route_poses(
    pieces: list[Piece], starts: np.ndarray, distance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (N, 2) and unwrapped headings (N,) at route distances (N,)."""
    index = np.clip(np.searchsorted(starts, distance, side="right") - 1, 0, len(pieces) - 1)
    xy = np.empty((len(distance), 2))
    yaw = np.empty(len(distance))
    for i in np.unique(index):
        rows = index == i
        xy[rows], yaw[rows] = piece_pose(pieces[i], distance[rows] - starts[i])
    return xy, yaw


def maneuvers_of(trajectory: Trajectory) -> list[Maneuver]:
    """The driving in time, read off the trajectory: stop (standing), left/right (turning faster
    than TURNING_RPS), else accelerate, brake or cruise (speed change over 1 s above 0.5 m/s or
    not). Stretches shorter than 0.5 s join the stretch before them."""
    yaw_rate = np.gradient(trajectory.yaw, STEP_S)
    window = int(round(0.5 / STEP_S))
    speed = trajectory.speed
    change = np.concatenate([speed[window:], np.repeat(speed[-1], window)])
    change -= np.concatenate([np.repeat(speed[0], window), speed[:-window]])
    per_step = np.where(change > 0.5, "accelerate", np.where(change < -0.5, "brake", "cruise")).astype(object)
    per_step[yaw_rate > TURNING_RPS] = "left"
    per_step[yaw_rate < -TURNING_RPS] = "right"
    per_step[speed == 0.0] = "stop"
    maneuvers: list[Maneuver] = []
    boundaries = np.flatnonzero(per_step[1:] != per_step[:-1]) + 1
    for begin, end in zip(
        np.concatenate([[0], boundaries]), np.concatenate([boundaries, [len(per_step)]]), strict=True
    ):
        kind, start_s, duration_s = str(per_step[begin]), begin * STEP_S, (end - begin) * STEP_S
        if maneuvers and (duration_s < 0.5 or maneuvers[-1].kind == kind):
            last = maneuvers.pop()
            maneuvers.append(Maneuver(last.kind, last.start_s, last.duration_s + duration_s))
        else:
            maneuvers.append(Maneuver(kind, start_s, duration_s))
    return maneuvers


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
