"""Camera-motion decoder: the hidden last frames are the last visible frame, moved.

With `prediction = "camera-motion"` (and the `future` mask: the last future_steps token steps
hidden), the model predicts each hidden frame by warping the last visible frame with a flow field
of three numbers per hidden frame, read from the visible tokens:

    flow(x, y) = (tx, ty) + s * ((x, y) - centre) / patch_size          (pixels)

Pixel p of the hidden frame is the last visible frame at p + flow(p) (backward warping), so the
picture moves by -(tx, ty) (what turning and pitching the camera does) and s < 0 expands it about
the frame centre (what driving forward does): the camera model of view-synthesis self-supervision
(SfMLearner). The loss is unchanged: MSE on the hidden patches' raw pixels. Zero motion is copying
the last visible frame (the frame-level copy_loss, train/diagnostics.py), so training starts at
that copy and every gain is motion read from the visible frames.

Why (issue 10, measured on development data, train/config.py `tiny()`): with a transformer decoder
that predicts hidden pixels, the loss falls by predicting each patch's colour from its context,
and at CPU-demo scale the encoder's features carry no more ego motion than a random encoder's.
A decoder that can only move the last visible frame leaves motion as the one thing to learn.

The head reads the visible tokens through `temporal_pool` (per token: mean over time, second-half
minus first-half mean, mean |step|: the summary the probe also pools with, mvm/features.py) and
one linear layer, initialised at zero.

    head = CameraMotionHead(embed_dim=128, rows=4, cols=7, hidden_frames=2)
    params = head(tokens)                                  # (B, 2, 3): tx, ty, s per hidden frame
    frames = warp(last_frame, camera_flow(params, (64, 112), patch_size=16))   # (B, 2, 3, 64, 112)

`CameraMotionDecoder` puts these together behind the model's decoder interface (train/model.py):

    decoder = CameraMotionDecoder(cfg)
    pred = decoder(latent, ids_keep, video)        # (B, L, k * p * p * 3)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvm.features import temporal_pool
from mvm.train.config import ModelConfig
from mvm.train.masks import hidden_steps
from mvm.train.tokens import patch_grid, patchify, token_steps

MOTION_PARAMS = 3
"""Per hidden frame: tx, ty (pixels) and s (pixels per patch of distance from the centre) of the backward flow."""


def camera_flow(params: torch.Tensor, size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """params (B, F, 3) [tx, ty, s] -> flow (B, F, 2, H, W) in pixels: (tx, ty) + s * (pixel − centre) / patch_size."""
    height, width = size
    ys = torch.arange(height, device=params.device, dtype=params.dtype) + 0.5 - height / 2
    xs = torch.arange(width, device=params.device, dtype=params.dtype) + 0.5 - width / 2
    tx, ty, rate = (params[..., i, None, None] for i in range(MOTION_PARAMS))  # (B, F, 1, 1) each
    flow_x = tx + rate * xs.view(1, 1, 1, width) / patch_size
    flow_y = ty + rate * ys.view(1, 1, height, 1) / patch_size
    return torch.stack([flow_x.expand(-1, -1, height, width), flow_y.expand(-1, -1, height, width)], dim=2)


def warp(source: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """source (B, 3, H, W), flow (B, F, 2, H, W) -> (B, F, 3, H, W): frame f at pixel p is source at p + flow_f(p).

    Bilinear sampling at pixel centres, edge pixels repeated outside the frame; zero flow returns the
    source (to float rounding, ~4e-6 at 64x112); a frame whose flow is not finite comes out NaN.
    """
    batch, frames, _, height, width = flow.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=flow.device, dtype=flow.dtype) + 0.5,
        torch.arange(width, device=flow.device, dtype=flow.dtype) + 0.5,
        indexing="ij",
    )
    # grid_sample's normalized coordinates (align_corners=False): -1 and 1 are the outer pixel edges
    grid_x = (xs + flow[:, :, 0]) / width * 2 - 1
    grid_y = (ys + flow[:, :, 1]) / height * 2 - 1
    grid = torch.stack([grid_x, grid_y], dim=-1).reshape(batch * frames, height, width, 2)
    # grid_sample turns coordinates into memory indices, and a NaN one crashes it on CPU (SIGSEGV).
    # Beyond [-1, 1] border padding repeats the edge anyway, so the clamp changes nothing for a finite
    # flow; a non-finite flow is carried into the output (0 * flow) for the trainer's non-finite guard.
    safe = torch.nan_to_num(grid, nan=0.0).clamp(-2.0, 2.0).to(source.dtype)
    repeated = source.unsqueeze(1).expand(-1, frames, -1, -1, -1).reshape(batch * frames, *source.shape[1:])
    out = F.grid_sample(repeated, safe, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.reshape(batch, frames, *source.shape[1:])
    return out + 0 * flow.sum(dim=(2, 3, 4)).view(batch, frames, 1, 1, 1).to(out.dtype)


class CameraMotionHead(nn.Module):
    """Visible token grid (B, T_vis, R, C, d) -> camera motion (B, hidden_frames, 3) [tx, ty, s].

    One linear layer on every token's temporal summary (temporal_pool over the visible steps), zero
    at initialisation (training starts at zero motion: copying the last visible frame).
    """

    def __init__(self, embed_dim: int, rows: int, cols: int, hidden_frames: int):
        super().__init__()
        self.hidden_frames = hidden_frames
        self.linear = nn.Linear(3 * rows * cols * embed_dim, hidden_frames * MOTION_PARAMS)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, steps = tokens.shape[:2]
        summary = temporal_pool(tokens.reshape(batch, steps, -1))  # (B, 3 * R * C * d)
        return self.linear(summary).reshape(batch, self.hidden_frames, MOTION_PARAMS)


def moved_last_frame(
    head: CameraMotionHead, grid: torch.Tensor, last_frame: torch.Tensor, patch_size: int
) -> torch.Tensor:
    """The hidden frames: visible token grid (B, T_vis, R, C, d) and the input's last visible frame
    (B, 3, H, W) -> (B, hidden_frames, 3, H, W), that frame warped by the head's camera motion, in its dtype."""
    params = head(grid)  # (B, F, 3)
    moved = warp(last_frame, camera_flow(params.float(), tuple(last_frame.shape[-2:]), patch_size))
    return moved.to(last_frame.dtype)


class CameraMotionDecoder(nn.Module):
    """Visible tokens' features -> every token's pixels, the hidden frames as the last visible frame
    moved (the model's `Decoder` interface). Needs the `future` mask and raw-pixel targets."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        steps = token_steps(cfg)
        if cfg.mask_type != "future" or cfg.norm_pix_loss or steps < 2:
            raise ValueError(
                "camera-motion prediction needs mask_type future, raw-pixel targets (norm_pix_loss off) and at "
                "least 2 token time steps"
            )
        self.cfg = cfg
        self.visible_steps = steps - hidden_steps(cfg)
        self.grid = patch_grid(cfg)
        hidden_frames = (steps - self.visible_steps) * cfg.token_frames
        self.head = CameraMotionHead(cfg.embed_dim, *self.grid, hidden_frames)

    def forward(self, latent: torch.Tensor, ids_keep: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """latent (B, L_vis, d) of the `future` mask's visible tokens (the first T_vis time steps, in
        order; ids_keep (B, L_vis) is therefore not read); video (B, T, 3, H, W) -> pred
        (B, L, k * p * p * 3): the input on visible tokens, the warped last visible frame on hidden ones.
        """
        batch, k = video.shape[0], self.cfg.token_frames
        visible_tokens = self.visible_steps * self.grid[0] * self.grid[1]
        if latent.shape[1] != visible_tokens:
            raise ValueError(
                f"camera-motion prediction needs the future mask's {visible_tokens} visible tokens, got {latent.shape[1]}"
            )
        grid = latent.reshape(batch, self.visible_steps, *self.grid, -1)
        moved = moved_last_frame(self.head, grid, video[:, self.visible_steps * k - 1], self.cfg.patch_size)
        frames = torch.cat([video[:, : self.visible_steps * k], moved], dim=1)
        return patchify(frames, self.cfg.patch_size, k)
