"""One optimizer step on one rank (`step_on_batch`, what mvm-train and bench/gpu.py run): the
step's masks and learning rate, forward (bf16 autocast on CUDA), masked loss, backward with
DistributedDataParallel's overlapped gradient all-reduce, non-finite guard, clipping, fused AdamW.

No host-device synchronisation happens here: everything a step measures stays a device tensor
(`StepStats`) until the loop reads a whole logging window at once. The non-finite guard therefore
skips the update *on the device*: fused AdamW takes a `found_inf` flag (the same mechanism
torch.amp.GradScaler uses) and leaves weights, moments and its step counter untouched when it is 1.
All ranks agree on the flag: it is computed from the all-reduced gradients and then MIN-reduced
across ranks, so optimizer states never diverge.

Communication: `wrap_model` wraps the model in DDP (gloo on CPU, NCCL on CUDA) with a
communication hook (`CommTimer`) that averages each gradient bucket, exactly as DDP's default
hook does, and records when each bucket's all-reduce was launched and when it finished.
`comm_frac` = (sum over buckets of launch-to-finish time) / step wall time. The buckets are
launched during backward and overlap it (and each other), so comm_frac is the share of the step
during which communication was in flight, an upper bound on its cost; the *exposed* cost is
measured by comparing step times at world N and world 1 (`mvm-report`'s ddp_overhead).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mvm.train.config import OptimConfig, TrainConfig
from mvm.train.masks import draw_mask


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio * lr."""
    warmup = max(1, min(cfg.warmup_steps, total_steps // 10))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Fused AdamW (one kernel for all parameters; CPU and CUDA) with weight decay on matrices and
    conv kernels only (not biases, norms, embeddings, mask token)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and param.shape[0] > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, state: dict, saved_names: list[str]
) -> None:
    """optimizer.load_state_dict(state) of a checkpoint whose model held its parameters in the order of
    `saved_names` (its state-dict keys, in current names: mvm.train.model.renamed_keys).

    An optimizer state numbers the parameters of each group in the model's order; each parameter's
    moments are matched here by name instead, so a checkpoint saved before the decoders had their own
    modules (the mask token and decoder positions came first then) resumes exactly.
    """
    names = {id(param): name for name, param in model.named_parameters()}
    saved_at = {name: index for index, name in enumerate(saved_names)}
    moments, groups, first = {}, [], 0
    for group, saved_group in zip(optimizer.param_groups, state["param_groups"], strict=True):
        current = [names[id(param)] for param in group["params"]]
        saved_ids = dict(zip(sorted(current, key=saved_at.__getitem__), saved_group["params"], strict=True))
        ids = list(range(first, first + len(current)))
        for name, index in zip(current, ids, strict=True):
            if saved_ids[name] in state["state"]:
                moments[index] = state["state"][saved_ids[name]]
        groups.append({**saved_group, "params": ids})
        first += len(current)
    optimizer.load_state_dict({"state": moments, "param_groups": groups})


class CommTimer:
    """DDP communication hook: average a gradient bucket over ranks and time its all-reduce.

    CPU (gloo): wall-clock launch and completion times (the completion callback runs when the
    all-reduce returns). CUDA (NCCL): CUDA events recorded before the all-reduce and in the
    completion callback, on the stream that runs it; read only by `take_seconds`, so timing adds no
    synchronisation to the step.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_seconds = 0.0
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def hook(self, state, bucket):  # no annotations: DDP rejects string (postponed) ones
        """DDP's allreduce_hook (divide by world, sum over ranks) plus timing.

        state: unused (None); bucket: dist.GradBucket; returns a Future of the averaged bucket.
        """
        buffer = bucket.buffer().div_(dist.get_world_size())
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            launched = time.perf_counter()
        future = dist.all_reduce(buffer, async_op=True).get_future()

        def finished(fut: torch.futures.Future) -> torch.Tensor:
            if self.cuda:
                end.record()
                self.events.append((start, end))
            else:
                self.cpu_seconds += time.perf_counter() - launched
            return fut.value()[0]

        return future.then(finished)

    def take_seconds(self) -> float:
        """Seconds of all-reduce since the last call (synchronises with the recorded CUDA events)."""
        seconds = self.cpu_seconds + sum(start.elapsed_time(end) / 1000 for start, end in self._done())
        self.cpu_seconds, self.events = 0.0, []
        return seconds

    def _done(self) -> list[tuple[torch.cuda.Event, torch.cuda.Event]]:
        for _, end in self.events:
            end.synchronize()
        return self.events


def wrap_model(
    model: torch.nn.Module,
    device: torch.device,
    world: int,
    compile_model: bool,
    compile_mode: str = "default",
) -> tuple[torch.nn.Module, CommTimer | None]:
    """(the module the step runs, its CommTimer or None on one process).

    world > 1: DistributedDataParallel (buckets all-reduced during backward) with the timing hook.
    compile_model: torch.compile on the outside, so DDP's graph splitting at bucket boundaries
    (DDPOptimizer) keeps the overlap; compile_mode: a TrainConfig.compile_mode (torch.compile's
    mode). Checkpoints always save `model` itself, never the wrappers.
    """
    timer = None
    if world > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
        )
        timer = CommTimer(device)
        model.register_comm_hook(None, timer.hook)
    if compile_model:
        model = torch.compile(model, mode=compile_mode)
    return model, timer


@dataclass
class StepStats:
    """What one step measured, as device tensors (read by the loop once per logging window)."""

    values: torch.Tensor
    """float32 (5,): [finite (1/0, the same on every rank), loss, grad_norm, emb_std, emb_norm]."""


STAT_NAMES = ("finite", "loss", "grad_norm", "emb_std", "emb_norm")
"""Order of StepStats.values. loss: this rank's masked-patch MSE; grad_norm: global L2 norm of the
averaged gradients before clipping; emb_std: per-dimension std over the batch of pooled
visible-token embeddings, averaged over dimensions; emb_norm: mean L2 norm of those embeddings."""


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    video: torch.Tensor,
    ids_keep: torch.Tensor,
    mask: torch.Tensor,
    *,
    lr: float,
    grad_clip: float,
    bf16: bool,
) -> StepStats:
    """One update on video (B, T, 3, H, W) float in [0, 1], ids_keep (B, L_vis), mask (B, L) bool.

    `model` is what `wrap_model` returned; under DDP, backward() returns with gradients already
    averaged over ranks. bf16: autocast matmuls to bfloat16 (weights, gradients and optimizer
    state stay float32).
    """
    device = video.device
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(video, ids_keep, mask)
    loss = out["loss"].float()
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    finite = torch.isfinite(grad_norm) & torch.isfinite(loss)
    flag = finite.float().reshape(1)
    if dist.is_initialized() and dist.get_world_size() > 1:
        # A NaN on one rank already poisons every rank's averaged gradients; the MIN makes the
        # agreement explicit (losses are local) without a host round trip.
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if grad_clip > 0:
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, grad_norm)
    optimizer.found_inf = 1.0 - flag[0]  # fused AdamW skips the whole update where found_inf is 1
    optimizer.step()
    pooled = out["pooled"].detach().float()
    emb_std = pooled.std(dim=0).mean() if pooled.shape[0] > 1 else pooled.new_zeros(())
    values = torch.stack([flag[0], loss.detach(), grad_norm.float(), emb_std, pooled.norm(dim=1).mean()])
    return StepStats(values=values)


def mask_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Masks are a pure function of (seed, step, rank): a resumed run draws the same masks."""
    state = np.random.SeedSequence([seed, step, rank, 0x4D41534B]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def step_on_batch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    video: torch.Tensor,
    config: TrainConfig,
    step: int,
    rank: int,
    *,
    bf16: bool,
) -> tuple[StepStats, torch.Tensor]:
    """The trainer's step `step` (0-based) on this rank's batch video (B, T, 3, H, W) float in [0, 1].

    Draws the masks from mask_generator(seed, step, rank) on the host, takes the learning rate of
    the schedule and config's gradient clipping, and runs train_step. Returns its StepStats and
    the mask (B, L) bool on the host, True = hidden (the logged step's diagnostics read it).
    """
    ids_keep, mask = draw_mask(config.model, video.shape[0], mask_generator(config.seed, step, rank))
    device = video.device
    stats = train_step(
        model, optimizer, video, ids_keep.to(device, non_blocking=True), mask.to(device, non_blocking=True),
        lr=lr_at(step, config.optim, config.steps), grad_clip=config.optim.grad_clip, bf16=bf16,
    )  # fmt: skip
    return stats, mask
