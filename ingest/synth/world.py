"""The procedural 3D world a synthetic scene is rendered in, fixed in global coordinates.

A road follows the scene's own trajectory (extended straight at both ends): asphalt, lane
markings, and roadside poles, boxes (buildings, containers) and trees placed once per scene at
fixed global positions. The ground carries a tileable world-fixed texture (asphalt grain and
grass), so every pixel of the ground moves with the ego motion and parallax is everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.synth.trajectory import Trajectory

TEXTURE_SIZE = 1024
"""Finest texture level in texels per side (the texture tiles the ground plane)."""
TEXEL_M = 0.05
"""Finest texel size in metres: one tile covers 51.2 m."""
SKY_AZIMUTH_BINS = 2048
"""Sky panorama columns over 360°."""
SKY_ELEVATION_BINS = 128
"""Sky panorama rows from the horizon up to SKY_TOP_RAD."""
SKY_TOP_RAD = 0.5
"""Elevation of the top row of the sky panorama (the camera sees up to about 0.37 rad)."""

ROAD_LEFT_M, ROAD_RIGHT_M = 5.6, -2.2
"""Asphalt extent, lateral to the trajectory (+ = left): the ego drives in the right lane."""
LINES = ((-1.8, False, (235, 235, 225)), (1.75, True, (235, 235, 225)), (5.25, False, (230, 190, 60)))
"""Lane markings: (lateral offset m, dashed, RGB)."""
LINE_WIDTH_M = 0.15
DASH_M, DASH_PERIOD_M = 3.0, 9.0
STEP_M = 2.0
"""Spacing of the road's cross-sections along the path."""
EXTENSION_M = 200.0
"""Straight road added before the scene's start and after its end."""


@dataclass(frozen=True)
class World:
    """Everything static in one scene: ground textures, sky, and geometry as quads."""

    texture: np.ndarray
    """(sum of levels,) uint8 luminance of the ground texture, mip levels concatenated (finest first)."""
    sky: np.ndarray
    """(SKY_ELEVATION_BINS, SKY_AZIMUTH_BINS) uint8 sky detail (clouds by day, stars by night)."""
    road_quads: np.ndarray
    """(R, 4, 3) float64 asphalt quads on the ground, global frame."""
    line_quads: np.ndarray
    """(M, 4, 3) float64 lane-marking quads on the ground, global frame."""
    line_colors: np.ndarray
    """(M, 3) uint8 RGB of each marking."""
    face_quads: np.ndarray
    """(K, 4, 3) float64 object faces (boxes, poles, tree trunks), global frame."""
    face_normals: np.ndarray
    """(K, 3) float64 outward unit normals of the faces."""
    face_colors: np.ndarray
    """(K, 3) float64 RGB (0-255) of each face, before lighting."""
    face_object: np.ndarray
    """(K,) int64 index of the object each face belongs to."""
    object_centers: np.ndarray
    """(O, 3) float64 object centres, for back-to-front ordering."""
    crowns: np.ndarray
    """(O, 4) float64 tree crown spheres (x, y, z, radius); radius 0 for objects without one."""
    crown_colors: np.ndarray
    """(O, 3) float64 RGB of the crowns."""


def texture_levels() -> list[tuple[int, int, float]]:
    """(offset into World.texture, texels per side, texel size m) per mip level, finest first."""
    levels, offset, size = [], 0, TEXTURE_SIZE
    while size >= 16:
        levels.append((offset, size, TEXEL_M * TEXTURE_SIZE / size))
        offset += size * size
        size //= 2
    return levels


def _fractal_noise(
    shape: tuple[int, int], slope: float, rng: np.random.Generator, min_frequency: float = 0.0
) -> np.ndarray:
    """Tileable 1/f^slope noise (flat below min_frequency, in cycles per sample) scaled to zero
    mean and unit standard deviation."""
    spectrum = np.fft.rfft2(rng.standard_normal(shape))
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0
    radius = np.maximum(radius, min_frequency)
    noise = np.fft.irfft2(spectrum / radius**slope, s=shape)
    return (noise - noise.mean()) / noise.std()


def _ground_texture(rng: np.random.Generator) -> np.ndarray:
    """Mip pyramid of a grainy, blotchy luminance texture, flattened (see texture_levels)."""
    shape = (TEXTURE_SIZE, TEXTURE_SIZE)
    grain = rng.standard_normal(shape)
    blotches = _fractal_noise(shape, 1.1, rng)
    base = 128.0 + 28.0 * blotches + 16.0 * grain
    levels, image = [], base
    for _, size, _ in texture_levels():
        if image.shape[0] != size:
            image = image.reshape(size, 2, size, 2).mean(axis=(1, 3))
        levels.append(np.clip(np.round(image), 0, 255).astype(np.uint8).ravel())
    return np.concatenate(levels)


def _sky(night: bool, rng: np.random.Generator) -> np.ndarray:
    """Clouds (day) or stars (night) over azimuth and elevation, 0-255."""
    shape = (SKY_ELEVATION_BINS, SKY_AZIMUTH_BINS)
    if night:
        stars = rng.random(shape) < 0.002
        return np.where(stars, rng.integers(120, 255, shape), 0).astype(np.uint8)
    clouds = _fractal_noise(shape, 1.8, rng, min_frequency=1 / 48)
    return np.clip(160.0 * (clouds - 0.3), 0, 255).astype(np.uint8)


def _road_frame(trajectory: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Cross-section centres (P, 2) every STEP_M along the extended path and their left normals (P, 2)."""
    xy, yaw = trajectory.xy, trajectory.yaw
    back = xy[0] - np.array([np.cos(yaw[0]), np.sin(yaw[0])]) * EXTENSION_M
    ahead = xy[-1] + np.array([np.cos(yaw[-1]), np.sin(yaw[-1])]) * EXTENSION_M
    points = np.concatenate([back[None], xy, ahead[None]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    keep = np.concatenate([[True], np.diff(arc) > 1e-9])
    points, arc = points[keep], arc[keep]
    stations = np.arange(0.0, arc[-1], STEP_M)
    centres = np.stack([np.interp(stations, arc, points[:, 0]), np.interp(stations, arc, points[:, 1])], 1)
    tangent = np.gradient(centres, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    return centres, np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def _strip(centres: np.ndarray, normals: np.ndarray, left: float, right: float) -> np.ndarray:
    """Ground quads (P-1, 4, 3) between lateral offsets `right` and `left` along the path."""
    a_right, a_left = centres[:-1] + right * normals[:-1], centres[:-1] + left * normals[:-1]
    b_right, b_left = centres[1:] + right * normals[1:], centres[1:] + left * normals[1:]
    quads = np.stack([a_right, b_right, b_left, a_left], axis=1)
    return np.concatenate([quads, np.zeros(quads.shape[:2] + (1,))], axis=2)


def _box_faces(centre: np.ndarray, size: np.ndarray, heading: float) -> tuple[np.ndarray, np.ndarray]:
    """The 4 side faces and the top of a box standing on the ground: quads (5, 4, 3), normals (5, 3).

    centre: (x, y) on the ground; size: (length, width, height); heading: yaw of the length axis.
    """
    c, s = np.cos(heading), np.sin(heading)
    axes = np.array([[c, s], [-s, c]])
    half = size[:2] / 2
    corners = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * half
    ground = centre + corners @ axes
    low = np.concatenate([ground, np.zeros((4, 1))], axis=1)
    high = low + np.array([0.0, 0.0, size[2]])
    faces, normals = [], []
    for i in range(4):
        j = (i + 1) % 4
        faces.append([low[i], low[j], high[j], high[i]])
        mid = (ground[i] + ground[j]) / 2 - centre
        normals.append(np.append(mid / np.linalg.norm(mid), 0.0))
    faces.append(list(high))
    normals.append([0.0, 0.0, 1.0])
    return np.array(faces), np.array(normals)


def _objects(centres: np.ndarray, normals: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """Roadside objects along the path, kept only where they clear every part of the road."""
    objects = []
    for index in range(0, len(centres), 4):  # one slot per side every 8 m
        for side in (-1.0, 1.0):
            kind = str(rng.choice(["pole", "box", "tree", "none"], p=[0.3, 0.3, 0.3, 0.1]))
            if kind == "none":
                continue
            if kind == "pole":
                size = np.array([0.25, 0.25, rng.uniform(5.0, 9.0)])
                gap = rng.uniform(0.8, 2.5)
            elif kind == "box":
                size = np.array([rng.uniform(3.0, 12.0), rng.uniform(3.0, 8.0), rng.uniform(2.5, 14.0)])
                gap = rng.uniform(3.0, 12.0)
            else:
                size = np.array([0.35, 0.35, rng.uniform(1.8, 3.0)])
                gap = rng.uniform(1.5, 6.0)
            edge = ROAD_LEFT_M if side > 0 else -ROAD_RIGHT_M
            offset = side * (edge + gap + size[1] / 2)
            position = centres[index] + offset * normals[index] + rng.uniform(-2.0, 2.0, 2)
            heading = np.arctan2(normals[index][0], -normals[index][1]) + rng.uniform(-0.15, 0.15)
            objects.append({"kind": kind, "position": position, "size": size, "heading": heading})
    return [o for o in objects if _clears_road(o, centres, normals)]


def _clears_road(obj: dict, centres: np.ndarray, normals: np.ndarray) -> bool:
    """Whether an object's footprint stays off the asphalt, judged at the nearest cross-section."""
    radius = float(np.hypot(*obj["size"][:2])) / 2 + (2.5 if obj["kind"] == "tree" else 0.3)
    delta = obj["position"] - centres
    distance = np.linalg.norm(delta, axis=1)
    near = distance < radius + max(ROAD_LEFT_M, -ROAD_RIGHT_M) + STEP_M
    lateral = np.einsum("ij,ij->i", delta[near], normals[near])
    return bool(np.all((lateral > ROAD_LEFT_M + radius) | (lateral < ROAD_RIGHT_M - radius)))


def build_world(trajectory: Trajectory, night: bool, rng: np.random.Generator) -> World:
    """The static world of one scene around its trajectory."""
    centres, normals = _road_frame(trajectory)
    road = _strip(centres, normals, ROAD_LEFT_M, ROAD_RIGHT_M)
    line_quads, line_colors = [], []
    for offset, dashed, color in LINES:
        strip = _strip(centres, normals, offset + LINE_WIDTH_M / 2, offset - LINE_WIDTH_M / 2)
        if dashed:
            station = np.arange(len(strip)) * STEP_M
            strip = strip[(station % DASH_PERIOD_M) < DASH_M]
        line_quads.append(strip)
        line_colors.append(np.tile(np.array(color, dtype=np.uint8), (len(strip), 1)))
    faces, face_normals, face_colors, face_object, object_centres, crowns, crown_colors = (
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    )
    for index, obj in enumerate(_objects(centres, normals, rng)):
        quads, quad_normals = _box_faces(obj["position"], obj["size"], obj["heading"])
        if obj["kind"] == "pole":
            color = np.full(3, rng.uniform(90, 150))
        elif obj["kind"] == "tree":
            color = np.array([95.0, 70.0, 45.0])
        else:
            color = rng.uniform(60, 220, 3)
        faces.append(quads)
        face_normals.append(quad_normals)
        face_colors.append(np.tile(color, (len(quads), 1)))
        face_object.append(np.full(len(quads), index))
        height = obj["size"][2]
        object_centres.append(np.append(obj["position"], height / 2))
        if obj["kind"] == "tree":
            radius = rng.uniform(1.5, 3.0)
            crowns.append(np.append(obj["position"], [height + radius * 0.8, radius]))
            crown_colors.append(np.array([50.0, rng.uniform(90, 140), 45.0]))
        else:
            crowns.append(np.zeros(4))
            crown_colors.append(np.zeros(3))
    return World(
        texture=_ground_texture(rng),
        sky=_sky(night, rng),
        road_quads=road,
        line_quads=np.concatenate(line_quads),
        line_colors=np.concatenate(line_colors),
        face_quads=np.concatenate(faces) if faces else np.zeros((0, 4, 3)),
        face_normals=np.concatenate(face_normals) if faces else np.zeros((0, 3)),
        face_colors=np.concatenate(face_colors) if faces else np.zeros((0, 3)),
        face_object=np.concatenate(face_object) if faces else np.zeros(0, dtype=np.int64),
        object_centers=np.array(object_centres).reshape(-1, 3),
        crowns=np.array(crowns).reshape(-1, 4),
        crown_colors=np.array(crown_colors).reshape(-1, 3),
    )
