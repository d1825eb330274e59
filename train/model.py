"""Masked video model: patch-local CNN embedding, space-time transformer encoder on visible
tokens, a light decoder, MSE on masked patches. Two decoders (cfg.prediction): "pixels", MAE's
light transformer with mask tokens that predicts each hidden patch's pixels; "camera-motion", the
hidden last frames as the last visible frame moved by a camera motion read from the visible tokens
(train/motion.py).

Tokens: one per (time step, spatial patch), ordered time-major: token l = t * N + n with
N = (H / p) * (W / p) patches per frame and L = T' * N tokens per clip. A token covers
k = cfg.token_frames consecutive frames of its patch (T' = T / k; k = 1: one token per frame,
k = 2: VideoMAE's 2-frame tubelet embedding, whose stem sees local motion directly).

No cheating: the visible tokens' pixels are gathered *before* the CNN stem, and the stem runs
on each token separately (no normalization across patches or clips), so masked pixels never
reach the encoder (tests/test_train_model.py proves the gradient is exactly zero).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvm.train.config import PREDICTIONS, ModelConfig
from mvm.train.motion import CameraMotionHead, camera_flow, warp


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


MASK_TYPES = ("tube", "tubelet", "random", "future")
"""Masking units, counted in token time steps: tube = one spatial patch through all T' steps
(VideoMAE); tubelet = one spatial patch through `tubelet` consecutive steps; random = one token;
future = the last `future_steps` whole time steps (predict what comes next; the same for every clip)."""


def future_steps(steps: int, ratio: float) -> int:
    """Token time steps the `future` mask hides of steps >= 2: Python's round(steps * ratio) (halves to
    even), at least 1 and at most steps - 1."""
    return min(steps - 1, max(1, round(steps * ratio)))


def mask_units(
    steps: int, patches_per_frame: int, ratio: float, kind: str, tubelet: int = 2
) -> tuple[int, int, int]:
    """(block, units, kept units) of a mask over `steps` = T token time steps: units of `block`
    consecutive steps at one position (block = T for tube, `tubelet` for tubelet, 1 for random),
    U = (T / block) * N of them, of which round(U * (1 - ratio)) are kept (at least one kept and
    one masked). Visible tokens = kept * block. future: units are tokens; the first
    T - future_steps(T, ratio) time steps are kept.
    """
    if kind not in MASK_TYPES:
        raise ValueError(f"unknown mask type {kind!r}; use one of {', '.join(MASK_TYPES)}")
    if kind == "future":
        if steps < 2:
            raise ValueError("the future mask needs at least 2 token time steps")
        return 1, steps * patches_per_frame, (steps - future_steps(steps, ratio)) * patches_per_frame
    block = {"tube": steps, "tubelet": tubelet, "random": 1}[kind]
    if block < 1 or steps % block:
        raise ValueError(f"{steps} token time steps are not divisible by the tubelet length {block}")
    units = (steps // block) * patches_per_frame
    return block, units, min(max(1, round(units * (1 - ratio))), units - 1)


def make_mask(
    batch: int,
    steps: int,
    patches_per_frame: int,
    ratio: float,
    kind: str,
    generator: torch.Generator,
    tubelet: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample which tokens the encoder sees.

    Returns ids_keep (B, L_vis) int64 sorted token indices and mask (B, L) bool, True = masked,
    with L = T * N (T = `steps` token time steps, N patches per frame). Masking works on units of `block`
    consecutive time steps at one spatial position (block = T for tube, `tubelet` for tubelet,
    1 for random): round(U * (1 - ratio)) of the U = (T / block) * N units are kept, so every clip
    keeps the same number of tokens (the batch stays rectangular). At least one unit is always
    kept and one masked. future: the last future_steps(T, ratio) time steps masked in every clip.
    """
    block, units, keep = mask_units(steps, patches_per_frame, ratio, kind, tubelet)
    if kind == "future":  # no randomness: the first `keep` tokens (whole time steps) are visible
        ids_keep = torch.arange(keep).expand(batch, -1).contiguous()
        mask = torch.ones(batch, units, dtype=torch.bool)
        mask[:, :keep] = False
        return ids_keep, mask
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


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        dim, heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


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


class MaskedVideoModel(nn.Module):
    """MAE-style masked video model; see the module docstring for token order and the no-leak rule."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        height, width = cfg.image_size
        if height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(f"image size {cfg.image_size} is not divisible by patch size {cfg.patch_size}")
        if cfg.clip_len < 2:
            raise ValueError(f"clip_len must be at least 2 (motion needs two frames), got {cfg.clip_len}")
        self.cfg = cfg
        self.token_steps = token_steps(cfg)
        self.patches_per_frame = (height // cfg.patch_size) * (width // cfg.patch_size)
        patch_dim = cfg.token_frames * cfg.patch_size * cfg.patch_size * 3
        self.stem = PatchStem(
            cfg.patch_size, cfg.stem_channels, cfg.embed_dim, cfg.token_frames, cfg.input_norm
        )
        self.encoder = _blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        self.encoder_norm = nn.LayerNorm(cfg.embed_dim)
        rows, cols = height // cfg.patch_size, width // cfg.patch_size
        self.grid = (rows, cols)
        if cfg.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {cfg.prediction!r}; use one of {', '.join(PREDICTIONS)}")
        self.camera_motion = cfg.prediction == "camera-motion"
        if self.camera_motion and (cfg.mask_type != "future" or cfg.norm_pix_loss or self.token_steps < 2):
            raise ValueError(
                "camera-motion prediction needs mask_type future, raw-pixel targets (norm_pix_loss off) and at "
                "least 2 token time steps"
            )
        transformer = not self.camera_motion  # MAE's light decoder: mask tokens, position codes, blocks
        if transformer:
            self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_dim)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        if cfg.pos_embed == "learned":
            self.space_pos = nn.Parameter(torch.zeros(1, 1, self.patches_per_frame, cfg.embed_dim))
            self.time_pos = nn.Parameter(torch.zeros(1, self.token_steps, 1, cfg.embed_dim))
            learned = [self.space_pos, self.time_pos]
            if transformer:
                self.decoder_space_pos = nn.Parameter(
                    torch.zeros(1, 1, self.patches_per_frame, cfg.decoder_dim)
                )
                self.decoder_time_pos = nn.Parameter(torch.zeros(1, self.token_steps, 1, cfg.decoder_dim))
                learned += [self.decoder_space_pos, self.decoder_time_pos]
            for param in learned:
                nn.init.trunc_normal_(param, std=0.02)
        elif cfg.pos_embed == "sincos":
            # Fixed codes are not learned state: kept out of the state dict (persistent=False).
            encoder_codes = sincos_3d(cfg.embed_dim, self.token_steps, rows, cols)
            self.register_buffer("fixed_pos", encoder_codes.reshape(1, -1, cfg.embed_dim), persistent=False)
            if transformer:
                decoder_codes = sincos_3d(cfg.decoder_dim, self.token_steps, rows, cols)
                self.register_buffer(
                    "decoder_fixed_pos", decoder_codes.reshape(1, -1, cfg.decoder_dim), persistent=False
                )
        else:
            raise ValueError(f"unknown pos_embed {cfg.pos_embed!r}; use learned or sincos")
        if transformer:
            self.decoder = _blocks(cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.mlp_ratio)
            self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
            self.head = nn.Linear(cfg.decoder_dim, patch_dim)
        else:
            hidden_frames = future_steps(self.token_steps, cfg.mask_ratio) * cfg.token_frames
            self.motion_head = CameraMotionHead(cfg.embed_dim, rows, cols, hidden_frames)

    def position(self, decoder: bool = False) -> torch.Tensor:
        """(1, L, d) position embedding of every token (d = embed_dim, or decoder_dim for the decoder)."""
        if self.cfg.pos_embed == "sincos":
            return self.decoder_fixed_pos if decoder else self.fixed_pos
        space, time = (
            (self.decoder_space_pos, self.decoder_time_pos) if decoder else (self.space_pos, self.time_pos)
        )
        return (space + time).reshape(1, self.token_steps * self.patches_per_frame, -1)

    def encode(self, patches: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        """Encoder on the kept tokens only.

        patches (B, L, k * p * p * 3) from patchify; ids_keep (B, L_vis) or None for all tokens.
        Returns normalized token features (B, L_vis, embed_dim).
        """
        pos = self.position().expand(patches.shape[0], -1, -1)
        if ids_keep is not None:
            patches = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            pos = torch.gather(pos, 1, ids_keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
        tokens = self.stem(patches) + pos
        return self.encoder_norm(self.encoder(tokens))

    def decode(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """latent (B, L_vis, embed_dim), ids_keep (B, L_vis) -> predicted tokens (B, L, k * p * p * 3)."""
        batch = latent.shape[0]
        tokens = self.token_steps * self.patches_per_frame
        visible = self.decoder_embed(latent)
        full = self.mask_token.to(visible.dtype).expand(batch, tokens, -1).clone()
        full = full.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, full.shape[-1]), visible)
        full = full + self.position(decoder=True)
        return self.head(self.decoder_norm(self.decoder(full)))

    def move_last_visible_frame(self, video: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Camera-motion decoder (train/motion.py): the hidden frames as the last visible frame warped.

        video (B, T, 3, H, W); latent (B, L_vis, d) of the `future` mask's visible tokens (the first
        T_vis time steps, in order) -> pred (B, L, k * p * p * 3): the input on visible tokens, the
        warped frame on hidden ones.
        """
        batch, k = video.shape[0], self.cfg.token_frames
        visible_steps = self.token_steps - future_steps(self.token_steps, self.cfg.mask_ratio)
        if latent.shape[1] != visible_steps * self.patches_per_frame:
            raise ValueError(
                f"camera-motion prediction needs the future mask's {visible_steps * self.patches_per_frame} "
                f"visible tokens, got {latent.shape[1]}"
            )
        params = self.motion_head(latent.reshape(batch, visible_steps, *self.grid, -1))  # (B, F, 3)
        last = video[:, visible_steps * k - 1]  # (B, 3, H, W)
        moved = warp(last, camera_flow(params.float(), self.cfg.image_size, self.cfg.patch_size))
        frames = torch.cat([video[:, : visible_steps * k], moved.to(video.dtype)], dim=1)
        return patchify(frames, self.cfg.patch_size, k)

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
        if self.camera_motion:
            pred = self.move_last_visible_frame(video, latent)
        else:
            pred = self.decode(latent, ids_keep)
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
        rows, cols = (
            self.cfg.image_size[0] // self.cfg.patch_size,
            self.cfg.image_size[1] // self.cfg.patch_size,
        )
        return tokens.reshape(video.shape[0], -1, rows, cols, tokens.shape[-1])


def build_model(model_cfg: ModelConfig) -> MaskedVideoModel:
    """A freshly initialised MaskedVideoModel (seed torch beforehand for a reproducible init)."""
    return MaskedVideoModel(model_cfg)
