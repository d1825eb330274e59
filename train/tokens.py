"""Token geometry shared by the encoder (train/model.py) and the decoders (train/pixel_decoder.py,
train/motion.py): patches in and out, the token grid, position codes, transformer blocks.

Tokens: one per (time step, spatial patch), ordered time-major: token l = t * N + n with
N = (H / p) * (W / p) patches per frame and L = T' * N tokens per clip. A token covers
k = cfg.token_frames consecutive frames of its patch (T' = T / k; k = 1: one token per frame,
k = 2: VideoMAE's 2-frame tubelet embedding, whose stem sees local motion directly).
"""

from __future__ import annotations

import torch
from torch import nn

from mvm.train.config import ModelConfig

POSITION_KINDS = ("learned", "sincos")
"""ModelConfig.pos_embed values: separable learned space + time parameters (MAE-ST) or fixed
sine-cosine codes of row, column and time step (MAE)."""


def patchify(video: torch.Tensor, patch_size: int, token_frames: int = 1) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, (T / k) * N, k * p * p * C) with k = token_frames, N = (H / p) * (W / p).

    One row per token: the p x p patch at one place through k consecutive frames, token order
    (time step, row, column), pixel order (frame in token, py, px, c).
    """
    batch, frames, channels, height, width = video.shape
    rows, cols, k = height // patch_size, width // patch_size, token_frames
    x = video.reshape(batch, frames // k, k, channels, rows, patch_size, cols, patch_size)
    x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)
    return x.reshape(batch, frames // k * rows * cols, k * patch_size * patch_size * channels)


def unpatchify(
    patches: torch.Tensor, frames: int, image_size: tuple[int, int], patch_size: int, token_frames: int = 1
) -> torch.Tensor:
    """(B, (T / k) * N, k * p * p * C) -> (B, T, C, H, W); the exact inverse of patchify."""
    height, width = image_size
    rows, cols, k = height // patch_size, width // patch_size, token_frames
    batch = patches.shape[0]
    channels = patches.shape[-1] // (k * patch_size * patch_size)
    x = patches.reshape(batch, frames // k, rows, cols, k, patch_size, patch_size, channels)
    x = x.permute(0, 1, 4, 7, 2, 5, 3, 6)
    return x.reshape(batch, frames, channels, height, width)


def token_steps(cfg: ModelConfig) -> int:
    """T' = clip_len / token_frames, the time steps of the token grid (and of every mask).

    ValueError when token_frames does not divide clip_len.
    """
    if cfg.clip_len % cfg.token_frames:
        raise ValueError(f"clip length {cfg.clip_len} is not divisible by token_frames {cfg.token_frames}")
    return cfg.clip_len // cfg.token_frames


def patch_grid(cfg: ModelConfig) -> tuple[int, int]:
    """(rows, cols) = (H / p, W / p): the spatial patches of one frame (N = rows * cols)."""
    return cfg.image_size[0] // cfg.patch_size, cfg.image_size[1] // cfg.patch_size


def patch_dim(cfg: ModelConfig) -> int:
    """P = k * p * p * 3: the pixels of one token, the width of a patchify row."""
    return cfg.token_frames * cfg.patch_size * cfg.patch_size * 3


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(n,) positions -> (n, dim) fixed codes: sin and cos of positions at dim / 2 geometric frequencies."""
    freqs = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / max(dim // 2, 1))
    angles = positions.double()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_3d(dim: int, steps: int, rows: int, cols: int) -> torch.Tensor:
    """(T, R * C, dim) fixed position codes of T = `steps` token time steps: time, row and column codes
    in separate channel groups.

    A quarter of the channels code the time step and the rest are split between row and column, so
    tokens at the same place in different frames share most of their code (and vice versa).
    """
    if dim % 2:
        raise ValueError(f"sincos position codes need an even width, got {dim}")
    time_dim = 2 * (dim // 8)
    row_dim = 2 * ((dim - time_dim) // 4)
    col_dim = dim - time_dim - row_dim
    t = sincos_1d(time_dim, torch.arange(steps))[:, None, None, :].expand(steps, rows, cols, -1)
    r = sincos_1d(row_dim, torch.arange(rows))[None, :, None, :].expand(steps, rows, cols, -1)
    c = sincos_1d(col_dim, torch.arange(cols))[None, None, :, :].expand(steps, rows, cols, -1)
    return torch.cat([t, r, c], dim=-1).reshape(steps, rows * cols, dim)


def add_position_codes(module: nn.Module, cfg: ModelConfig, dim: int) -> None:
    """Give `module` position codes of width `dim` for every token, read back by `position_codes`.

    learned: parameters space_pos (1, 1, N, dim) and time_pos (1, T', 1, dim), truncated normal
    (std 0.02, drawn in that order). sincos: a buffer fixed_pos (1, L, dim), kept out of the state
    dict (fixed codes are not learned state).
    """
    steps, (rows, cols) = token_steps(cfg), patch_grid(cfg)
    if cfg.pos_embed == "learned":
        module.space_pos = nn.Parameter(torch.zeros(1, 1, rows * cols, dim))
        module.time_pos = nn.Parameter(torch.zeros(1, steps, 1, dim))
        for param in (module.space_pos, module.time_pos):
            nn.init.trunc_normal_(param, std=0.02)
    elif cfg.pos_embed == "sincos":
        codes = sincos_3d(dim, steps, rows, cols).reshape(1, -1, dim)
        module.register_buffer("fixed_pos", codes, persistent=False)
    else:
        raise ValueError(f"unknown pos_embed {cfg.pos_embed!r}; use one of {', '.join(POSITION_KINDS)}")


def position_codes(module: nn.Module) -> torch.Tensor:
    """(1, L, dim): the codes `add_position_codes` gave `module`, one row per token in token order."""
    if hasattr(module, "fixed_pos"):
        return module.fixed_pos
    steps, per_frame = module.time_pos.shape[1], module.space_pos.shape[2]
    return (module.space_pos + module.time_pos).reshape(1, steps * per_frame, -1)


def transformer_blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.TransformerEncoder:
    """`depth` pre-norm transformer blocks (GELU MLP of mlp_ratio * dim, no dropout) on (B, L, dim) tokens."""
    layer = nn.TransformerEncoderLayer(
        dim, heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
