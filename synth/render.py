"""Renders CAM_FRONT images of a synthetic World from ego poses.

The ego vehicle stays flat on the ground (z = 0, yaw only), so where each pixel's ray meets the
ground, in ego coordinates, never changes: it is computed once per image size. A frame then
costs a rotation and translation of those ground points into the world, a texture lookup
(mip level chosen per pixel by its footprint), and one palette lookup that folds in road or
grass colour, distance haze by day and headlight falloff by night. Lane markings and objects
are projected polygons drawn back to front with Pillow; the other road users (boxes at the
frame's time, mvm.synth.traffic) are drawn with the static objects, in one back-to-front order.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from mvm.synth.camera import Camera
from mvm.synth.world import (
    SKY_AZIMUTH_BINS,
    SKY_ELEVATION_BINS,
    SKY_TOP_RAD,
    TEXEL_M,
    TEXTURE_SIZE,
    World,
    box_faces,
    texture_levels,
)

NEAR_M, FAR_M = 0.5, 250.0
"""Clipping distances for projected geometry."""
MARKING_FAR_M = 80.0
"""Lane markings farther than this are under a pixel tall at 1600 px wide and are not drawn."""
MAX_GROUND_M = 1000.0
"""Ground points farther than this are drawn as haze."""
LIGHT_LEVELS = 32
"""Quantisation of per-pixel light (haze or headlights) in the ground palette."""
SKY_LEVELS = 64
"""Quantisation of elevation in the sky palette."""
TILE_M = TEXEL_M * TEXTURE_SIZE
SUN = np.array([0.4, 0.3, 0.866])
"""Direction towards the sun (unit vector, global frame): shades the faces of objects by day."""
HAZE_M = 220.0
"""Distance at which day haze covers 63% of a colour."""
DAY_HAZE, NIGHT_SKY = np.array([200.0, 210.0, 220.0]), np.array([8.0, 10.0, 22.0])
ASPHALT, GRASS = np.array([105.0, 105.0, 110.0]), np.array([85.0, 120.0, 60.0])


def headlight_gain(forward: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Light on the ground at ego-frame (forward, left) metres from the ego origin, 0-1 (ambient 0.04)."""
    ahead = forward - 3.7
    distance = np.hypot(ahead, left)
    angle = np.arctan2(np.abs(left), np.maximum(ahead, 1e-3))
    beam = np.exp(-((angle / 0.45) ** 2)) * np.minimum(1.0, (14.0 / np.maximum(distance, 1e-3)) ** 2)
    return np.where(ahead > 0, 0.04 + 0.96 * beam, 0.04)


def _palette(night: bool) -> np.ndarray:
    """Ground palette (LIGHT_LEVELS · 2 · 256, 3) indexed by light level, road bit, texture value,
    followed by the sky palette (SKY_LEVELS · 32, 3) indexed by elevation level and sky detail."""
    light = np.arange(LIGHT_LEVELS)[:, None, None, None] / (LIGHT_LEVELS - 1)
    surface = np.stack([GRASS, ASPHALT])[None, :, None, :]
    grain = (0.55 + 0.9 * np.arange(256) / 255.0)[None, None, :, None]
    lit = surface * grain
    ground = lit * light if night else lit * (1 - light) + DAY_HAZE * light
    elevation = np.arange(SKY_LEVELS)[:, None, None] / (SKY_LEVELS - 1)
    detail = np.arange(32)[None, :, None] / 31.0
    if night:
        sky = NIGHT_SKY * (1 - 0.5 * elevation) + (255.0 - NIGHT_SKY) * detail
    else:
        blue = DAY_HAZE * (1 - elevation) + np.array([90.0, 140.0, 215.0]) * elevation
        sky = blue * (1 - 0.8 * detail) + 245.0 * 0.8 * detail
    flat = np.concatenate([ground.reshape(-1, 3), sky.reshape(-1, 3)])
    return np.clip(np.round(flat), 0, 255).astype(np.uint8)


class Renderer:
    """Per-image-size precomputation plus the per-frame drawing of one scene's world."""

    def __init__(self, camera: Camera, world: World, night: bool):
        self.camera, self.world, self.night = camera, world, night
        self.palette = _palette(night)
        rays = camera.pixel_rays_ego()
        origin = camera.cam_to_ego_translation
        hits_ground = rays[..., 2] < -1e-6
        reach = np.where(hits_ground, -origin[2] / np.where(hits_ground, rays[..., 2], -1.0), 0.0)
        ground = origin + reach[..., None] * rays
        distance = np.hypot(ground[..., 0] - origin[0], ground[..., 1] - origin[1])
        is_ground = hits_ground & (distance < MAX_GROUND_M)
        self.first_ground_row = int(np.argmax(is_ground.any(axis=1)))
        rows = slice(self.first_ground_row, camera.height)
        self._init_ground(ground[rows], distance[rows], is_ground[rows])
        self._init_sky(rays[: self.first_ground_row])
        # Half the horizontal field of view (its wider side, 2 px more for polygon edges), as
        # tangent and secant.
        widest = max(camera.intrinsic[0, 2], camera.width - camera.intrinsic[0, 2]) + 2.0
        self._fov_tangent = widest / camera.intrinsic[0, 0]
        self._fov_secant = float(np.hypot(1.0, self._fov_tangent))
        # Bounding circles (centre (N, 2), radius (N,)) for culling before projection.
        self._bounds = {
            name: _bounding_circles(quads)
            for name, quads in (
                ("road", world.road_quads),
                ("line", world.line_quads),
                ("face", world.face_quads),
            )
        }
        self._object_faces = np.searchsorted(world.face_object, np.arange(len(world.object_centers) + 1))
        # An object's circle holds its faces' circles (object centres are box centres).
        face_centres, face_radius = self._bounds["face"]
        offset = np.linalg.norm(face_centres - world.object_centers[world.face_object, :2], axis=1)
        self._object_radius = np.zeros(len(world.object_centers))
        np.maximum.at(self._object_radius, world.face_object, offset + face_radius)

    def _init_ground(self, ground: np.ndarray, distance: np.ndarray, is_ground: np.ndarray) -> None:
        # Texel footprint of each pixel: how far its ground point is from its neighbours'.
        step_down = np.linalg.norm(np.diff(ground[..., :2], axis=0, append=ground[-1:, :, :2]), axis=-1)
        step_right = np.linalg.norm(np.diff(ground[..., :2], axis=1, append=ground[:, -1:, :2]), axis=-1)
        footprint = np.maximum(np.maximum(step_down, step_right), TEXEL_M)
        levels = texture_levels()
        level = np.clip(np.floor(np.log2(footprint / TEXEL_M)).astype(int), 0, len(levels) - 1)
        offsets, sizes, texels = np.array(levels).T
        self.forward = np.where(is_ground, ground[..., 0], 0.0).astype(np.float32).ravel()
        self.left = np.where(is_ground, ground[..., 1], 0.0).astype(np.float32).ravel()
        self.inverse_texel = (1.0 / texels[level]).astype(np.float32).ravel()
        self.texel_mask = (sizes[level] - 1).astype(np.int32).ravel()
        self.texel_row = sizes[level].astype(np.int32).ravel()
        self.texel_offset = offsets[level].astype(np.int32).ravel()
        if self.night:
            light = headlight_gain(ground[..., 0], ground[..., 1])
        else:
            light = 1.0 - np.exp(-distance / HAZE_M)
        light = np.where(is_ground, light, 0.0 if self.night else 1.0)
        self.light_base = (np.round(light * (LIGHT_LEVELS - 1)).astype(np.int32) * 512).ravel()

    def _init_sky(self, rays: np.ndarray) -> None:
        elevation = np.arctan2(rays[..., 2], np.hypot(rays[..., 0], rays[..., 1]))
        elevation_fraction = np.clip(elevation / SKY_TOP_RAD, 0.0, 1.0)
        self.sky_row = np.minimum(
            (elevation_fraction * SKY_ELEVATION_BINS).astype(np.int32), SKY_ELEVATION_BINS - 1
        )
        self.sky_azimuth = np.arctan2(rays[..., 1], rays[..., 0]).astype(np.float64)
        sky_level = np.round(elevation_fraction * (SKY_LEVELS - 1)).astype(np.int32)
        self.sky_base = LIGHT_LEVELS * 512 + sky_level * 32

    def render(
        self,
        ego_xy: np.ndarray,
        ego_yaw: float,
        boxes: np.ndarray | None = None,
        colors: np.ndarray | None = None,
    ) -> np.ndarray:
        """The CAM_FRONT image at an ego pose (x, y metres, yaw rad), with the other road users'
        boxes (N, 7) rows [x, y, z_centre, width, length, height, yaw] (global frame) painted in
        colors (N, 3) RGB 0-255: (H, W, 3) uint8 RGB."""
        index = np.empty((self.camera.height, self.camera.width), dtype=np.int32)
        index[self.first_ground_row :] = self._ground_index(ego_xy, ego_yaw)
        index[: self.first_ground_row] = self._sky_index(ego_yaw)
        image = Image.fromarray(self.palette[index])
        self._draw_geometry(image, ego_xy, ego_yaw, boxes, colors)
        return np.asarray(image)

    def _ground_index(self, ego_xy: np.ndarray, ego_yaw: float) -> np.ndarray:
        c, s = np.float32(np.cos(ego_yaw)), np.float32(np.sin(ego_yaw))
        # Work relative to a texture tile corner near the ego so float32 keeps sub-texel precision;
        # the added tiles keep coordinates positive for the integer truncation.
        base = np.mod(ego_xy, TILE_M) + 40 * TILE_M
        x = np.float32(base[0]) + c * self.forward - s * self.left
        y = np.float32(base[1]) + s * self.forward + c * self.left
        column = (x * self.inverse_texel).astype(np.int32) & self.texel_mask
        row = (y * self.inverse_texel).astype(np.int32) & self.texel_mask
        grain = self.world.texture[self.texel_offset + row * self.texel_row + column]
        road = self._road_mask(ego_xy, ego_yaw)[self.first_ground_row :].ravel()
        index = self.light_base + road.astype(np.int32) * 256 + grain
        return index.reshape(-1, self.camera.width)

    def _sky_index(self, ego_yaw: float) -> np.ndarray:
        azimuth = np.mod(self.sky_azimuth + ego_yaw, 2 * np.pi)
        column = (azimuth * (SKY_AZIMUTH_BINS / (2 * np.pi))).astype(np.int32) % SKY_AZIMUTH_BINS
        detail = self.world.sky[self.sky_row, column].astype(np.int32) >> 3
        return self.sky_base + detail

    def _road_mask(self, ego_xy: np.ndarray, ego_yaw: float) -> np.ndarray:
        mask = Image.new("L", (self.camera.width, self.camera.height), 0)
        draw = ImageDraw.Draw(mask)
        for polygon in self._visible_polygons(self.world.road_quads, "road", ego_xy, ego_yaw)[0]:
            draw.polygon(polygon, fill=1)
        return np.asarray(mask)

    def _near(
        self, centres: np.ndarray, radius: np.ndarray, ego_xy: np.ndarray, ego_yaw: float, far: float = FAR_M
    ) -> np.ndarray:
        """Indices of bounding circles (centres (N, 2), radius (N,)) that may reach the view:
        nearer than `far` and not wholly behind the camera."""
        delta = centres - ego_xy
        ahead = delta[:, 0] * np.cos(ego_yaw) + delta[:, 1] * np.sin(ego_yaw)
        near = np.einsum("ij,ij->i", delta, delta) < (far + radius) ** 2
        return np.flatnonzero(near & (ahead > -radius))

    def _visible_polygons(
        self, quads: np.ndarray, name: str, ego_xy: np.ndarray, ego_yaw: float, candidates=None
    ) -> tuple[list[list[float]], np.ndarray]:
        """Quads (N, 4, 3) (the world's `name` quads) in front of the camera, clipped at NEAR_M,
        nearer than FAR_M and overlapping the image: flat pixel coordinate lists for Pillow, and
        their indices (V,). Only `candidates` (default: those near enough) are considered."""
        if candidates is None:
            candidates = self._near(*self._bounds[name], ego_xy, ego_yaw)
        polygons, indices = self._project_polygons(quads[candidates], ego_xy, ego_yaw)
        return polygons, candidates[indices]

    def _project_polygons(
        self, quads: np.ndarray, ego_xy: np.ndarray, ego_yaw: float
    ) -> tuple[list[list[float]], np.ndarray]:
        points = self.camera.world_to_camera(quads, ego_xy, ego_yaw)
        depth = points[..., 2]
        near_enough = depth.min(axis=1) < FAR_M
        whole = np.flatnonzero(near_enough & (depth.min(axis=1) > NEAR_M))
        pixels = self.camera.project(points[whole]) - 0.5
        low, high = pixels.min(axis=1), pixels.max(axis=1)
        on_image = (high[:, 0] >= 0) & (high[:, 1] >= 0)
        on_image &= (low[:, 0] <= self.camera.width) & (low[:, 1] <= self.camera.height)
        polygons = pixels[on_image].reshape(-1, 8).tolist()
        indices = whole[on_image].tolist()
        # The few quads crossing the near plane are clipped one by one.
        for index in np.flatnonzero(
            near_enough & (depth.max(axis=1) > NEAR_M) & (depth.min(axis=1) <= NEAR_M)
        ):
            clipped = self.camera.project(_clip_near(points[index])) - 0.5
            low, high = clipped.min(axis=0), clipped.max(axis=0)
            if high[0] >= 0 and high[1] >= 0 and low[0] <= self.camera.width and low[1] <= self.camera.height:
                polygons.append(np.clip(clipped, -1e5, 1e5).ravel().tolist())
                indices.append(int(index))
        return polygons, np.array(indices, dtype=np.int64)

    def _shade(
        self, colors: np.ndarray, points_world: np.ndarray, ego_xy: np.ndarray, ego_yaw: float
    ) -> list:
        """RGB tuples of surfaces with colours (N, 3) around points_world (N, 3) after haze (day)
        or headlights (night)."""
        delta = points_world[:, :2] - ego_xy
        c, s = np.cos(ego_yaw), np.sin(ego_yaw)
        forward, left = c * delta[:, 0] + s * delta[:, 1], -s * delta[:, 0] + c * delta[:, 1]
        if self.night:
            lit = colors * headlight_gain(forward, left)[:, None]
        else:
            haze = (1.0 - np.exp(-np.hypot(forward, left) / HAZE_M))[:, None]
            lit = colors * (1 - haze) + DAY_HAZE * haze
        return [tuple(rgb) for rgb in np.clip(np.round(lit), 0, 255).astype(int).tolist()]

    def _lit(
        self,
        normals: np.ndarray,
        centres: np.ndarray,
        colors: np.ndarray,
        camera_world: np.ndarray,
        ego_xy,
        ego_yaw,
    ) -> tuple[np.ndarray, list]:
        """Whether faces (normals (V, 3), centres (V, 3)) face the camera (V,) bool, and their RGB
        fills: colours (V, 3) shaded by the sun (day), then haze or headlights."""
        facing = np.einsum("ij,ij->i", normals, camera_world - centres) > 0
        sunlit = 1.0 if self.night else 0.55 + 0.45 * np.clip(normals @ SUN, 0.0, 1.0)[:, None]
        return facing, self._shade(colors * sunlit, centres, ego_xy, ego_yaw)

    def _traffic_faces(
        self,
        boxes: np.ndarray,
        colors: np.ndarray,
        ego_xy: np.ndarray,
        ego_yaw: float,
        camera_world: np.ndarray,
    ) -> tuple[np.ndarray, list[list[tuple]]]:
        """Boxes (N, 7) in view: their distances to the camera (B,) and per box the (polygon, fill)
        of each face turned to the camera."""
        # Only boxes whose bounding circle reaches into the camera's horizontal field of view.
        radius = np.hypot(boxes[:, 3], boxes[:, 4]) / 2
        delta = boxes[:, :2] - camera_world[:2]
        ahead = delta[:, 0] * np.cos(ego_yaw) + delta[:, 1] * np.sin(ego_yaw)
        side = np.abs(delta[:, 1] * np.cos(ego_yaw) - delta[:, 0] * np.sin(ego_yaw))
        near = np.flatnonzero(
            (side - radius * self._fov_secant < ahead * self._fov_tangent)
            & (ahead + radius > NEAR_M)
            & (np.hypot(ahead, side) < FAR_M + radius)
        )
        boxes = boxes[near]
        quads, normals = box_faces(boxes[:, :2], boxes[:, [4, 3, 5]], boxes[:, 6])
        quads, normals = quads.reshape(-1, 4, 3), normals.reshape(-1, 3)
        polygons, faces = self._project_polygons(quads, ego_xy, ego_yaw)
        colors = np.repeat(colors[near], 5, axis=0)[faces]
        facing, fills = self._lit(
            normals[faces], quads[faces].mean(axis=1), colors, camera_world, ego_xy, ego_yaw
        )
        per_box: list[list[tuple]] = [[] for _ in range(len(boxes))]
        for position in np.flatnonzero(facing).tolist():
            per_box[faces[position] // 5].append((polygons[position], fills[position]))
        return np.linalg.norm(boxes[:, :3] - camera_world, axis=1), per_box

    def _draw_geometry(
        self, image: Image.Image, ego_xy: np.ndarray, ego_yaw: float, boxes: np.ndarray | None, colors
    ) -> None:
        draw = ImageDraw.Draw(image)
        world = self.world
        near_lines = self._near(*self._bounds["line"], ego_xy, ego_yaw, MARKING_FAR_M)
        polygons, lines = self._visible_polygons(world.line_quads, "line", ego_xy, ego_yaw, near_lines)
        fills = self._shade(
            world.line_colors[lines].astype(float), world.line_quads[lines, 0], ego_xy, ego_yaw
        )
        for polygon, fill in zip(polygons, fills, strict=True):
            draw.polygon(polygon, fill=fill)
        camera_world = self._camera_position(ego_xy, ego_yaw)
        objects = self._near(world.object_centers[:, :2], self._object_radius, ego_xy, ego_yaw)
        starts, ends = self._object_faces[objects], self._object_faces[objects + 1]
        candidates = np.concatenate(
            [np.arange(a, b) for a, b in zip(starts, ends, strict=True)] or [np.zeros(0, int)]
        )
        polygons, faces = self._visible_polygons(world.face_quads, "face", ego_xy, ego_yaw, candidates)
        facing, fills = self._lit(
            world.face_normals[faces],
            world.face_quads[faces].mean(axis=1),
            world.face_colors[faces],
            camera_world,
            ego_xy,
            ego_yaw,
        )
        faces_of: dict[int, list[int]] = {}
        for position in np.flatnonzero(facing).tolist():
            faces_of.setdefault(int(world.face_object[faces[position]]), []).append(position)
        distance = np.full(len(world.object_centers), np.inf)
        distance[objects] = np.linalg.norm(world.object_centers[objects] - camera_world, axis=1)
        crowns = self._crowns(objects, ego_xy, ego_yaw)
        mover_distance, mover_faces = np.zeros(0), []
        if boxes is not None and len(boxes):
            mover_distance, mover_faces = self._traffic_faces(boxes, colors, ego_xy, ego_yaw, camera_world)
        # Static objects and road users in one order, farthest first (ties: static first).
        for item in np.argsort(-np.concatenate([distance[objects], mover_distance]), kind="stable").tolist():
            if item >= len(objects):
                for polygon, fill in mover_faces[item - len(objects)]:
                    draw.polygon(polygon, fill=fill)
                continue
            obj = int(objects[item])
            for position in faces_of.get(obj, []):
                draw.polygon(polygons[position], fill=fills[position])
            if obj in crowns:
                draw.ellipse(*crowns[obj])

    def _crowns(self, objects: np.ndarray, ego_xy: np.ndarray, ego_yaw: float) -> dict[int, tuple]:
        """object index -> (ellipse box, fill) of the tree crowns among `objects` in view."""
        trees = objects[self.world.crowns[objects, 3] > 0]
        centres, radius = self.world.crowns[trees, :3], self.world.crowns[trees, 3]
        points = self.camera.world_to_camera(centres, ego_xy, ego_yaw)
        keep = (points[:, 2] > NEAR_M + radius) & (points[:, 2] < FAR_M)
        trees, centres, radius, points = trees[keep], centres[keep], radius[keep], points[keep]
        uv = self.camera.project(points) - 0.5
        r = self.camera.intrinsic[0, 0] * radius / points[:, 2]
        keep = (uv[:, 0] + r >= 0) & (uv[:, 1] + r >= 0)
        keep &= (uv[:, 0] - r <= self.camera.width) & (uv[:, 1] - r <= self.camera.height)
        fills = self._shade(self.world.crown_colors[trees[keep]], centres[keep], ego_xy, ego_yaw)
        boxes = np.stack([uv[:, 0] - r, uv[:, 1] - r * 0.9, uv[:, 0] + r, uv[:, 1] + r * 0.9], axis=1)[keep]
        return {
            obj: (box, fill)
            for obj, box, fill in zip(trees[keep].tolist(), boxes.tolist(), fills, strict=True)
        }

    def _camera_position(self, ego_xy: np.ndarray, ego_yaw: float) -> np.ndarray:
        c, s = np.cos(ego_yaw), np.sin(ego_yaw)
        offset = self.camera.cam_to_ego_translation
        return np.array(
            [ego_xy[0] + c * offset[0] - s * offset[1], ego_xy[1] + s * offset[0] + c * offset[1], offset[2]]
        )


def _bounding_circles(quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-plane centres (N, 2) and radii (N,) of circles around quads (N, 4, 3), heights included."""
    centres = quads[:, :, :2].mean(axis=1)
    reach = np.linalg.norm(quads - np.concatenate([centres, np.zeros((len(quads), 1))], 1)[:, None], axis=2)
    return centres, reach.max(axis=1, initial=0.0)


def _clip_near(polygon: np.ndarray) -> np.ndarray:
    """Part of a convex camera-frame polygon (N, 3) with z >= NEAR_M (Sutherland-Hodgman): (M, 3)."""
    kept = []
    for i in range(len(polygon)):
        a, b = polygon[i], polygon[(i + 1) % len(polygon)]
        if a[2] >= NEAR_M:
            kept.append(a)
        if (a[2] >= NEAR_M) != (b[2] >= NEAR_M):
            t = (NEAR_M - a[2]) / (b[2] - a[2])
            kept.append(a + t * (b - a))
    return np.array(kept)
