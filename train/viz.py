"""RUN/viz/step-NNNNNN.png: per clip, rows original / masked input / reconstruction, one column per frame.

The reconstruction shows visible patches from the input and masked patches from the
prediction. With per-patch normalized targets the prediction has no brightness or contrast of
its own; it is mapped back with the mean and std of the clip's *visible* pixels (what the model
was given), never with the hidden target patch's own statistics, which would paste the answer's
brightness into the picture. The caption says which mapping was used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from train.config import ModelConfig
from train.model import patchify, unpatchify

MASKED_GREY = 0.5
"""Fill value of masked patches in the 'masked input' row."""


def reconstruction_patches(
    video: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, cfg: ModelConfig
) -> tuple[torch.Tensor, str]:
    """video (B, T, 3, H, W) in [0, 1], mask (B, L) bool, pred (B, L, P) -> (patches (B, L, P) in [0, 1], caption).

    Visible tokens keep the input pixels; masked tokens take the prediction, de-normalized with
    the visible pixels' mean and std when the targets are per-patch normalized.
    """
    patches = patchify(video, cfg.patch_size)
    pred = pred.float()
    if cfg.norm_pix_loss:
        visible = ~mask
        counts = visible.sum(dim=1, keepdim=True).clamp(min=1) * patches.shape[-1]
        weight = visible.unsqueeze(-1).float()
        mean = (patches * weight).sum(dim=(1, 2), keepdim=True) / counts.unsqueeze(-1)
        var = (((patches - mean) ** 2) * weight).sum(dim=(1, 2), keepdim=True) / counts.unsqueeze(-1)
        pred = pred * var.sqrt() + mean
        caption = "targets normalized per patch; prediction de-normalized with the VISIBLE pixels' mean/std"
    else:
        caption = "targets: raw pixels; prediction shown as is"
    merged = torch.where(mask.unsqueeze(-1), pred, patches).clamp(0, 1)
    return merged, caption


def render(
    video: torch.Tensor,
    mask: torch.Tensor,
    pred: torch.Tensor,
    cfg: ModelConfig,
    step: int,
    out: Path,
    clips: int = 2,
) -> Path:
    """Write the picture for the first `clips` clips of a batch; returns its path."""
    video, mask, pred = video[:clips].float().cpu(), mask[:clips].cpu(), pred[:clips].cpu()
    frames = video.shape[1]
    size = tuple(video.shape[-2:])
    patches = patchify(video, cfg.patch_size)
    masked = torch.where(mask.unsqueeze(-1), torch.full_like(patches, MASKED_GREY), patches)
    merged, caption = reconstruction_patches(video, mask, pred, cfg)
    rows = []
    for clip in range(video.shape[0]):
        for image in (
            video[clip],
            unpatchify(masked, frames, size, cfg.patch_size)[clip],
            unpatchify(merged, frames, size, cfg.patch_size)[clip],
        ):
            rows.append(torch.cat(list(image), dim=2))
    grid = (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    header = 28
    canvas = Image.new("RGB", (max(grid.shape[1], 640), grid.shape[0] + header), "white")
    canvas.paste(Image.fromarray(grid), (0, header))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), f"step {step}: rows per clip = original / masked input / reconstruction", fill="black")
    draw.text((4, 14), caption, fill="black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
