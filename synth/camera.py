"""CAM_FRONT and LIDAR_TOP calibration as in real nuScenes, and the pinhole camera maths.

The values are those of a real nuScenes CAM_FRONT (log n015-2018-07-24-11-22-45+0800):
fx = fy ≈ 1266.4, cx ≈ 816.3, cy ≈ 491.5 at 1600×900, mounted 1.70 m ahead of the rear axle
and 1.51 m above the ground, with nuScenes' camera-to-ego rotation (camera x right, y down,
z forward; ego x forward, y left, z up). Intrinsics scale linearly with the image width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FULL_WIDTH, FULL_HEIGHT = 1600, 900
CAM_FRONT_INTRINSIC = np.array(
    [
        [1266.417203046554, 0.0, 816.2670197447984],
        [0.0, 1266.417203046554, 491.50706579294757],
        [0.0, 0.0, 1.0],
    ]
)
CAM_FRONT_TRANSLATION = (1.70079118954, 0.0159456324149, 1.51095763913)
CAM_FRONT_ROTATION = (0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755)
LIDAR_TOP_TRANSLATION = (0.985793, 0.0, 1.84019)
LIDAR_TOP_ROTATION = (0.706749235646644, -0.015300993788500868, 0.01739745181256607, -0.7070846669051719)


def quaternion_matrix(quaternion) -> np.ndarray:
    """Rotation matrix (3, 3) of a unit quaternion [w, x, y, z]."""
    w, x, y, z = np.asarray(quaternion, dtype=np.float64) / np.linalg.norm(quaternion)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def quaternion_product(first, second) -> np.ndarray:
    """Hamilton product (4,) of quaternions [w, x, y, z]: the rotation `second`, then `first`."""
    w1, x1, y1, z1 = np.asarray(first, dtype=np.float64)
    w2, x2, y2, z2 = np.asarray(second, dtype=np.float64)
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def image_size(width: int) -> tuple[int, int]:
    """(width, height) of a CAM_FRONT image `width` pixels wide: 16:9 like nuScenes' 1600×900.

    The width must be a multiple of 32 so the height is an even whole number (video codecs need
    even sizes).
    """
    if width < 64 or width % 32:
        raise ValueError(f"width must be a multiple of 32 and at least 64, got {width}")
    return width, width * FULL_HEIGHT // FULL_WIDTH


@dataclass(frozen=True)
class Camera:
    """A CAM_FRONT pinhole camera of a given image size, rigidly mounted on the ego vehicle."""

    width: int
    """Image width in pixels."""
    height: int
    """Image height in pixels (width · 9/16)."""
    intrinsic: np.ndarray
    """(3, 3) camera matrix, CAM_FRONT's scaled to this width."""
    cam_to_ego_rotation: np.ndarray
    """(3, 3) rotation of camera axes into ego axes."""
    cam_to_ego_translation: np.ndarray
    """(3,) camera position in the ego frame, metres."""

    @classmethod
    def cam_front(cls, width: int) -> Camera:
        width, height = image_size(width)
        intrinsic = CAM_FRONT_INTRINSIC.copy()
        intrinsic[:2] *= width / FULL_WIDTH
        return cls(
            width=width,
            height=height,
            intrinsic=intrinsic,
            cam_to_ego_rotation=quaternion_matrix(CAM_FRONT_ROTATION),
            cam_to_ego_translation=np.array(CAM_FRONT_TRANSLATION),
        )

    def pixel_rays_ego(self) -> np.ndarray:
        """Viewing direction of every pixel centre in ego axes: (H, W, 3), not normalised."""
        u, v = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        fx, fy, cx, cy = (
            self.intrinsic[0, 0],
            self.intrinsic[1, 1],
            self.intrinsic[0, 2],
            self.intrinsic[1, 2],
        )
        rays_cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)
        return rays_cam @ self.cam_to_ego_rotation.T

    def world_to_camera(self, points: np.ndarray, ego_xy: np.ndarray, ego_yaw: float) -> np.ndarray:
        """Global points (..., 3) -> camera-frame points (..., 3) for an ego pose (x, y, yaw), z = 0."""
        c, s = np.cos(ego_yaw), np.sin(ego_yaw)
        world_to_ego = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        ego = (points - np.array([ego_xy[0], ego_xy[1], 0.0])) @ world_to_ego.T
        return (ego - self.cam_to_ego_translation) @ self.cam_to_ego_rotation

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) with z > 0 -> pixel coordinates (..., 2)."""
        uvw = points_cam @ self.intrinsic.T
        return uvw[..., :2] / uvw[..., 2:3]
