"""One optimizer step: forward, masked loss, backward, gradient all-reduce, non-finite guard, update.

Data parallelism is done by hand instead of with DistributedDataParallel: gradients are
averaged with one timed all_reduce per ~25M-element bucket after backward. It gives up DDP's
overlap of communication with backward, and in exchange `comm_frac` is measured exactly (the
wall time of the all-reduce calls over the step time) and torch.compile sees a plain module.
At the model sizes here the all-reduce is a small share of a step; metrics.jsonl says how small.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from train.config import OptimConfig

BUCKET_ELEMENTS = 25_000_000
"""Gradient elements per all_reduce call (DDP's default bucket is 25 MB; larger buckets mean fewer calls)."""


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio * lr."""
    warmup = max(1, min(cfg.warmup_steps, total_steps // 10))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and conv kernels only (not biases, norms, embeddings, mask token)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and param.shape[0] > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allreduce_gradients(params: list[torch.nn.Parameter], world: int, device: torch.device) -> float:
    """Average gradients over ranks in place; returns the seconds spent (device-synchronized)."""
    grads = [p.grad for p in params if p.grad is not None]
    _sync(device)
    start = time.perf_counter()
    bucket: list[torch.Tensor] = []
    for index, grad in enumerate(grads):
        bucket.append(grad)
        if index == len(grads) - 1 or sum(g.numel() for g in bucket) >= BUCKET_ELEMENTS:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket = []
    _sync(device)
    return time.perf_counter() - start


@dataclass
class StepStats:
    """What one step measured."""

    loss: float
    """Masked-patch MSE of this rank's batch (NaN/Inf when non-finite)."""
    grad_norm: float
    """Global L2 norm of the averaged gradients before clipping."""
    emb_std: float
    """Per-dimension std over the batch of pooled visible-token embeddings, averaged over dimensions."""
    emb_norm: float
    """Mean L2 norm of the pooled embeddings."""
    finite: bool
    """False when loss or gradients were non-finite; the update was then skipped on every rank."""
    comm_s: float
    """Seconds in the gradient all-reduce (0 on one process)."""
    pred: torch.Tensor
    """Predicted patches (B, L, p * p * 3), detached, for visualization."""


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    video: torch.Tensor,
    ids_keep: torch.Tensor,
    mask: torch.Tensor,
    *,
    lr: float,
    grad_clip: float,
    world: int,
    autocast: bool,
    poison: bool = False,
) -> StepStats:
    """One update on video (B, T, 3, H, W), ids_keep (B, L_vis), mask (B, L) (all on the model's device).

    The skip decision uses the all-reduced gradient norm, which is identical on every rank, so
    ranks never disagree about whether a step happened (a NaN on one rank poisons every rank's
    averaged gradient). `poison` multiplies the loss by NaN (the debug_nan_at_step test hook).
    """
    device = video.device
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(video, ids_keep, mask)
    loss = out["loss"] * float("nan") if poison else out["loss"]
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    comm_s = allreduce_gradients(params, world, device) if world > 1 else 0.0
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads).item()
    finite = math.isfinite(grad_norm) and math.isfinite(loss.item())
    if world > 1:
        # Losses are local: agree on the decision so optimizer states never diverge.
        flag = torch.tensor([1.0 if finite else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = bool(flag.item())
    if finite:
        if grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, grad_clip, torch.tensor(grad_norm))
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    pooled = out["pooled"].detach().float()
    return StepStats(
        loss=loss.item(),
        grad_norm=grad_norm,
        emb_std=pooled.std(dim=0).mean().item() if pooled.shape[0] > 1 else 0.0,
        emb_norm=pooled.norm(dim=1).mean().item(),
        finite=finite,
        comm_s=comm_s,
        pred=out["pred"].detach(),
    )
