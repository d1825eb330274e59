"""Decoded clips -> float video tensors on a device: the one conversion the trainer, the probe and the viz use."""

from __future__ import annotations

import numpy as np
import torch

YUV_TO_RGB = np.linalg.inv(np.array([[66, 129, 25], [-38, -74, 112], [112, -94, -18]]) / 256.0).tolist()
"""Rows R, G, B of the inverse of mvm.video.rgb_to_yuv420's integer BT.601 matrix (Y-16, U-128, V-128)."""


def i420_to_rgb(planes: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3H/2, W) I420 planes -> float (..., 3, H, W) RGB in [0, 1], on planes' device.

    The inverse of mvm.video.rgb_to_yuv420 (BT.601 limited range; its integer matrix inverted
    exactly, chroma repeated over its 2x2 block). FFmpeg's own RGB conversion rounds about one
    level low; the two differ by at most 3/255 (tests/test_train_data.py).
    """
    rows, width = planes.shape[-2:]
    height = rows * 2 // 3
    lead = planes.shape[:-2]
    flat = planes.reshape(*lead, rows * width)  # the planes one after the other (H need not be 4k)
    luma = (
        flat[..., : height * width].reshape(*lead, 1, height, width).float().sub_(16.0).mul_(YUV_TO_RGB[0][0])
    )
    u, v = (
        flat[..., height * width :].reshape(*lead, 2, height // 2, width // 2).float().sub_(128.0).unbind(-3)
    )
    # Chroma terms of R, G, B at chroma resolution, then each repeated over its 2x2 block.
    chroma = torch.stack([YUV_TO_RGB[row][1] * u + YUV_TO_RGB[row][2] * v for row in range(3)], dim=-3)
    chroma = chroma[..., :, None, :, None].expand(*lead, 3, height // 2, 2, width // 2, 2)
    rgb = luma + chroma.reshape(*lead, 3, height, width)
    return rgb.div_(255.0).clamp_(0.0, 1.0)


def to_video(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch as the workers hand it over -> float (B, T, 3, H, W) in [0, 1] on `device`.

    frames: uint8 (B, T, H, W, 3) RGB, or uint8 (B, T, 3H/2, W) I420 planes (converted after the
    copy, on `device`: half the bytes to move and, on a GPU, a conversion that costs nothing).
    """
    frames = frames.to(device, non_blocking=True)
    if frames.ndim == 4:
        return i420_to_rgb(frames)
    return frames.permute(0, 1, 4, 2, 3).float().div_(255.0)


def frames_to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) RGB -> float32 (B, T, 3, H, W) in [0, 1], the input of the encoders."""
    return to_video(torch.from_numpy(np.ascontiguousarray(frames)), torch.device("cpu"))
