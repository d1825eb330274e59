"""The procedural 3D world a synthetic scene is rendered in, fixed in global coordinates.

The world is the scene's street grid (mvm.synth.grid) and nothing else: streets with lane
markings and crosswalks, paved crossing squares, and blocks that are either built (rows of
buildings along two sides, trees and poles along the others) or open paved plazas with a few
trees, poles and kiosks. Each block's content is drawn from its own generator keyed by (scene,
block index), so the world is one infinite grid of which only the part within sight of the
route is built, and nothing in it depends on where the car drives. The ground carries a
tileable world-fixed texture (asphalt grain and grass), so every pixel of the ground moves with
the ego motion and parallax is everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvm.synth.grid import LANE_M, StreetGrid

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

LINE_WIDTH_M = 0.15
DASH_M, DASH_PERIOD_M = 3.0, 9.0
WHITE = (235, 235, 225)
CROSSWALK_M = 3.0
"""Length of a crosswalk's stripes along the street; stripes 0.5 m wide, 0.5 m apart."""
PLAZA_SHARE = 0.2
"""Chance that a block is an open paved plaza instead of a built block."""
ROW_M, STALL_M, STALL_DEPTH_M, POST_M = 18.0, 2.7, 5.0, 30.0
"""Lot layout (metres): parking rows, stall lines along a row, stall depth, lamp posts along a row."""
SIGHT_M = 300.0
"""Blocks are built within this distance of the route: beyond the renderer's far plane (250 m)."""


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


def _to_ground(corners_uv: np.ndarray, grid: StreetGrid) -> np.ndarray:
    """Grid-plane points (..., 2) as (u, v) metres -> global ground points (..., 3) with z = 0."""
    xy = grid.xy_of(corners_uv)
    return np.concatenate([xy, np.zeros(xy.shape[:-1] + (1,))], axis=-1)


def _rect(u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    """Corners (4, 2) of an axis-aligned rectangle in grid coordinates, counter-clockwise."""
    return np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]])


def _street_markings(length: float, half: float, crossing: float) -> list[tuple[np.ndarray, tuple]]:
    """Markings of one street between two crossings, in street coordinates (along, across):
    (rectangle corners (4, 2), RGB). The street runs from along = 0 to `length` (crossing centres)."""
    marks = []
    begin, end = crossing, length - crossing
    w = LINE_WIDTH_M / 2
    for across in (-half + 0.3, half - 0.3):
        marks.append((_rect(begin, end, across - w, across + w), WHITE))
    for across in (-LANE_M / 2, LANE_M / 2):
        for start in np.arange(begin + CROSSWALK_M + 1.0, end - CROSSWALK_M - 1.0 - DASH_M, DASH_PERIOD_M):
            marks.append((_rect(start, start + DASH_M, across - w, across + w), WHITE))
    for start in (begin + 0.5, end - 0.5 - CROSSWALK_M):
        for across in np.arange(-half + 0.6, half - 0.6, 1.0):
            marks.append((_rect(start, start + CROSSWALK_M, across, across + 0.5), WHITE))
    return marks


def _built_block(size: float, grid: StreetGrid, rng: np.random.Generator) -> list[dict]:
    """Objects of a built block in block coordinates (u, v from the block's lower crossing).

    Rows of buildings face the two streets along direction 0; trees and poles line the other
    two sides. Nothing reaches the streets or the crossing squares.
    """
    half, crossing = grid.street_half_m, grid.crossing_half_m
    inner = size - 2 * half
    objects = []
    for side in (-1.0, 1.0):  # the street below (v = 0) and above (v = size)
        along = crossing + float(rng.uniform(0.0, 3.0))
        while True:
            frontage = float(rng.uniform(6.0, 14.0))
            if along + frontage > size - crossing:
                break
            setback = float(rng.uniform(1.5, 4.0))
            depth = float(rng.uniform(6.0, max(6.5, inner / 2 - setback - 0.5)))
            across = half + setback + depth / 2
            v = across if side < 0 else size - across
            objects.append(
                {
                    "kind": "box",
                    "position": (along + frontage / 2, v),
                    "size": (frontage, depth, float(rng.uniform(4.0, 20.0))),
                    "heading": 0.0,
                }
            )
            along += frontage + float(rng.uniform(0.5, 5.0))
    for side in (-1.0, 1.0):  # the streets along direction 1: trees and poles on the kerb
        along = crossing + float(rng.uniform(1.0, 6.0))
        while along < size - crossing:
            kind = str(rng.choice(["pole", "tree", "none"], p=[0.4, 0.4, 0.2]))
            u = half + float(rng.uniform(0.8, 2.0))
            if kind != "none":
                objects.append(_small(kind, (u if side < 0 else size - u, along), rng))
            along += float(rng.uniform(6.0, 12.0))
    return objects


def _plaza(size: float, grid: StreetGrid, rng: np.random.Generator) -> list[dict]:
    """A few trees, poles and kiosks standing anywhere on an open plaza but in the corners of the
    crossing squares, where cars park (mvm.synth.traffic)."""
    low, high = grid.street_half_m + 3.0, size - grid.street_half_m - 3.0
    objects = []
    for _ in range(int(rng.integers(3, 9))):
        kind = str(rng.choice(["pole", "tree", "box"], p=[0.35, 0.45, 0.2]))
        position = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
        if max(min(p, size - p) for p in position) < grid.crossing_half_m + 3.0:
            continue
        if kind == "box":
            objects.append(
                {
                    "kind": "box",
                    "position": position,
                    "size": tuple(rng.uniform(2.0, 4.0, 3).tolist()),
                    "heading": float(rng.uniform(0, np.pi)),
                }
            )
        else:
            objects.append(_small(kind, position, rng))
    return objects


def _small(kind: str, position: tuple[float, float], rng: np.random.Generator) -> dict:
    if kind == "pole":
        size = (0.25, 0.25, float(rng.uniform(5.0, 9.0)))
    else:
        size = (0.35, 0.35, float(rng.uniform(1.8, 3.0)))
    return {"kind": kind, "position": position, "size": size, "heading": 0.0}


def box_faces(centre: np.ndarray, size: np.ndarray, heading: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 4 side faces and the top of boxes standing on the ground: quads (B, 5, 4, 3), normals (B, 5, 3).

    centre: (B, 2) on the ground; size: (B, 3) as (length, width, height); heading: (B,) yaw of
    the length axis.
    """
    c, s = np.cos(heading)[:, None], np.sin(heading)[:, None]
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    local = signs[None] * size[:, None, :2] / 2  # (B, 4, 2) along the length and width axes
    ground = centre[:, None] + local[..., :1] * np.stack([c, s], -1) + local[..., 1:] * np.stack([-s, c], -1)
    low = np.concatenate([ground, np.zeros(ground.shape[:2] + (1,))], axis=2)
    high = low + np.concatenate([np.zeros((len(size), 1, 2)), size[:, None, 2:]], axis=2)
    following = [1, 2, 3, 0]
    sides = np.stack([low, low[:, following], high[:, following], high], axis=2)  # (B, 4, 4, 3)
    faces = np.concatenate([sides, high[:, None]], axis=1)
    outward = (ground + ground[:, following]) / 2 - centre[:, None]
    outward /= np.linalg.norm(outward, axis=2, keepdims=True)
    normals = np.concatenate([outward, np.zeros(outward.shape[:2] + (1,))], axis=2)
    normals = np.concatenate([normals, np.tile([0.0, 0.0, 1.0], (len(size), 1, 1))], axis=1)
    return faces, normals


def build_world(
    grid: StreetGrid, route_xy: np.ndarray, night: bool, world_seed: int, rng: np.random.Generator
) -> World:
    """The static world of one scene: the blocks of `grid` within SIGHT_M of the route points
    route_xy (N, 2), each block drawn from its own generator (world_seed, block index)."""
    size, half, crossing = grid.spacing_m, grid.street_half_m, grid.crossing_half_m
    uv = grid.uv_of(route_xy) / size
    reach = SIGHT_M / size
    low = np.floor(uv.min(axis=0) - reach).astype(int)
    high = np.ceil(uv.max(axis=0) + reach).astype(int)
    corners = (
        np.array([(i, j) for i in range(low[0], high[0] + 1) for j in range(low[1], high[1] + 1)]) * size
    )
    marks = _street_markings(size, half, crossing)
    mark_rects = np.stack([m[0] for m in marks])
    # Per crossing: its square and the streets to the next crossings; markings along both directions.
    road = [
        _rect(-crossing, crossing, -crossing, crossing),
        _rect(0, size, -half, half),
        _rect(-half, half, 0, size),
    ]
    road_uv = (np.stack(road)[None] + corners[:, None, None]).reshape(-1, 4, 2)
    lines_uv = np.concatenate([mark_rects, mark_rects[..., ::-1]])
    line_quads = (lines_uv[None] + corners[:, None, None]).reshape(-1, 4, 2)
    line_colors = np.tile(np.array([m[1] for m in marks] * 2, dtype=np.uint8), (len(corners), 1))
    plazas, objects = [], []
    for corner in corners:
        i, j = (corner / size).round().astype(int)
        block_rng = np.random.default_rng([world_seed, i + 2**20, j + 2**20])
        if block_rng.random() < PLAZA_SHARE:
            plazas.append(_rect(0, size, 0, size) + corner)
            block = _plaza(size, grid, block_rng)
        else:
            block = _built_block(size, grid, block_rng)
        for obj in block:
            _colour(obj, block_rng)
            obj["position"] = (obj["position"][0] + corner[0], obj["position"][1] + corner[1])
            objects.append(obj)
    road_uv = np.concatenate([road_uv, np.array(plazas).reshape(-1, 4, 2)])
    return _assemble(grid, road_uv, line_quads, line_colors, objects, night, rng)


def lot_half_m(grid: StreetGrid, route_xy: np.ndarray) -> float:
    """Half the side (m) of the lot around grid.origin that holds the route points (N, 2) and 40 m more."""
    return float(np.abs(grid.uv_of(route_xy)).max()) + 40.0


def lot_rows(half: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid-plane v (R,) of the parking rows' centre lines and u (S,) of the stall lines of a lot
    `half` metres in half side; stalls reach 0.5 to 0.5 + STALL_DEPTH_M from a row's centre line."""
    return np.arange(-half + ROW_M / 2, half - ROW_M / 2, ROW_M), np.arange(-half + 5, half - 5, STALL_M)


def build_lot_world(
    grid: StreetGrid, route_xy: np.ndarray, night: bool, world_seed: int, rng: np.random.Generator
) -> World:
    """An open paved lot around grid.origin (the scene start), big enough for the whole route:
    parking rows every ROW_M, lamp posts every POST_M (none on the route itself), buildings and
    trees beyond its edges. Only the lot's extent depends on the route. Lamp posts stand on
    every other row's centre line, between the stall ends, so parked cars (mvm.synth.traffic)
    never stand on them."""
    uv = grid.uv_of(route_xy)
    half = lot_half_m(grid, route_xy)
    block_rng = np.random.default_rng([world_seed, 2**21])
    road_uv = _rect(-half, half, -half, half)[None]
    marks, objects = [], []
    w = LINE_WIDTH_M / 2
    rows, stall_lines = lot_rows(half)
    for v in rows:
        marks.append(_rect(-half + 5, half - 5, v - w, v + w))
        for u in stall_lines:
            marks.append(_rect(u - w, u + w, v + 0.5, v + STALL_DEPTH_M + 0.5))
            marks.append(_rect(u - w, u + w, v - STALL_DEPTH_M - 0.5, v - 0.5))
    post_offset = float(block_rng.uniform(0, POST_M))
    for u in np.arange(-half + post_offset, half, POST_M):
        for v in rows[::2]:
            if np.min(np.hypot(uv[:, 0] - u, uv[:, 1] - v)) > 2.5:
                objects.append(_small("pole", (u, v), block_rng))
    for edge in range(4):  # buildings and trees beyond each edge, laid out along +u then rotated
        along = -half + float(block_rng.uniform(0, 8))
        while along < half:
            frontage = float(block_rng.uniform(8.0, 25.0))
            depth = float(block_rng.uniform(8.0, 20.0))
            across = half + float(block_rng.uniform(3.0, 10.0)) + depth / 2
            position = np.array([along + frontage / 2, -across])
            kind_roll = block_rng.random()
            if kind_roll < 0.7:
                obj = {
                    "kind": "box",
                    "position": position,
                    "size": (frontage, depth, float(block_rng.uniform(4.0, 20.0))),
                    "heading": 0.0,
                }
            else:
                obj = _small("tree", position + [0.0, depth / 2 - 2.0], block_rng)
            turn = edge * np.pi / 2
            c, s_ = np.cos(turn), np.sin(turn)
            p = np.asarray(obj["position"], dtype=float)
            obj["position"] = (c * p[0] - s_ * p[1], s_ * p[0] + c * p[1])
            obj["heading"] = obj["heading"] + turn
            objects.append(obj)
            along += frontage + float(block_rng.uniform(1.0, 8.0))
    for obj in objects:
        _colour(obj, block_rng)
    line_quads = np.stack(marks)
    line_colors = np.tile(np.array(WHITE, dtype=np.uint8), (len(line_quads), 1))
    return _assemble(grid, road_uv, line_quads, line_colors, objects, night, rng)


def _assemble(
    grid: StreetGrid,
    road_uv: np.ndarray,
    line_quads: np.ndarray,
    line_colors: np.ndarray,
    objects: list[dict],
    night: bool,
    rng: np.random.Generator,
) -> World:
    """The World from grid-plane quads (N, 4, 2), markings and objects (block coordinates moved
    to grid coordinates, colours set), with the scene's ground texture and sky drawn from rng."""
    positions = _to_ground(np.array([o["position"] for o in objects]).reshape(-1, 2), grid)[:, :2]
    sizes = np.array([o["size"] for o in objects]).reshape(-1, 3)
    faces, normals = box_faces(positions, sizes, grid.rotation + np.array([o["heading"] for o in objects]))
    count = len(objects)
    crowns = np.zeros((count, 4))
    crown_colors = np.zeros((count, 3))
    for index, obj in enumerate(objects):
        if "crown_radius" in obj:
            crowns[index] = [
                *positions[index],
                sizes[index, 2] + obj["crown_radius"] * 0.8,
                obj["crown_radius"],
            ]
            crown_colors[index] = obj["crown_color"]
    return World(
        texture=_ground_texture(rng),
        sky=_sky(night, rng),
        road_quads=_to_ground(road_uv, grid),
        line_quads=_to_ground(line_quads, grid),
        line_colors=line_colors,
        face_quads=faces.reshape(-1, 4, 3),
        face_normals=normals.reshape(-1, 3),
        face_colors=np.repeat(np.array([o["color"] for o in objects]).reshape(-1, 3), 5, axis=0),
        face_object=np.repeat(np.arange(count), 5),
        object_centers=np.concatenate([positions, sizes[:, 2:] / 2], axis=1),
        crowns=crowns,
        crown_colors=crown_colors,
    )


def _colour(obj: dict, rng: np.random.Generator) -> None:
    """Add an object's colour (and a tree's crown radius and colour)."""
    if obj["kind"] == "pole":
        obj["color"] = np.full(3, rng.uniform(90, 150))
    elif obj["kind"] == "tree":
        obj["color"] = np.array([95.0, 70.0, 45.0])
        obj["crown_radius"] = float(rng.uniform(1.5, 3.0))
        obj["crown_color"] = np.array([50.0, rng.uniform(90, 140), 45.0])
    else:
        obj["color"] = rng.uniform(60, 220, 3)
