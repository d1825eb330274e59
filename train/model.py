"""Masked video model: patch-local CNN embedding, space-time transformer encoder on the visible
tokens, one decoder chosen by cfg.prediction, MSE on the masked patches (MAE's forward_encoder /
forward_decoder / forward_loss).

    latent = model.encode(patchify(video, p, k), ids_keep)      # (B, L_vis, embed_dim)
    pred = model.decoder(latent, ids_keep, video)              # (B, L, k * p * p * 3)
    loss = masked_mse(pred, target, mask)

Decoders (`DECODERS`, one interface: `Decoder`): "pixels", MAE's light transformer with mask tokens
that predicts each hidden patch's pixels (train/pixel_decoder.py); "camera-motion", the hidden last
frames as the last visible frame moved by a camera motion read from the visible tokens
(train/motion.py); "hybrid", the pixel decoder on the tube-masked tokens of the visible steps and
the camera-motion warp on the hidden last steps (train/hybrid_decoder.py). Token order and the patch layout: train/tokens.py; masks: train/masks.py.

No cheating: the visible tokens' pixels are gathered *before* the CNN stem, and the stem runs
on each token separately (no normalization across patches or clips), so masked pixels never
reach the encoder (tests/test_train_model.py proves the gradient is exactly zero).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mvm.train.config import PREDICTIONS, ModelConfig
from mvm.train.hybrid_decoder import HybridDecoder
from mvm.train.motion import CameraMotionDecoder
from mvm.train.pixel_decoder import PixelDecoder
from mvm.train.tokens import (
    add_position_codes,
    patch_grid,
    patchify,
    position_codes,
    token_steps,
    transformer_blocks,
)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(..., P) -> (..., P): each patch to zero mean, unit variance over its own pixels."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked tokens only. pred, target (B, L, P); mask (B, L) bool -> scalar."""
    per_token = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum()


PIXEL_MEAN, PIXEL_STD = 0.45, 0.225
"""Stem inputs are standardized with these (ImageNet's mean and std, rounded) when cfg.input_norm:
with unit-scale inputs a stem's content features are not lost under the position codes, in random
and trained encoders alike (measured on dev clips: a random stem's clip-to-clip variation is 0.016 RMS on raw [0, 1] inputs,
0.077 standardized, against 0.71 for the sine-cosine codes)."""


class PatchStem(nn.Module):
    """Patch-local CNN: each token's (k frames x 3, p, p) pixels -> one embed_dim vector, never
    looking outside the token.

    A 3x3 stride-2 conv over the k frames' colour channels stacked (so with k = 2 the first layer
    already sees local motion; zero padding at the patch border, GELU), then a conv whose kernel
    covers the whole half-size patch. No batch/group norm: those would mix statistics across patches.
    """

    def __init__(
        self, patch_size: int, channels: int, embed_dim: int, token_frames: int = 1, input_norm: bool = True
    ):
        super().__init__()
        if patch_size % 2:
            raise ValueError(f"patch_size must be even, got {patch_size}")
        self.patch_size = patch_size
        self.token_frames = token_frames
        self.mean, self.std = (PIXEL_MEAN, PIXEL_STD) if input_norm else (0.0, 1.0)
        self.conv1 = nn.Conv2d(3 * token_frames, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, embed_dim, patch_size // 2)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, K, k * p * p * 3) tokens as from patchify -> (B, K, embed_dim)."""
        batch, count, _ = patches.shape
        p, k = self.patch_size, self.token_frames
        x = (patches.reshape(batch * count, k, p, p, 3) - self.mean) / self.std
        x = x.permute(0, 1, 4, 2, 3).reshape(batch * count, 3 * k, p, p)
        x = self.conv2(F.gelu(self.conv1(x)))
        return x.reshape(batch, count, -1)


class Decoder(Protocol):
    """What the model asks of its decoder: every token's prediction from the visible tokens.

    latent (B, L_vis, embed_dim) encoder features of the tokens ids_keep (B, L_vis); video
    (B, T, 3, H, W) the input clip in [0, 1] -> pred (B, L, k * p * p * 3) in the loss's target space.
    """

    def __call__(self, latent: torch.Tensor, ids_keep: torch.Tensor, video: torch.Tensor) -> torch.Tensor: ...


DECODERS = {"pixels": PixelDecoder, "camera-motion": CameraMotionDecoder, "hybrid": HybridDecoder}
"""cfg.prediction -> the decoder class, built as DECODERS[cfg.prediction](cfg)."""

RENAMED_KEYS = (
    ("mask_token", "decoder.mask_token"),
    ("decoder_space_pos", "decoder.space_pos"),
    ("decoder_time_pos", "decoder.time_pos"),
    ("decoder_embed.", "decoder.embed."),
    ("decoder.layers.", "decoder.blocks.layers."),
    ("decoder_norm.", "decoder.norm."),
    ("head.", "decoder.head."),
    ("motion_head.", "decoder.head."),
)
"""(old prefix, new prefix) of state-dict keys saved before the decoders had their own modules; no
current key starts with an old prefix, so renaming a current state dict changes nothing."""


def renamed_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model state dict with the keys of older checkpoints renamed to the current ones (RENAMED_KEYS)."""
    renamed = {}
    for key, value in state.items():
        for old, new in RENAMED_KEYS:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


class MaskedVideoModel(nn.Module):
    """MAE-style masked video model; see the module docstring for the parts and the no-leak rule."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        height, width = cfg.image_size
        if height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(f"image size {cfg.image_size} is not divisible by patch size {cfg.patch_size}")
        if cfg.clip_len < 2:
            raise ValueError(f"clip_len must be at least 2 (motion needs two frames), got {cfg.clip_len}")
        if cfg.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {cfg.prediction!r}; use one of {', '.join(PREDICTIONS)}")
        self.cfg = cfg
        self.token_steps = token_steps(cfg)
        self.grid = patch_grid(cfg)
        self.patches_per_frame = self.grid[0] * self.grid[1]
        # Creation order is the order of the random initial draws: stem, encoder, positions, decoder.
        self.stem = PatchStem(
            cfg.patch_size, cfg.stem_channels, cfg.embed_dim, cfg.token_frames, cfg.input_norm
        )
        self.encoder = transformer_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        self.encoder_norm = nn.LayerNorm(cfg.embed_dim)
        add_position_codes(self, cfg, cfg.embed_dim)
        self.decoder: Decoder = DECODERS[cfg.prediction](cfg)

    def encode(self, patches: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        """Encoder on the kept tokens only.

        patches (B, L, k * p * p * 3) from patchify; ids_keep (B, L_vis) or None for all tokens.
        Returns normalized token features (B, L_vis, embed_dim).
        """
        pos = position_codes(self).expand(patches.shape[0], -1, -1)  # (B, L, embed_dim)
        if ids_keep is not None:
            patches = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            pos = torch.gather(pos, 1, ids_keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
        tokens = self.stem(patches) + pos
        return self.encoder_norm(self.encoder(tokens))

    def forward(
        self, video: torch.Tensor, ids_keep: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """video (B, T, 3, H, W) in [0, 1]; ids_keep (B, L_vis); mask (B, L) bool, True = masked.

        Returns loss (scalar, MSE on masked patches), pred (B, L, k * p * p * 3) in target space
        (per-patch normalized when cfg.norm_pix_loss), and pooled (B, embed_dim): the mean of
        the visible tokens' features, for the emb_std/emb_norm health metrics.
        """
        patches = patchify(video, self.cfg.patch_size, self.cfg.token_frames)
        latent = self.encode(patches, ids_keep)
        pred = self.decoder(latent, ids_keep, video)
        target = normalize_patches(patches) if self.cfg.norm_pix_loss else patches
        return {"loss": masked_mse(pred, target, mask), "pred": pred, "pooled": latent.float().mean(dim=1)}

    @torch.no_grad()
    def token_grid(self, video: torch.Tensor) -> torch.Tensor:
        """Frozen-encoder token features of unmasked clips laid out in space and time.

        video (B, T, 3, H, W) float in [0, 1] -> (B, T', H / p, W / p, embed_dim) float32, with T'
        token time steps (T for one-frame tokens). The probes pool this (mvm/features.py).
        """
        patches = patchify(video, self.cfg.patch_size, self.cfg.token_frames)
        tokens = self.encode(patches, None).float()
        return tokens.reshape(video.shape[0], -1, *self.grid, tokens.shape[-1])

    @torch.no_grad()
    def token_layers(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every layer's token features of unmasked clips, laid out like token_grid, in one forward pass.

        video (B, T, 3, H, W) float in [0, 1] -> name -> (B, T', H / p, W / p, embed_dim) float32 for
        `stem` (the CNN stem's tokens without the position codes: what it made of each patch; the
        codes, the same in every clip, are added before the first block), `block1`..`block<N-1>`
        (each block's output, the residual stream) and `last` (the last block's output after the
        final norm: token_grid's features). The probe chooses among them (probe/layers.py).
        """
        patches = patchify(video, self.cfg.patch_size, self.cfg.token_frames)
        stem = self.stem(patches)
        layers = {"stem": stem}
        tokens = stem + position_codes(self).expand(patches.shape[0], -1, -1)
        for index, block in enumerate(self.encoder.layers, start=1):
            tokens = block(tokens)
            if index < len(self.encoder.layers):
                layers[f"block{index}"] = tokens
        layers["last"] = self.encoder_norm(tokens)
        return {
            name: value.float().reshape(video.shape[0], -1, *self.grid, value.shape[-1])
            for name, value in layers.items()
        }

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict, also of checkpoints saved with older key names (renamed_keys)."""
        return super().load_state_dict(renamed_keys(state_dict), strict=strict, assign=assign)


def build_model(model_cfg: ModelConfig) -> MaskedVideoModel:
    """A freshly initialised MaskedVideoModel (seed torch beforehand for a reproducible init)."""
    return MaskedVideoModel(model_cfg)
