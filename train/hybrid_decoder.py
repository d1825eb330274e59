"""Hybrid decoder (`prediction = "hybrid"`, mask_type "future-tube"): MAE's pixel decoder for the
tube-masked tokens of the visible steps, the camera-motion warp for the hidden future steps.

The future-tube mask (train/masks.py) hides the last hidden_steps(cfg) token steps of every clip
and, in the earlier (visible) steps, the same drawn mask_ratio share of positions through every
step, so the encoder sees e.g. 21 of 112 tokens (0.81 hidden) instead of the 84 of the `future`
mask. The two halves of the objective:

- tube-masked tokens of the visible steps: PixelDecoder (train/pixel_decoder.py) reconstructs
  their raw pixels from the visible tokens (the design's high-ratio masked reconstruction);
- the hidden future steps: the input's last visible frame warped by a camera motion (tx, ty, s per
  frame, train/motion.py) that one zero-initialised linear layer reads from the visible tokens'
  temporal summaries (mvm.features.temporal_pool over the visible steps). The visible tokens are
  scattered into the full R x C grid first (zeros at tube-masked positions), so each position keeps
  its own weights whichever positions a clip's mask kept.

The loss is the model's: MSE over every hidden patch (tube-masked and future alike), on raw
pixels (norm_pix_loss off: the warp moves raw pixels, and one target space keeps the two halves on
one scale and copy_loss comparable). Visible tokens' predictions are the pixel decoder's output,
outside the loss.

The warp source is the input's last visible frame itself, whole: under the tube mask the encoder
sees only the kept positions of that frame, but the decoder reads all its pixels, exactly as the
camera-motion decoder does (the encoder never sees a hidden pixel; the decoder is dropped after
pre-training). So copying that frame is the future steps' starting point (zero-initialised head),
and what the head can learn is motion read from the encoder's tokens.

    decoder = HybridDecoder(cfg)
    pred = decoder(latent, ids_keep, video)        # (B, L, k * p * p * 3)
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mvm.train.config import ModelConfig, prediction_mask_problem
from mvm.train.masks import hidden_steps, mask_units
from mvm.train.motion import CameraMotionHead, moved_last_frame
from mvm.train.pixel_decoder import PixelDecoder
from mvm.train.tokens import patch_grid, patchify, token_steps


def visible_grid(
    latent: torch.Tensor, ids_keep: torch.Tensor, steps: int, rows: int, cols: int
) -> torch.Tensor:
    """Visible tokens in place: latent (B, L_vis, d) of tokens ids_keep (B, L_vis), all within the
    first `steps` token steps -> (B, steps, rows, cols, d), zeros at the positions not kept."""
    batch, _, dim = latent.shape
    full = latent.new_zeros(batch, steps * rows * cols, dim)
    full = full.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim), latent)
    return full.reshape(batch, steps, rows, cols, dim)


class HybridDecoder(nn.Module):
    """Visible tokens' features -> every token's raw pixels: the pixel decoder's on the visible
    steps, the warped last visible frame on the hidden future steps (the model's `Decoder` interface)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        problem = prediction_mask_problem(dataclasses.replace(cfg, prediction="hybrid"))
        if problem:
            raise ValueError(problem)
        self.cfg = cfg
        self.visible_steps = token_steps(cfg) - hidden_steps(cfg)
        self.grid = patch_grid(cfg)
        block, _, kept = mask_units(cfg)
        self.visible_tokens = block * kept
        # Creation order is the order of the random initial draws: the pixel decoder, then the (zero) head.
        self.pixels = PixelDecoder(cfg)
        hidden_frames = hidden_steps(cfg) * cfg.token_frames
        self.head = CameraMotionHead(cfg.embed_dim, *self.grid, hidden_frames)

    def forward(self, latent: torch.Tensor, ids_keep: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """latent (B, L_vis, d) of the future-tube mask's visible tokens ids_keep (B, L_vis); video
        (B, T, 3, H, W) in [0, 1] -> pred (B, L, k * p * p * 3) float32: the pixel decoder's output on
        the T_vis * N tokens of the visible steps, the warped last visible frame on the rest."""
        if latent.shape[1] != self.visible_tokens:
            raise ValueError(
                f"hybrid prediction needs the future-tube mask's {self.visible_tokens} visible tokens, "
                f"got {latent.shape[1]}"
            )
        k, p = self.cfg.token_frames, self.cfg.patch_size
        rows, cols = self.grid
        visible = self.visible_steps * rows * cols
        pixels = self.pixels(latent, ids_keep, video)[:, :visible]  # (B, T_vis N, P)
        grid = visible_grid(latent, ids_keep, self.visible_steps, rows, cols)
        moved = moved_last_frame(self.head, grid, video[:, self.visible_steps * k - 1], p)  # (B, F, 3, H, W)
        return torch.cat([pixels.float(), patchify(moved, p, k).float()], dim=1)
