"""Training diagnostics a shortcut or a collapse cannot hide: copy_loss, RankMe and temporal spread.

copy_loss (logged in metrics.jsonl next to the loss): the masked-patch loss of a model that
cannot see, only copy: each frame of a masked patch is predicted by the nearest-in-time visible
frame at the same spatial position (the earlier one on a tie), scored in the same target space as
the model's loss (per-patch normalized when the targets are). A position with no visible patch in
the whole clip gets the clip's mean visible patch. (Frame by frame since the camera-motion
prediction; earlier logs copied whole 2-frame tokens, a weaker baseline by one frame.) When the
training loss is not clearly below copy_loss, the model may be doing no more than copying; random
masking of one-frame tokens makes copying cheap (copy_loss far below the mean-patch loss), tube
masking makes it impossible.

Collapse signals, computed on one batch with ONE mask shared by every clip (so neither a
per-clip mask nor position embeddings can make identical clips look different):
- rankme: the effective rank (Garrido et al. 2023, RankMe) of the batch-centred pooled embeddings,
  exp of the entropy of the normalized singular values; 0 when they are all equal. A constant or
  position-only encoder gives 0; a healthy encoder gives several.
- time_spread: how much a clip's tokens move over time beyond what position explains: tokens minus
  their batch mean at the same token (removes position and mask), averaged per frame, std over the
  frames, relative to the std of the tokens themselves. 0 for a constant or position-only encoder.

    signals = collapse_signals(model, video, shared_mask_ids)   # {"rankme": ..., "time_spread": ...}
    reasons = collapse_reasons(signals, config.collapse_rankme, config.collapse_time_spread)

Thresholds (TrainConfig: rankme < 1.05 or time_spread < 0.001 warns). A constant or
position-only encoder gives 0 for both (below 1e-5 in floating point). Measured with the round-3
tiny preset (random 0.9 masking, pixel decoder) on the seed-1 development data (batches of 16
training clips): at initialisation RankMe 1.4-1.5 and spread 0.03; random or tubelet-2 masking 0.75 ends at RankMe 4.5-4.9, spread
0.05-0.06 (lowest on the way 1.37 / 0.017); tube masking ends at RankMe 2.5-3.7, spread
0.008-0.047, after a loss plateau (steps ~70-350) with RankMe down to 1.13 and spread down to 0.0022;
an earlier threshold of 0.005 fired 6 times in 300 steps of a healthy tube-0.9 mvm-train run
there, so the thresholds sit between that plateau and a real collapse. The camera-motion tiny
preset's demo run ends at RankMe 9.8, spread 0.10.
"""

from __future__ import annotations

import numpy as np
import torch

from mvm.train.config import ModelConfig
from mvm.train.masks import draw_mask
from mvm.train.model import masked_mse, normalize_patches
from mvm.train.tokens import patchify, unpatchify


def fixed_mask(cfg: ModelConfig, clips: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's fixed masks (for diagnostics and pictures), a pure function of the seed.

    Returns draw_mask's (ids_keep (clips, L_vis), mask (clips, L)) with the config's mask type and
    ratio, drawn from a generator no training step uses.
    """
    state = np.random.SeedSequence([seed, 0x46495845]).generate_state(1)[0]
    return draw_mask(cfg, clips, torch.Generator().manual_seed(int(state)))


def copy_predictions(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Predict every token by the nearest-in-time visible token at its spatial position.

    target (B, T, N, P) patches in target space; mask (B, T, N) bool, True = masked.
    Returns (B, T, N, P): visible tokens are themselves; a masked token copies the visible token
    at the same n with the smallest |t - s| (earlier s on a tie); a position with no visible
    token in the clip gets the mean of the clip's visible tokens.
    """
    frames = target.shape[1]
    time = torch.arange(frames, device=target.device)
    # cost (T_query, T_source): distance in frames, doubled so that +1 breaks ties towards earlier frames
    cost = 2 * (time[:, None] - time[None, :]).abs() + (time[None, :] > time[:, None]).long()
    big = 4 * frames
    cost = cost.view(1, frames, frames, 1) + big * mask.unsqueeze(1).long()  # (B, Tq, Ts, N)
    best, source = cost.min(dim=2)  # (B, Tq, N)
    copied = torch.gather(target, 1, source.unsqueeze(-1).expand(-1, -1, -1, target.shape[-1]))
    visible = (~mask).unsqueeze(-1).to(target.dtype)  # (B, T, N, 1)
    mean_patch = (target * visible).sum(dim=(1, 2)) / visible.sum(dim=(1, 2)).clamp(min=1)  # (B, P)
    has_source = (best < big).unsqueeze(-1)
    return torch.where(has_source, copied, mean_patch[:, None, None, :].expand_as(copied))


@torch.no_grad()
def copy_loss(
    video: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix_loss: bool, token_frames: int = 1
) -> float:
    """Masked-token MSE of copying, frame by frame, in the model's target space.

    video (B, T, 3, H, W) in [0, 1]; mask (B, L) bool with L = (T / k) * N tokens of k = token_frames
    frames, True = masked -> float. Each hidden frame of a hidden token copies the nearest visible
    frame at the same position (copy_predictions on the frame grid): with 2-frame tokens both hidden
    frames after a visible token copy its last frame, which is what a zero-motion prediction does.
    """
    batch, frames = video.shape[:2]
    patches = patchify(video.float(), patch_size, 1)  # (B, T * N, p * p * 3): one row per frame patch
    per_frame = patches.reshape(batch, frames, -1, patches.shape[-1])  # (B, T, N, p * p * 3)
    steps = frames // token_frames
    frame_mask = mask.to(video.device).reshape(batch, steps, 1, -1).expand(-1, -1, token_frames, -1)
    copied = copy_predictions(per_frame, frame_mask.reshape(batch, frames, -1))
    copied = unpatchify(copied.reshape_as(patches), frames, tuple(video.shape[-2:]), patch_size, 1)
    pred, target = (
        patchify(copied, patch_size, token_frames),
        patchify(video.float(), patch_size, token_frames),
    )
    if norm_pix_loss:
        pred, target = normalize_patches(pred), normalize_patches(target)
    # a position hidden in every step has nothing to copy: the clip's mean visible patch, in target space
    mask = mask.to(video.device)
    never_seen = (
        mask.reshape(batch, steps, -1).all(dim=1, keepdim=True).expand(-1, steps, -1).reshape_as(mask)
    )
    visible = (~mask).unsqueeze(-1).to(target.dtype)
    mean_patch = (target * visible).sum(dim=1, keepdim=True) / visible.sum(dim=1, keepdim=True).clamp(min=1)
    pred = torch.where(never_seen.unsqueeze(-1), mean_patch.expand_as(pred), pred)
    return masked_mse(pred, target, mask).item()


def effective_rank(embeddings: torch.Tensor, rel_tol: float = 1e-5) -> float:
    """RankMe of embeddings (B, D): exp(entropy of the singular values of the batch-centred matrix / their sum).

    Singular values below rel_tol times the embeddings' RMS norm (floating-point noise of identical
    rows) are dropped; with none left the rank is 0.
    """
    embeddings = embeddings.double()
    centred = embeddings - embeddings.mean(dim=0, keepdim=True)
    scale = embeddings.pow(2).sum(dim=1).mean().sqrt() * embeddings.shape[0] ** 0.5
    return rank_of_singular_values(torch.linalg.svdvals(centred), scale.item(), rel_tol)


def rank_of_singular_values(values: torch.Tensor, scale: float, rel_tol: float = 1e-5) -> float:
    """exp(entropy of values / their sum) over the singular values (K,) above rel_tol x scale; 0 when none is.

    scale: the Frobenius norm of the embeddings themselves (not of their centred residual), so the
    float noise of a constant or position-only encoder is dropped rather than counted.
    """
    values = values.double()
    values = values[values > rel_tol * max(scale, 1e-30)]
    if values.numel() == 0:
        return 0.0
    share = values / values.sum()
    return float(torch.exp(-(share * share.log()).sum()))


@torch.no_grad()
def collapse_signals(model: torch.nn.Module, video: torch.Tensor, ids_keep: torch.Tensor) -> dict[str, float]:
    """rankme and time_spread of `model`'s encoder on one batch (see the module docstring).

    video (B, T, 3, H, W) in [0, 1]; ids_keep (L_vis,) sorted token indices, one mask for every clip.
    The model runs in eval mode; its mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        batch, steps = video.shape[0], model.token_steps
        shared = ids_keep.view(1, -1).expand(batch, -1).to(video.device)
        patches = patchify(video, model.cfg.patch_size, model.cfg.token_frames)
        tokens = model.encode(patches, shared).float()  # (B, L_vis, d)
    finally:
        model.train(was_training)
    rankme = effective_rank(tokens.mean(dim=1))
    residual = tokens - tokens.mean(dim=0, keepdim=True)  # what position and mask do not explain
    step_of = ids_keep.to(video.device) // model.patches_per_frame  # (L_vis,) token time step
    onehot = torch.nn.functional.one_hot(step_of, steps).float()  # (L_vis, T')
    present = onehot.sum(dim=0) > 0
    per_frame = torch.einsum("bld,lt->btd", residual, onehot) / onehot.sum(dim=0).clamp(min=1).view(1, -1, 1)
    per_frame = per_frame[:, present]  # (B, T_vis, d)
    spread = per_frame.std(dim=1).mean() if per_frame.shape[1] > 1 else torch.zeros(())
    scale = tokens.std(dim=(0, 1)).mean().clamp(min=1e-12)
    return {"rankme": rankme, "time_spread": float(spread / scale)}


def logged_step_diagnostics(
    model: torch.nn.Module, video: torch.Tensor, mask: torch.Tensor, shared_ids_keep: torch.Tensor
) -> dict[str, float]:
    """What mvm-train adds to each metrics.jsonl step line, from that step's batch (not a window mean).

    video (B, T, 3, H, W) in [0, 1]; mask (B, L) the step's training masks; shared_ids_keep (L_vis,)
    the run's one shared mask. Returns {"copy_loss", "rankme", "time_spread"}. Computed on logged
    steps only: copy_loss alone costs ~15% of a tiny-preset CPU step, so every step would be too much.
    """
    cfg = model.cfg
    return {
        "copy_loss": copy_loss(video, mask, cfg.patch_size, cfg.norm_pix_loss, cfg.token_frames),
        **collapse_signals(model, video, shared_ids_keep),
    }


def collapse_reasons(signals: dict[str, float], min_rankme: float, min_time_spread: float) -> list[str]:
    """Human-readable reasons the signals indicate a collapsed encoder (empty when healthy)."""
    reasons = []
    if signals["rankme"] < min_rankme:
        reasons.append(
            f"effective rank of pooled embeddings {signals['rankme']:.2f} < {min_rankme} "
            "(clips look alike to the encoder)"
        )
    if signals["time_spread"] < min_time_spread:
        reasons.append(
            f"token spread over time {signals['time_spread']:.4f} < {min_time_spread} "
            "(the encoder ignores how a clip changes)"
        )
    return reasons
