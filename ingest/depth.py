"""Per-patch depth targets from LIDAR_TOP keyframes, the nuScenes way (shards/README.md, "Depth targets").

For one clip: choose the LIDAR_TOP keyframe nearest in time to one of its frames, load it with the
devkit (`LidarPointCloud.from_file`), project its points into that CAM_FRONT frame with the chain
of the devkit's `NuScenesExplorer.map_pointcloud_to_image` (lidar -> ego at lidar time -> global ->
ego at camera time -> camera -> intrinsics), carry them through the frames' crop and resize
(`mvm.ingest.frames.crop_box`) and take the median depth per patch. Everything but the file load
is a pure function of arrays and the records' calibrations and poses.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nuscenes.utils.data_classes import LidarPointCloud
from pyquaternion import Quaternion

from mvm.ingest.config import IngestConfig
from mvm.ingest.frames import crop_box

MIN_DIST_M = 1.0
"""Points closer to the camera than this are dropped (the devkit's `min_dist` default: lidar returns
from the car's own body on slightly unsynchronised sweeps)."""
MARGIN_PX = 1.0
"""Projected points must lie this far inside the source image (the devkit's 1-pixel margin)."""


class LidarError(Exception):
    """A lidar keyframe without usable points; `reason` is one of DEPTH_MISSING_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


DEPTH_MISSING_REASONS = ("no_keyframe", "missing_file", "corrupt_file", "no_points", "too_few_points")
"""Why a clip has no depth target: no LIDAR_TOP keyframe within the tolerance; its file is missing;
it is not a point cloud (size not a multiple of 5 float32, not a regular file, non-finite values);
it holds no points; no patch gets `depth_min_points` points."""


@dataclass(frozen=True)
class Pose:
    """A rigid transform from a record: translation (3,) metres, rotation (4,) quaternion w, x, y, z."""

    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]

    def matrix(self) -> np.ndarray:
        """(3, 3) rotation matrix, normalised as the devkit's pyquaternion does."""
        return Quaternion(self.rotation).rotation_matrix


def choose_keyframe(lidar_us: list[int], camera_us: list[int], max_offset_us: int) -> tuple[int, int] | None:
    """(frame index, lidar index) of the pair with the smallest |lidar - camera| time, or None when
    even that pair is more than `max_offset_us` apart. Ties: the earliest frame, then the earliest
    lidar keyframe (in the order given)."""
    if not lidar_us or not camera_us:
        return None
    offsets = np.abs(np.subtract.outer(np.asarray(camera_us, np.int64), np.asarray(lidar_us, np.int64)))
    frame, lidar = np.unravel_index(np.argmin(offsets), offsets.shape)  # row-major: earliest frame first
    return (int(frame), int(lidar)) if offsets[frame, lidar] <= max_offset_us else None


def lidar_to_camera(
    points: np.ndarray, lidar_sensor: Pose, lidar_ego: Pose, camera_ego: Pose, camera_sensor: Pose
) -> np.ndarray:
    """(N, 3) points in the LIDAR_TOP frame -> (N, 3) in the camera frame (z = depth along the axis).

    The devkit's chain: lidar calibrated_sensor (rotate, translate) -> ego_pose at the lidar time ->
    global -> inverse ego_pose at the camera time -> inverse camera calibrated_sensor.
    """
    ego = points @ lidar_sensor.matrix().T + np.asarray(lidar_sensor.translation)
    world = ego @ lidar_ego.matrix().T + np.asarray(lidar_ego.translation)
    ego_at_camera = (world - np.asarray(camera_ego.translation)) @ camera_ego.matrix()
    return (ego_at_camera - np.asarray(camera_sensor.translation)) @ camera_sensor.matrix()


def project(
    camera_points: np.ndarray, intrinsic: np.ndarray, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points (N, 3) -> (pixels (M, 2) u, v in the source image, depths (M,) metres).

    As the devkit's view_points with normalisation, keeping points more than MIN_DIST_M in front
    and strictly inside the (W, H) image by MARGIN_PX. Pixel coordinates are continuous with the
    image spanning [0, W) x [0, H) (the devkit's margin test is symmetric in that convention).
    """
    depths = camera_points[:, 2]
    in_front = depths > MIN_DIST_M
    pixels = camera_points[in_front] @ np.asarray(intrinsic, np.float64).T
    pixels = pixels[:, :2] / pixels[:, 2:3]
    width, height = image_size
    inside = (
        (pixels[:, 0] > MARGIN_PX)
        & (pixels[:, 0] < width - MARGIN_PX)
        & (pixels[:, 1] > MARGIN_PX)
        & (pixels[:, 1] < height - MARGIN_PX)
    )
    return pixels[inside], depths[in_front][inside]


def to_ingest_pixels(
    pixels: np.ndarray, source_size: tuple[int, int], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Source-image pixels (M, 2) of a (W, H) image -> (pixels (K, 2) at the ingest size (H, W), keep (M,) bool).

    The frames' centred crop to the target aspect ratio, then the resize (ingest/frames.py); points
    the crop cuts off are dropped (keep marks the others).
    """
    left, upper, right, lower = crop_box(source_size, size)
    height, width = size
    x = (pixels[:, 0] - left) * (width / (right - left))
    y = (pixels[:, 1] - upper) * (height / (lower - upper))
    keep = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return np.stack([x[keep], y[keep]], axis=1), keep


def patch_medians(
    pixels: np.ndarray, depths: np.ndarray, size: tuple[int, int], patch: int, min_points: int
) -> np.ndarray:
    """Median depth per patch: pixels (K, 2) x, y at the ingest size (H, W), depths (K,) ->
    float32 (H/patch, W/patch), NaN where a patch holds fewer than `min_points` points."""
    rows, cols = size[0] // patch, size[1] // patch
    cells = (pixels[:, 1] // patch).astype(np.int64) * cols + (pixels[:, 0] // patch).astype(np.int64)
    out = np.full(rows * cols, np.nan, np.float64)
    order = np.argsort(cells, kind="stable")
    cells, ordered = cells[order], depths[order]
    starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]]) if len(cells) else np.array([], int)
    for start, end in zip(starts, [*starts[1:], len(cells)], strict=True):
        if end - start >= min_points:
            out[cells[start]] = np.median(ordered[start:end])
    return out.reshape(rows, cols).astype(np.float32)


def load_points(dataroot: Path, filename: str) -> np.ndarray:
    """(N, 3) float32 x, y, z in the LIDAR_TOP frame of the `.pcd.bin` `dataroot / filename` (a
    filename checked by ingest/names.py), read by the devkit's loader; LidarError("missing_file" |
    "corrupt_file" | "no_points", detail naming `filename`) when it has none to give."""
    path = dataroot / filename
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise LidarError("missing_file", filename) from None
    except OSError as error:
        raise LidarError("corrupt_file", f"{filename}: {error.strerror}") from None
    if not stat.S_ISREG(mode):  # a FIFO would block np.fromfile forever
        raise LidarError("corrupt_file", f"{filename}: not a regular file")
    if not path.name.endswith(".bin"):  # the devkit's loader asserts this
        raise LidarError("corrupt_file", f"{filename}: not a .pcd.bin point cloud")
    try:
        points = LidarPointCloud.from_file(str(path)).points[:3].T
    except (OSError, ValueError) as error:  # a size that is not a multiple of 5 float32 values
        raise LidarError("corrupt_file", f"{filename}: {error}") from None
    if not np.isfinite(points).all():
        raise LidarError("corrupt_file", f"{filename}: non-finite coordinates")
    if len(points) == 0:
        raise LidarError("no_points", f"{filename}: no points")
    return points


def clip_depth(
    frames: list[dict],
    keyframes: list[dict],
    cameras: dict[str, dict],
    dataroot: Path,
    config: IngestConfig,
    cache: dict[str, np.ndarray | LidarError],
) -> tuple[dict, np.ndarray]:
    """The depth target of one clip: (the clip JSON's `depth` object, float32 (H/p, W/p) medians).

    frames: the clip's T CAM_FRONT frames (SceneJob.frames entries); keyframes: the scene's LIDAR_TOP
    keyframes (SceneJob.lidar_keyframes); cameras: SceneJob.cameras. `cache` maps a lidar token to
    its points (or its LidarError), so a scene loads each keyframe once. Raises LidarError when the
    clip gets no target (reasons: DEPTH_MISSING_REASONS).
    """
    chosen = choose_keyframe(
        [keyframe["timestamp"] for keyframe in keyframes],
        [frame["timestamp"] for frame in frames],
        config.depth_max_offset_ms * 1000,
    )
    if chosen is None:
        raise LidarError(
            "no_keyframe", f"no LIDAR_TOP keyframe within {config.depth_max_offset_ms} ms of a clip frame"
        )
    index, which = chosen
    frame, lidar = frames[index], keyframes[which]
    if lidar["token"] not in cache:
        try:
            cache[lidar["token"]] = load_points(dataroot, lidar["filename"])
        except LidarError as error:
            cache[lidar["token"]] = error
    points = cache[lidar["token"]]
    if isinstance(points, LidarError):
        raise points
    camera = cameras[frame["calibrated_sensor_token"]]
    camera_ego = Pose(tuple(frame["ego_translation"]), tuple(frame["ego_rotation"]))
    in_camera = lidar_to_camera(
        points.astype(np.float64), lidar["sensor"], lidar["ego"], camera_ego, camera["pose"]
    )
    source_size = (frame["width"], frame["height"])
    pixels, depths = project(in_camera, np.asarray(camera["intrinsic"]), source_size)
    pixels, keep = to_ingest_pixels(pixels, source_size, config.size)
    values = patch_medians(pixels, depths[keep], config.size, config.depth_patch, config.depth_min_points)
    valued = int(np.isfinite(values).sum())
    if valued == 0:
        raise LidarError(
            "too_few_points",
            f"{lidar['filename']}: {len(pixels)} points in the frame, no patch with {config.depth_min_points}",
        )
    meta = {
        "frame": index,
        "lidar_token": lidar["token"],
        "lidar_timestamp": lidar["timestamp"],
        "offset_us": lidar["timestamp"] - frame["timestamp"],
        "points": len(pixels),
        "patch": config.depth_patch,
        "coverage": valued / values.size,
    }
    return meta, values
