"""Which tokens the encoder sees: masks drawn from the model config and a seeded generator.

    ids_keep, mask = draw_mask(cfg, batch, generator)   # (B, L_vis) int64 sorted, (B, L) bool True = hidden

Masking works on units counted in token time steps (cfg.mask_type, MASK_TYPES), so every clip
keeps the same number of tokens and the batch stays rectangular. The draw is a pure function of
the config, the batch size and the generator's state (the trainer seeds it from (seed, step, rank):
mvm.train.engine.mask_generator).
"""

from __future__ import annotations

import torch

from mvm.train.config import FUTURE_MASKS, ModelConfig
from mvm.train.tokens import patch_grid, token_steps

MASK_TYPES = ("tube", "tubelet", "random", "future", "future-tube")
"""Masking units, counted in token time steps: tube = one spatial patch through all T' steps
(VideoMAE); tubelet = one spatial patch through `mask_tubelet` consecutive steps; random = one token;
future = the last `hidden_steps` whole time steps (predict what comes next; the same for every clip);
future-tube = the last `hidden_steps` time steps hidden, and a tube (one spatial patch through every
earlier step) is the unit over the visible steps."""


def future_steps(steps: int, ratio: float) -> int:
    """Token time steps the `future` mask hides of steps >= 2 when cfg.future_steps is 0 (the rule
    before that field existed): Python's round(steps * ratio) (halves to even), at least 1 and at
    most steps - 1."""
    return min(steps - 1, max(1, round(steps * ratio)))


def hidden_steps(cfg: ModelConfig) -> int:
    """Token time steps hidden whole at the clip's end: cfg.future_steps for the future and future-tube
    masks (future with future_steps 0: future_steps(T, mask_ratio)); 0 for the other masks.

    ValueError when they would leave no visible step (or none are hidden for future-tube).
    """
    if cfg.mask_type not in FUTURE_MASKS:
        return 0
    steps = token_steps(cfg)
    if steps < 2:
        raise ValueError(f"the {cfg.mask_type} mask needs at least 2 token time steps")
    if cfg.mask_type == "future-tube" and cfg.future_steps < 1:
        raise ValueError("the future-tube mask needs future_steps >= 1")
    hidden = cfg.future_steps or future_steps(steps, cfg.mask_ratio)
    if hidden >= steps:
        raise ValueError(f"future_steps {hidden} leaves none of the {steps} token time steps visible")
    return hidden


def mask_units(cfg: ModelConfig) -> tuple[int, int, int]:
    """(block, units, kept units) of cfg's mask over its T = token_steps(cfg) time steps and N patches
    per frame: units of `block` consecutive steps at one position (block = T for tube, mask_tubelet
    for tubelet, 1 for random), U = (T / block) * N of them, of which round(U * (1 - mask_ratio)) are
    kept (at least one kept and one masked). Visible tokens = kept * block. future: units are
    tokens; the first T - hidden_steps(cfg) time steps are kept. future-tube: U = N tubes of block =
    T - hidden_steps(cfg) visible steps, round(N * (1 - mask_ratio)) kept (at least one, at most all
    N: the end steps are hidden anyway); the hidden steps belong to no unit.
    """
    steps, (rows, cols), kind = token_steps(cfg), patch_grid(cfg), cfg.mask_type
    patches_per_frame = rows * cols
    if kind not in MASK_TYPES:
        raise ValueError(f"unknown mask type {kind!r}; use one of {', '.join(MASK_TYPES)}")
    if kind == "future":
        return 1, steps * patches_per_frame, (steps - hidden_steps(cfg)) * patches_per_frame
    if kind == "future-tube":
        kept = min(max(1, round(patches_per_frame * (1 - cfg.mask_ratio))), patches_per_frame)
        return steps - hidden_steps(cfg), patches_per_frame, kept
    block = {"tube": steps, "tubelet": cfg.mask_tubelet, "random": 1}[kind]
    if block < 1 or steps % block:
        raise ValueError(f"{steps} token time steps are not divisible by the tubelet length {block}")
    units = (steps // block) * patches_per_frame
    return block, units, min(max(1, round(units * (1 - cfg.mask_ratio))), units - 1)


def draw_mask(cfg: ModelConfig, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample which tokens the encoder sees, for `batch` clips of cfg's token grid.

    Returns ids_keep (B, L_vis) int64 sorted token indices and mask (B, L) bool, True = masked,
    with L = T * N (T = token_steps(cfg) time steps, N patches per frame), both on the CPU.
    The kept units of `mask_units` are drawn independently per clip from `generator` (one torch.rand
    of (B, U)); future: the last hidden_steps(cfg) time steps masked in every clip, and the generator
    is not used; future-tube: the last hidden_steps(cfg) time steps masked in every clip, and the same
    drawn positions kept through every earlier step.
    """
    block, units, keep = mask_units(cfg)
    steps, (rows, cols) = token_steps(cfg), patch_grid(cfg)
    patches_per_frame = rows * cols
    if cfg.mask_type == "future":  # no randomness: the first `keep` tokens (whole time steps) are visible
        ids_keep = torch.arange(keep).expand(batch, -1).contiguous()
        mask = torch.ones(batch, units, dtype=torch.bool)
        mask[:, :keep] = False
        return ids_keep, mask
    # future-tube: U = N units (positions), block = the visible steps, so tb is always 0 and the end stays masked
    kept_units = torch.rand(batch, units, generator=generator).argsort(dim=1)[:, :keep]  # (B, K)
    # unit u = time block tb * N + position n covers tokens (tb * block + j) * N + n, j < block
    first_token = (
        kept_units // patches_per_frame
    ) * block * patches_per_frame + kept_units % patches_per_frame
    offsets = torch.arange(block) * patches_per_frame  # (block,)
    ids_keep = (first_token.unsqueeze(-1) + offsets).reshape(batch, -1).sort(dim=1).values
    mask = torch.ones(batch, steps * patches_per_frame, dtype=torch.bool)
    mask.scatter_(1, ids_keep, False)
    return ids_keep, mask


def hidden_fraction(cfg: ModelConfig) -> float:
    """Share of the clip's tokens hidden from the encoder by cfg's mask (every clip hides as many):
    1 - visible / (T * N), e.g. 0.8125 for future-tube with 1 of 4 steps hidden and 7 of 28 positions kept."""
    block, _, kept = mask_units(cfg)
    steps, (rows, cols) = token_steps(cfg), patch_grid(cfg)
    return 1 - kept * block / (steps * rows * cols)
