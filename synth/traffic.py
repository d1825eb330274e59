"""Other road users of a synthetic scene: vehicles and pedestrians that move on their own.

Nothing here reacts to the ego car. On a street grid (mvm.synth.grid) each side lane of a
street (the ego drives the middle one) is, for the whole scene, either a moving lane (cars,
trucks and buses at the lane's steady speed, straight on through every crossing, on the right
or, in Singapore, on the left) or a queue (cars standing at each stop line); cars park in the
corners of the crossing squares, along the kerb or nose in; pedestrians walk or stand on the
sidewalks. On a lot (mvm.synth.lot) cars stand in the stalls. Every object keeps a constant
velocity on a straight line, so its box at any time is a closed form and the devkit's
interpolation between keyframes is exact.

Objects are placed within REACH_M of the ego's path, then dropped, in a random order, where
they would come too close to the ego car (its box, a safe gap ahead and a margin, at every
lidar tick) or to a moving object kept before them (paths crossing in a square): what remains
never overlaps. How busy a scene is is drawn per scene (some empty, most light to busy) and
scaled by the `density` option (0: no other road users). Sizes are nuScenes' category means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvm.synth.grid import LANE_M, STREET_HALF_M, StreetGrid
from mvm.synth.trajectory import STOP_LINE_M, Trajectory
from mvm.synth.world import ROW_M, STALL_DEPTH_M, lot_half_m, lot_rows

CHECK_S = 0.05
"""Times at which nothing may overlap: the lidar ticks (keyframes are lidar ticks)."""
REACH_M = 80.0
"""Objects are placed within this distance (in both grid directions) of the ego's path."""
LOT_REACH_M = 60.0
"""Parked cars fill a lot's stalls within this distance of the ego's path."""
MARGIN_M = 0.5
"""Every box grows by this on each side in the checks, so objects stay 1 m apart."""
EGO_WIDTH_M, EGO_LENGTH_M, EGO_CENTRE_M = 1.73, 4.08, 1.3
"""The ego car (a Renault Zoe) and how far its box centre sits ahead of the ego pose (rear axle)."""
SAFE_GAP_M = 4.0
"""Nothing comes nearer than this ahead of the ego car."""
SIDEWALK_M = STREET_HALF_M + 0.25
"""Pedestrians walk this far from a street's centre line (buildings stand 1.5 m further out)."""
MOVING_PER_100M = 3.0
"""Vehicles per 100 m of a moving lane at density 1."""
PEDESTRIANS_PER_100M = 3.0
"""Pedestrians per 100 m of sidewalk at density 1."""
SIZES = {
    "vehicle.car": (1.95, 4.62, 1.73),
    "vehicle.truck": (2.51, 6.93, 2.84),
    "vehicle.bus.rigid": (2.95, 11.2, 3.47),
    "human.pedestrian.adult": (0.67, 0.73, 1.77),
}
"""Mean (width, length, height) in metres per category, as in nuScenes."""
MOVING_MIX = {"vehicle.car": 0.82, "vehicle.truck": 0.12, "vehicle.bus.rigid": 0.06}
PARKED_MIX = {"vehicle.car": 0.92, "vehicle.truck": 0.08}
CAR_PAINT = np.array(
    [
        [225, 225, 222],
        [28, 28, 32],
        [175, 178, 182],
        [105, 108, 112],
        [35, 50, 95],
        [150, 28, 30],
        [190, 175, 145],
    ]
)
CAR_PAINT_SHARE = np.array([0.26, 0.2, 0.18, 0.15, 0.08, 0.08, 0.05])
BUS_PAINT = np.array([[200, 40, 35], [235, 235, 230], [40, 110, 60]])


@dataclass(frozen=True)
class Traffic:
    """The other road users of one scene, each with a constant velocity (N objects)."""

    ids: tuple[str, ...]
    """(N,) ids, unique in the scene and stable for a given (seed, scene name, density)."""
    categories: tuple[str, ...]
    """(N,) nuScenes category names (vehicle.car, vehicle.truck, vehicle.bus.rigid, human.pedestrian.adult)."""
    attributes: tuple[str, ...]
    """(N,) nuScenes attribute names (vehicle.moving/stopped/parked, pedestrian.moving/standing)."""
    sizes: np.ndarray
    """(N, 3) float64 width, length, height in metres."""
    colors: np.ndarray
    """(N, 3) float64 RGB (0-255) of each object's faces, before lighting."""
    start_xy: np.ndarray
    """(N, 2) float64 global box centre at scene time 0."""
    velocity: np.ndarray
    """(N, 2) float64 global velocity in m/s."""
    yaw: np.ndarray
    """(N,) float64 heading of each box's length axis (rad, global)."""

    def boxes_at(self, seconds: float) -> np.ndarray:
        """Boxes at scene time `seconds` (the trajectory's time): (N, 7) float64 rows
        [x, y, z_centre, width, length, height, yaw], global frame, standing on z = 0."""
        xy = self.start_xy + seconds * self.velocity
        return np.concatenate([xy, self.sizes[:, 2:] / 2, self.sizes, self.yaw[:, None]], axis=1)

    def ids_at(self, seconds: float) -> list[str]:
        """Ids of the rows of boxes_at(seconds), in the same order (every object exists at all times)."""
        return list(self.ids)


def plan_traffic(
    grid: StreetGrid,
    layout: str,
    trajectory: Trajectory,
    left_hand: bool,
    density: float,
    rng: np.random.Generator,
) -> Traffic:
    """The other road users of a scene with `layout` ("streets" or "lot") around the ego's
    trajectory; `left_hand`: vehicles keep left; density >= 0 scales how many (0: none)."""
    if density < 0:
        raise ValueError(f"traffic density must be >= 0, got {density}")
    density *= _busyness(rng)
    times = np.arange(0.0, trajectory.times_s[-1] + 1e-9, CHECK_S)
    ego_uv = grid.uv_of(
        np.stack([np.interp(times, trajectory.times_s, trajectory.xy[:, i]) for i in (0, 1)], 1)
    )
    ego_heading = np.interp(times, trajectory.times_s, trajectory.yaw) - grid.rotation
    found = _Found()
    if density > 0 and layout == "lot":
        _lot(grid, trajectory, ego_uv, density, rng, found)
    elif density > 0:
        _streets(grid, ego_uv, times[-1], left_hand, density, rng, found)
    keep = _resolve(found, times, ego_uv, ego_heading, rng)
    uv, velocity = np.array(found.uv).reshape(-1, 2)[keep], np.array(found.velocity).reshape(-1, 2)[keep]
    return Traffic(
        ids=tuple(f"{index:04d}" for index in range(len(keep))),
        categories=tuple(found.categories[i] for i in keep),
        attributes=tuple(found.attributes[i] for i in keep),
        sizes=np.round(np.array(found.sizes).reshape(-1, 3)[keep], 3),
        colors=np.array(found.colors).reshape(-1, 3)[keep],
        start_xy=grid.xy_of(uv),
        velocity=grid.xy_of(velocity) - np.array(grid.origin),
        yaw=np.angle(np.exp(1j * (np.array(found.headings)[keep] + grid.rotation))),
    )


def _busyness(rng: np.random.Generator) -> float:
    """How busy a scene is at density 1: a tenth empty, a tenth nearly, the rest light to busy."""
    roll = rng.random()
    if roll < 0.1:
        return 0.0
    return float(rng.uniform(0.05, 0.25)) if roll < 0.2 else float(rng.uniform(0.4, 1.6))


class _Found:
    """Candidate objects in grid coordinates (u, v along grid directions 0 and 1), before the
    overlap checks. `line` > 0 groups vehicles placed in one file at one velocity, which never
    overlap; `free` marks objects placed on their own (pedestrians), checked against all others."""

    def __init__(self):
        self.categories, self.attributes, self.sizes, self.colors = [], [], [], []
        self.uv, self.velocity, self.headings, self.lines, self.free = [], [], [], [], []

    def add(
        self, category: str, attribute: str, size, uv, heading: float, speed: float, line: int, rng
    ) -> None:
        self.categories.append(category)
        self.attributes.append(attribute)
        self.sizes.append(size)
        self.colors.append(_paint(category, rng))
        self.uv.append(uv)
        self.velocity.append((speed * math.cos(heading), speed * math.sin(heading)))
        self.headings.append(heading)
        self.lines.append(line)
        self.free.append(category.startswith("human."))


def _size(category: str, rng: np.random.Generator) -> np.ndarray:
    """(width, length, height) of one object: the category mean, a little larger or smaller."""
    return np.array(SIZES[category]) * rng.uniform([0.92, 0.9, 0.9], [1.04, 1.04, 1.08])


def _paint(category: str, rng: np.random.Generator) -> np.ndarray:
    if category == "human.pedestrian.adult":
        return rng.uniform(25.0, 180.0, 3)
    if category == "vehicle.bus.rigid":
        base = BUS_PAINT[rng.integers(len(BUS_PAINT))]
    else:
        base = CAR_PAINT[rng.choice(len(CAR_PAINT), p=CAR_PAINT_SHARE)]
    return np.clip(base + rng.normal(0.0, 6.0, 3), 0.0, 255.0)


def _pick(mix: dict[str, float], rng: np.random.Generator) -> str:
    return str(rng.choice(list(mix), p=list(mix.values())))


def _at(axis: int, along: float, across: float) -> tuple[float, float]:
    """Grid point `along` metres in grid direction `axis` and `across` in the other."""
    return (along, across) if axis == 0 else (across, along)


def _streets(grid, ego_uv, duration, left_hand, density, rng, found: _Found) -> None:
    """Moving lanes, queues, parking in the squares' corners and pedestrians around the route."""
    low, high = ego_uv.min(axis=0) - REACH_M, ego_uv.max(axis=0) + REACH_M
    spacing, half = grid.spacing_m, grid.crossing_half_m
    nodes = [range(math.ceil(low[a] / spacing), math.floor(high[a] / spacing) + 1) for a in (0, 1)]
    line = 0
    for axis in (0, 1):
        for k in nodes[1 - axis]:
            for side in (-1.0, 1.0):
                line += 1
                # The lane's travel direction has the lane on its right (left where traffic keeps left).
                sign = (-side if axis == 0 else side) * (-1.0 if left_hand else 1.0)
                heading = (0.0 if sign > 0 else math.pi) + axis * math.pi / 2
                across = k * spacing + side * LANE_M
                if rng.random() < 0.75:
                    speed = float(rng.uniform(6.0, 12.0))
                    span = (
                        (low[axis] - speed * duration, high[axis])
                        if sign > 0
                        else (low[axis], high[axis] + speed * duration)
                    )
                    _moving_lane(axis, across, span, sign, heading, speed, density, line, rng, found)
                else:
                    for i in nodes[axis]:
                        stop = i * spacing - sign * (half + STOP_LINE_M)
                        room = spacing - 2 * half - STOP_LINE_M - 0.5  # back to the previous square
                        _queue(axis, across, stop, sign, heading, room, density, rng, found)
                _sidewalk(axis, k * spacing + side * SIDEWALK_M, (low[axis], high[axis]), density, rng, found)
    occupancy = min(0.9, 0.55 * density)
    for i in nodes[0]:
        for j in nodes[1]:
            for corner_u in (-1.0, 1.0):
                for corner_v in (-1.0, 1.0):
                    _corner_parking(
                        grid, (i * spacing, j * spacing), (corner_u, corner_v), occupancy, rng, found
                    )


def _moving_lane(axis, across, span, sign, heading, speed, density, line, rng, found: _Found) -> None:
    """Vehicles in file along a lane, at least 3 m apart (bumper to bumper), all at `speed`."""
    gap = 100.0 / (MOVING_PER_100M * density)
    along, previous = span[0] + float(rng.uniform(0.0, gap)), None
    while True:
        category = _pick(MOVING_MIX, rng)
        size = _size(category, rng)
        if previous is not None:
            along = max(along, previous + size[1] / 2 + 3.0)
        if along > span[1]:
            return
        found.add(category, "vehicle.moving", size, _at(axis, along, across), heading, speed, line, rng)
        previous = along + size[1] / 2
        along += float(rng.exponential(gap))


def _queue(axis, across, stop, sign, heading, room, density, rng, found: _Found) -> None:
    """Cars standing in file behind the stop line `stop` (their fronts), within `room` metres."""
    front = 0.0
    for _ in range(int(rng.poisson(1.5 * density))):
        category = _pick(PARKED_MIX, rng)
        size = _size(category, rng)
        if front + size[1] > room:
            return
        centre = stop - sign * (front + size[1] / 2)
        found.add(category, "vehicle.stopped", size, _at(axis, centre, across), heading, 0.0, 0, rng)
        front += size[1] + float(rng.uniform(1.5, 3.0))


def _sidewalk(axis, across, span, density, rng, found: _Found) -> None:
    """Pedestrians walking either way (a fifth standing) along a sidewalk."""
    for _ in range(int(rng.poisson(PEDESTRIANS_PER_100M * density * (span[1] - span[0]) / 100.0))):
        along = float(rng.uniform(*span))
        standing = rng.random() < 0.2
        speed = 0.0 if standing else float(rng.uniform(0.9, 1.6))
        heading = (0.0 if rng.random() < 0.5 else math.pi) + axis * math.pi / 2
        category = "human.pedestrian.adult"
        attribute = "pedestrian.standing" if standing else "pedestrian.moving"
        found.add(category, attribute, _size(category, rng), _at(axis, along, across), heading, speed, 0, rng)


def _corner_parking(grid, node_uv, corner, occupancy, rng, found: _Found) -> None:
    """Parked cars in one corner of a crossing square (beyond the sidewalks, outside every lane),
    along one of its two outer edges: parallel to the kerb or nose in."""
    half = grid.crossing_half_m
    axis = int(rng.integers(2))  # the edge runs along this grid direction
    sign_along, sign_across = (corner[0], corner[1]) if axis == 0 else (corner[1], corner[0])
    along0 = node_uv[axis] + sign_along * (SIDEWALK_M + 1.0)  # the corner's inner end
    length = half - SIDEWALK_M - 1.5
    nose_in = rng.random() < 0.5
    position = 0.0
    while True:
        category = "vehicle.car" if nose_in else _pick(PARKED_MIX, rng)
        size = _size(category, rng)
        extent = size[0] if nose_in else size[1]
        if position + extent > length:
            return
        depth = size[1] if nose_in else size[0]
        across = node_uv[1 - axis] + sign_across * (half - 0.3 - depth / 2)
        along = along0 + sign_along * (position + extent / 2)
        heading = axis * math.pi / 2 + (math.pi / 2 if nose_in else 0.0) + math.pi * float(rng.random() < 0.5)
        if rng.random() < occupancy:
            found.add(category, "vehicle.parked", size, _at(axis, along, across), heading, 0.0, 0, rng)
        position += extent + (0.7 if nose_in else 1.2)


def _lot(grid, trajectory, ego_uv, density, rng, found: _Found) -> None:
    """Cars parked in the lot's stalls within LOT_REACH_M of the ego's path, nose in or out."""
    rows, stall_lines = lot_rows(lot_half_m(grid, trajectory.xy))
    centres_u = (stall_lines[1:] + stall_lines[:-1]) / 2
    path = ego_uv[:: max(1, len(ego_uv) // 200)]
    occupancy = min(0.6, 0.2 * density)
    for v_row in rows:
        if np.min(np.abs(path[:, 1] - v_row)) > LOT_REACH_M + ROW_M:
            continue
        near = centres_u[(np.abs(centres_u - path[:, :1]) < LOT_REACH_M).any(axis=0)]
        for offset in (-1.0, 1.0):
            v = v_row + offset * (0.5 + STALL_DEPTH_M / 2)
            for u in near.tolist():
                if (
                    rng.random() >= occupancy
                    or np.min(np.hypot(path[:, 0] - u, path[:, 1] - v)) > LOT_REACH_M
                ):
                    continue
                heading = math.pi / 2 + math.pi * float(rng.random() < 0.5)
                found.add(
                    "vehicle.car", "vehicle.parked", _size("vehicle.car", rng), (u, v), heading, 0.0, 0, rng
                )


def overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether ground rectangles overlap (separating axes): a, b (..., 5) rows
    [x, y, width, length, yaw], broadcast against each other -> (...) bool."""
    d = b[..., :2] - a[..., :2]
    separated = np.zeros(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]), dtype=bool)
    for angle in (a[..., 4], a[..., 4] + np.pi / 2, b[..., 4], b[..., 4] + np.pi / 2):
        reach = [
            box[..., 3] / 2 * np.abs(np.cos(angle - box[..., 4]))
            + box[..., 2] / 2 * np.abs(np.sin(angle - box[..., 4]))
            for box in (a, b)
        ]
        separated |= np.abs(d[..., 0] * np.cos(angle) + d[..., 1] * np.sin(angle)) > reach[0] + reach[1]
    return ~separated


def _resolve(found: _Found, times, ego_uv, ego_heading, rng) -> np.ndarray:
    """Indices (K,) of the candidates kept, increasing: none comes near the ego car at any time
    (T,), and of candidates that could meet (moving ones), the earlier in a random order wins."""
    count = len(found.uv)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    uv, velocity = np.array(found.uv), np.array(found.velocity)
    sizes = np.array(found.sizes)[:, :2] + 2 * MARGIN_M
    heading = np.array(found.headings)
    forward = np.stack([np.cos(ego_heading), np.sin(ego_heading)], axis=1)
    ego = np.concatenate(
        [
            ego_uv + (EGO_CENTRE_M + SAFE_GAP_M / 2) * forward,
            np.tile([EGO_WIDTH_M, EGO_LENGTH_M + SAFE_GAP_M], (len(times), 1)),
            ego_heading[:, None],
        ],
        axis=1,
    )
    radius = np.hypot(*sizes.T) / 2
    ego_radius = math.hypot(EGO_WIDTH_M, EGO_LENGTH_M + SAFE_GAP_M) / 2
    centres = uv[:, None] + velocity[:, None] * times[None, :, None]  # (N, T, 2)
    near = np.linalg.norm(centres - ego[None, :, :2], axis=2) < radius[:, None] + ego_radius
    blocked = np.zeros(count, dtype=bool)
    rows, steps = np.nonzero(near)
    if len(rows):
        box = np.concatenate([centres[rows, steps], sizes[rows], heading[rows, None]], axis=1)
        np.logical_or.at(blocked, rows, overlaps(box, ego[steps]))
    lines, free = np.array(found.lines), np.array(found.free)
    conflicts = _moving_conflicts(uv, velocity, sizes, heading, radius, lines, free, times)
    kept = np.zeros(count, dtype=bool)
    for index in rng.permutation(count).tolist():
        if not blocked[index] and not any(kept[other] for other in conflicts.get(index, ())):
            kept[index] = True
    return np.flatnonzero(kept)


def _moving_conflicts(uv, velocity, sizes, heading, radius, lines, free, times) -> dict[int, list[int]]:
    """Pairs of candidates whose boxes overlap at some time (T,), where one moves or was placed
    freely (vehicles standing still were placed apart; a file of vehicles at one velocity too)."""
    moving = np.flatnonzero(np.any(velocity != 0, axis=1) | free)
    # When the bounding circles overlap, relative motion being linear: |dp + dv t| < r, a quadratic in t.
    delta_p = uv[None, :] - uv[moving, None]  # (M, N, 2)
    delta_v = velocity[None, :] - velocity[moving, None]
    a = np.einsum("mnk,mnk->mn", delta_v, delta_v)
    b = np.einsum("mnk,mnk->mn", delta_p, delta_v)
    c = np.einsum("mnk,mnk->mn", delta_p, delta_p) - (radius[moving, None] + radius[None, :]) ** 2
    root = np.sqrt(np.maximum(b * b - a * c, 0.0))
    still = a == 0
    enter = np.where(still, 0.0, (-b - root) / np.where(still, 1.0, a))
    leave = np.where(still, np.where(c < 0, times[-1], -1.0), (-b + root) / np.where(still, 1.0, a))
    first_step = np.ceil(np.maximum(enter, 0.0) / CHECK_S - 1e-9).astype(np.int64)
    last_step = np.floor(np.minimum(leave, times[-1]) / CHECK_S + 1e-9).astype(np.int64)
    close = (b * b >= a * c) & (last_step >= first_step)
    close &= moving[:, None] != np.arange(len(uv))[None, :]
    close &= ~((lines[moving, None] == lines[None, :]) & (lines[None, :] > 0) & still)
    rows, second = np.nonzero(close)
    first = moving[rows]
    # Every (pair, tick) with overlapping circles, flattened.
    counts = last_step[rows, second] - first_step[rows, second] + 1
    pair = np.repeat(np.arange(len(first)), counts)
    step = (
        first_step[rows, second][pair] + np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts)
    )
    t = times[np.minimum(step, len(times) - 1)][:, None]

    def boxes(index: np.ndarray) -> np.ndarray:
        return np.concatenate([uv[index] + velocity[index] * t, sizes[index], heading[index, None]], axis=1)

    meet = np.zeros(len(first), dtype=bool)
    np.logical_or.at(meet, pair, overlaps(boxes(first[pair]), boxes(second[pair])))
    conflicts: dict[int, list[int]] = {}
    for one, other in zip(first[meet].tolist(), second[meet].tolist(), strict=True):
        conflicts.setdefault(one, []).append(other)
        conflicts.setdefault(other, []).append(one)
    return conflicts
