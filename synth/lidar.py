"""LIDAR_TOP sweeps of a synthetic World by ray casting, in nuScenes' point cloud layout.

The sensor is modelled on nuScenes' Velodyne HDL-32E: 32 beams from -30.67° to +10.67°
elevation, 1.33° apart, fired every AZIMUTH_STEP over a full turn, returns out to RANGE_M, a few
percent of the returns dropped. Every ray starts at the sensor origin (the sweep is taken from one
pose: no rolling-shutter smear) and its point is the nearest hit among the ground plane z = 0,
the world's object faces, its tree crowns and the traffic boxes. Ranges carry no noise, so flat
ground comes back exactly where the geometry puts it.

Ray casting stays cheap because the rays form a (beam, azimuth) grid in the sensor frame: each
primitive (a face, a crown, a ground quad) is only tested against the rays inside its azimuth and
elevation window as seen in that frame, so the work follows the primitives' angular size, not
rays x primitives.
"""

from __future__ import annotations

import numpy as np

from mvm.synth.camera import (
    LIDAR_TOP_ROTATION,
    LIDAR_TOP_TRANSLATION,
    quaternion_matrix,
    quaternion_product,
)
from mvm.synth.world import World, box_faces

BEAM_ELEVATIONS = np.deg2rad(np.linspace(-30.67, 10.67, 32))
"""(32,) beam elevations in the sensor frame, lowest first; ring index = position here."""
AZIMUTH_STEPS = 1090
"""Firings per turn: about 0.33° apart, like the HDL-32E at 20 Hz."""
AZIMUTH_STEP = 2 * np.pi / AZIMUTH_STEPS
RANGE_M = 70.0
"""Farthest return."""
DROPOUT = 0.03
"""Share of returns lost (absorbed, specular or too weak)."""
ASPHALT, GRASS, MARKING, FOLIAGE, VEHICLE = 6.0, 18.0, 80.0, 25.0, 40.0
"""Intensity (nuScenes' 0-255 scale) of each material at normal incidence; walls, poles and
trunks range from 10 (dark) to 40 (light) by the luminance of their colour."""
BOX_MARGIN_M = 0.02
"""points_in_boxes grows boxes by this: ray-cast hits lie exactly on a box's surface, and a sweep
stored as float32 moves them by up to about 1e-5 m either way."""
_GROUND, _FACE, _CROWN = 0, 1, 2
_RAYS = np.stack(
    [
        np.cos(BEAM_ELEVATIONS)[:, None] * np.cos(np.arange(AZIMUTH_STEPS) * AZIMUTH_STEP),
        np.cos(BEAM_ELEVATIONS)[:, None] * np.sin(np.arange(AZIMUTH_STEPS) * AZIMUTH_STEP),
        np.repeat(np.sin(BEAM_ELEVATIONS)[:, None], AZIMUTH_STEPS, axis=1),
    ],
    axis=-1,
).reshape(-1, 3)
"""(32 * AZIMUTH_STEPS, 3) unit ray directions in the sensor frame; ray index = beam * AZIMUTH_STEPS + column."""


def cast_sweep(
    world: World,
    boxes: np.ndarray,
    sensor_translation: np.ndarray,
    sensor_rotation: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One LIDAR_TOP sweep: (P, 5) float32 points x y z intensity ring in the sensor frame.

    world: the static scene; boxes: (N, 7) traffic boxes [x, y, z_centre, width, length, height,
    yaw] in the global frame; sensor_translation (3,) and sensor_rotation (4,) wxyz quaternion:
    the sensor pose in the global frame (sensor x, y, z -> global). rng draws the dropouts and
    the intensity noise. Rays that hit nothing within RANGE_M (sky) give no point.
    """
    origin = np.asarray(sensor_translation, dtype=np.float64)
    rotation = quaternion_matrix(sensor_rotation)
    rays = _RAYS @ rotation.T

    reach = np.full(len(rays), np.inf)
    kind = np.full(len(rays), -1)
    owner = np.zeros(len(rays), dtype=np.int64)
    down = rays[:, 2] < 0
    reach[down] = -origin[2] / rays[down, 2]
    kind[down] = _GROUND

    quads, normals, face_intensity = _faces(world, boxes, origin)
    pair_face, pair_ray = _pairs(*_quad_windows((quads - origin) @ rotation))
    t_face = _hit_quads(quads[pair_face], rays[pair_ray], origin)
    _keep_nearest(reach, kind, owner, pair_ray, t_face, pair_face, _FACE)
    crowns = world.crowns[
        _near_circles(world.crowns[:, :2], world.crowns[:, 3], origin, world.crowns[:, 3] > 0)
    ]
    pair_crown, pair_ray = _pairs(*_sphere_windows(crowns, origin, rotation))
    t_crown = _hit_spheres(crowns[pair_crown], rays[pair_ray], origin)
    _keep_nearest(reach, kind, owner, pair_ray, t_crown, pair_crown, _CROWN)

    keep = (reach <= RANGE_M) & (rng.random(len(rays)) >= DROPOUT)
    index = np.flatnonzero(keep)
    points = origin + reach[index, None] * rays[index]
    intensity = np.empty(len(index))
    is_ground = kind[index] == _GROUND
    intensity[is_ground] = _ground_material(world, points[is_ground], index[is_ground], origin, rotation)
    # Incidence: a surface seen edge-on returns less light than one seen square-on.
    incidence = np.abs(rays[index, 2])
    on_face = kind[index] == _FACE
    intensity[on_face] = face_intensity[owner[index[on_face]]]
    incidence[on_face] = np.abs(np.einsum("ij,ij->i", normals[owner[index[on_face]]], rays[index[on_face]]))
    on_crown = kind[index] == _CROWN
    intensity[on_crown] = FOLIAGE
    centres = crowns[owner[index[on_crown]]]
    outward = (points[on_crown] - centres[:, :3]) / centres[:, 3:]
    incidence[on_crown] = np.abs(np.einsum("ij,ij->i", outward, rays[index[on_crown]]))
    intensity *= (0.3 + 0.7 * incidence) * np.exp(0.2 * rng.standard_normal(len(index)))
    return np.concatenate(
        [
            reach[index, None] * _RAYS[index],
            np.minimum(intensity, 255.0)[:, None],
            (index // AZIMUTH_STEPS)[:, None],
        ],
        axis=1,
    ).astype(np.float32)


def lidar_pose(ego_translation, ego_rotation) -> tuple[np.ndarray, np.ndarray]:
    """LIDAR_TOP's global pose from the ego pose (translation (3,), rotation (4,) wxyz) and its
    calibration: translation (3,) and rotation (4,) wxyz, sensor -> global, as the devkit chains them."""
    translation = np.asarray(ego_translation, dtype=np.float64) + quaternion_matrix(ego_rotation) @ np.array(
        LIDAR_TOP_TRANSLATION
    )
    return translation, quaternion_product(ego_rotation, LIDAR_TOP_ROTATION)


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, margin: float = BOX_MARGIN_M) -> np.ndarray:
    """How many of the points (P, 3) lie inside each box (N, 7) [x, y, z_centre, w, l, h, yaw]
    grown by `margin` on every side (all global): (N,) int64 counts, the annotations' num_lidar_pts."""
    counts = np.zeros(len(boxes), dtype=np.int64)
    for index, (x, y, z, width, length, height, yaw) in enumerate(np.asarray(boxes, dtype=np.float64)):
        delta = points - np.array([x, y, z])
        along = delta[:, 0] * np.cos(yaw) + delta[:, 1] * np.sin(yaw)
        across = -delta[:, 0] * np.sin(yaw) + delta[:, 1] * np.cos(yaw)
        inside = (
            (np.abs(along) <= length / 2 + margin)
            & (np.abs(across) <= width / 2 + margin)
            & (np.abs(delta[:, 2]) <= height / 2 + margin)
        )
        counts[index] = int(inside.sum())
    return counts


def _pairs(
    centre: np.ndarray, half_width: np.ndarray, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(primitive, ray) index pairs, each (M,): the rays of the grid inside each primitive's window,
    given per primitive (Q,) as sensor-frame azimuth centre +- half_width and elevations low..high
    (radians). Windows are widened to whole columns; beams between two elevations are included."""
    first = np.floor((centre - half_width) / AZIMUTH_STEP).astype(np.int64)
    last = np.ceil((centre + half_width) / AZIMUTH_STEP).astype(np.int64)
    columns = np.minimum(last - first + 1, AZIMUTH_STEPS)
    beam0 = np.searchsorted(BEAM_ELEVATIONS, low, side="left")
    beams = np.maximum(np.searchsorted(BEAM_ELEVATIONS, high, side="right") - beam0, 0)
    count = columns * beams
    primitive = np.repeat(np.arange(len(count)), count)
    offset = np.arange(len(primitive)) - np.repeat(np.cumsum(count) - count, count)
    columns_of = columns[primitive]
    beam = beam0[primitive] + offset // columns_of
    column = (first[primitive] + offset % columns_of) % AZIMUTH_STEPS
    return primitive, beam * AZIMUTH_STEPS + column


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _near_circles(centres: np.ndarray, radius: np.ndarray, origin: np.ndarray, mask=True) -> np.ndarray:
    """Indices of primitives whose ground circle (centres (N, 2), radius (N,)) reaches within RANGE_M."""
    distance = np.hypot(centres[:, 0] - origin[0], centres[:, 1] - origin[1])
    return np.flatnonzero(mask & (distance < RANGE_M + radius))


def _faces(world: World, boxes: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces within range that face the sensor (only those can be a nearest hit): quads (F, 4, 3),
    normals (F, 3), intensities (F,); the world's faces, then the traffic boxes'."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    box_quads, box_normals = box_faces(boxes[:, :2], boxes[:, [4, 3, 5]], boxes[:, 6])
    box_quads[..., 2] += (boxes[:, 2] - boxes[:, 5] / 2)[:, None, None]  # box_faces stand on z = 0
    luminance = world.face_colors @ np.array([0.299, 0.587, 0.114]) / 255.0
    quads = np.concatenate([world.face_quads, box_quads.reshape(-1, 4, 3)])
    normals = np.concatenate([world.face_normals, box_normals.reshape(-1, 3)])
    intensity = np.concatenate([10.0 + 30.0 * luminance, np.full(len(box_quads) * 5, VEHICLE)])
    centres = quads.mean(axis=1)
    radius = np.linalg.norm(quads - centres[:, None], axis=2).max(axis=1, initial=0.0)
    facing = np.einsum("ij,ij->i", normals, origin - centres) > 0
    near = _near_circles(centres[:, :2], radius, origin, facing)
    return quads[near], normals[near], intensity[near]


def _quad_windows(relative: np.ndarray) -> tuple[np.ndarray, ...]:
    """Angular windows (see _pairs) of convex planar quads (Q, 4, 3) given in the sensor frame."""
    centre = relative.mean(axis=1)
    centre_azimuth = np.arctan2(centre[:, 1], centre[:, 0])
    offsets = _wrap(np.arctan2(relative[..., 1], relative[..., 0]) - centre_azimuth[:, None])
    half_width = np.maximum(offsets.max(axis=1), -offsets.min(axis=1))
    reach = np.linalg.norm(relative[..., :2] - centre[:, None, :2], axis=2).max(axis=1)
    nearest = np.maximum(np.hypot(centre[:, 0], centre[:, 1]) - reach, 1e-3)
    # A quad around the sensor's vertical axis (or nearly) may lie in any direction.
    half_width = np.where(nearest <= 1e-3, np.pi, half_width)
    farthest = np.hypot(relative[..., 0], relative[..., 1]).max(axis=1)
    bottom, top = relative[..., 2].min(axis=1), relative[..., 2].max(axis=1)
    low = np.arctan2(bottom, np.where(bottom < 0, nearest, farthest))
    high = np.arctan2(top, np.where(top > 0, nearest, farthest))
    return centre_azimuth, half_width, low, high


def _sphere_windows(spheres: np.ndarray, origin: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, ...]:
    """Angular windows of spheres (S, 4) as global x y z radius, seen from the sensor at origin (3,)
    with axes rotation (3, 3) (sensor -> global)."""
    relative = (spheres[:, :3] - origin) @ rotation
    flat = np.hypot(relative[:, 0], relative[:, 1])
    radius = spheres[:, 3]
    half_width = np.where(flat > radius, np.arcsin(np.minimum(radius / np.maximum(flat, 1e-9), 1.0)), np.pi)
    elevation = np.arctan2(relative[:, 2], flat)
    spread = np.arcsin(np.minimum(radius / np.maximum(np.linalg.norm(relative, axis=1), 1e-9), 1.0))
    return np.arctan2(relative[:, 1], relative[:, 0]), half_width, elevation - spread, elevation + spread


def _hit_quads(quads: np.ndarray, rays: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Ray parameter (M,) where rays (M, 3) from origin meet rectangles quads (M, 4, 3); inf if not."""
    edge_u, edge_v = quads[:, 1] - quads[:, 0], quads[:, 3] - quads[:, 0]
    normal = np.cross(edge_u, edge_v)
    to_corner = quads[:, 0] - origin
    along = np.einsum("ij,ij->i", rays, normal)
    safe = np.where(np.abs(along) > 1e-12, along, 1.0)
    t = np.einsum("ij,ij->i", to_corner, normal) / safe
    inside = rays * t[:, None] - to_corner
    u = np.einsum("ij,ij->i", inside, edge_u) / np.einsum("ij,ij->i", edge_u, edge_u)
    v = np.einsum("ij,ij->i", inside, edge_v) / np.einsum("ij,ij->i", edge_v, edge_v)
    hit = (np.abs(along) > 1e-12) & (t > 0) & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    return np.where(hit, t, np.inf)


def _hit_spheres(spheres: np.ndarray, rays: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Ray parameter (M,) of the first entry of unit rays (M, 3) from origin into spheres (M, 4); inf if none."""
    to_centre = spheres[:, :3] - origin
    closest = np.einsum("ij,ij->i", rays, to_centre)
    gap = np.einsum("ij,ij->i", to_centre, to_centre) - closest**2
    chord = spheres[:, 3] ** 2 - gap
    t = closest - np.sqrt(np.maximum(chord, 0.0))
    return np.where((chord >= 0) & (t > 0), t, np.inf)


def _keep_nearest(
    reach: np.ndarray,
    kind: np.ndarray,
    owner: np.ndarray,
    ray: np.ndarray,
    t: np.ndarray,
    primitive: np.ndarray,
    primitive_kind: int,
) -> None:
    """Where a pair's hit t (M,) of ray (M,) by primitive (M,) is nearer than the ray's reach so far,
    take it (in place: reach, kind and owner, each (R,))."""
    hit = np.flatnonzero(np.isfinite(t))
    ray, t, primitive = ray[hit], t[hit], primitive[hit]
    order = np.lexsort((t, ray))  # per ray, nearest first
    first = order[np.r_[True, np.diff(ray[order]) != 0]] if len(order) else order
    nearer = t[first] < reach[ray[first]]
    chosen = first[nearer]
    reach[ray[chosen]] = t[chosen]
    kind[ray[chosen]] = primitive_kind
    owner[ray[chosen]] = primitive[chosen]


def _ground_material(
    world: World, points: np.ndarray, ray_index: np.ndarray, origin: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Intensity (G,) of ground points (G, 3) hit by rays ray_index (G,) of the sensor at origin (3,)
    with axes rotation (3, 3): markings over road over grass."""
    material = np.full(len(points), GRASS)
    slot = np.full(AZIMUTH_STEPS * len(BEAM_ELEVATIONS), -1)
    slot[ray_index] = np.arange(len(ray_index))
    for quads, value in ((world.road_quads, ASPHALT), (world.line_quads, MARKING)):
        centres = quads[..., :2].mean(axis=1)
        radius = np.linalg.norm(quads[..., :2] - centres[:, None], axis=2).max(axis=1, initial=0.0)
        near = quads[_near_circles(centres, radius, origin)]
        quad, ray = _pairs(*_quad_windows((near - origin) @ rotation))
        point = slot[ray]
        quad, point = quad[point >= 0], point[point >= 0]
        # Per quad, the map from a ground point to its (u, v) along the quad's two edges (0..1 inside).
        edges = np.stack([near[:, 1, :2] - near[:, 0, :2], near[:, 3, :2] - near[:, 0, :2]], axis=1)
        to_uv = edges / np.einsum("qij,qij->qi", edges, edges)[..., None]
        uv = np.einsum("mij,mj->mi", to_uv[quad], points[point, :2] - near[quad, 0, :2])
        material[point[((uv >= 0) & (uv <= 1)).all(axis=1)]] = value
    return material
