"""The timed measurements of bench/gpu.py (`make bench-gpu`) and the MFU they report.

Each runs the trainer's own step (mvm.train.engine.step_on_batch): `synthetic_steps` on one random
on-device batch (the model alone), `loader_steps` fed by the real shard loader (data_wait_frac),
`ddp_scaling` at world 1 and N; `nvdec_check` compares NVDEC's decode with PyAV's on the same
clips, and `stage_profile` is the hook for the loader's per-stage profile.

MFU (model FLOPs utilisation) = training FLOPs per clip x clips/s / the chip's dense bf16 peak
(`PEAK_BF16_TFLOPS`; fp32 rows are divided by the same bf16 peak, so they show what fp32 leaves
unused). Training FLOPs = 3 x forward (backward ~ 2 x forward). Forward FLOPs per clip
(`forward_flops`), counting multiply-adds as 2 and only matmuls/convolutions, with patch p,
k frames per token, T' = T / k token steps, N = H W / p^2 patches per frame, L = T' N tokens,
V visible tokens (the mask keeps the same count in every clip), encoder width d, decoder width D,
MLP ratio r, stem channels C:
    stem (V tokens):      V [2 (p/2)^2 C 27 k + 2 d C (p/2)^2]
    encoder (V tokens):   depth [V (8 d^2 + 4 r d^2) + 4 V^2 d]      (qkv+out, MLP, QK^T and AV)
    decoder embed:        2 V d D
    decoder (L tokens):   decoder_depth [L (8 D^2 + 4 r D^2) + 4 L^2 D]
    head (L tokens):      2 L D 3 k p^2
or, with camera-motion prediction (train/motion.py; the warp is not a matmul), instead of the last three:
    motion head:          2 (3 N d) (3 h k)                        (h hidden token steps)
and with hybrid prediction (train/hybrid_decoder.py) the pixel decoder's three terms plus the motion head.
tests/test_bench_gpu.py checks it against torch.utils.flop_counter on the real model.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from mvm.atomic import write_atomic
from mvm.train.config import ModelConfig, TrainConfig
from mvm.train.engine import build_optimizer, step_on_batch, wrap_model
from mvm.train.masks import hidden_steps, mask_units
from mvm.train.model import build_model
from mvm.train.tokens import token_steps

PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
}
"""Dense bf16 tensor-core peaks (vendor datasheets, no sparsity); the first name found in the device name wins."""


def log(message: str) -> None:
    print(f"[bench.gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


def forward_flops(cfg: ModelConfig) -> float:
    """Forward FLOPs of one clip (formula in the module docstring)."""
    p, (height, width), steps, k = cfg.patch_size, cfg.image_size, token_steps(cfg), cfg.token_frames
    per_frame = (height // p) * (width // p)
    tokens = steps * per_frame
    block, _, kept = mask_units(cfg)
    visible = kept * block  # the same count draw_mask keeps
    d, dd, r, c, half = cfg.embed_dim, cfg.decoder_dim, cfg.mlp_ratio, cfg.stem_channels, (p // 2) ** 2
    stem = visible * (2 * half * c * 27 * k + 2 * d * c * half)
    encoder = cfg.depth * (visible * (8 * d * d + 4 * r * d * d) + 4 * visible * visible * d)
    motion = 2 * (3 * per_frame * d) * (3 * hidden_steps(cfg) * k)
    if cfg.prediction == "camera-motion":
        return float(stem + encoder + motion)
    decoder = cfg.decoder_depth * (tokens * (8 * dd * dd + 4 * r * dd * dd) + 4 * tokens * tokens * dd)
    pixels = 2 * visible * d * dd + decoder + 2 * tokens * dd * 3 * k * p * p
    return float(stem + encoder + pixels + (motion if cfg.prediction == "hybrid" else 0))


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a device name, or None when the chip is not in PEAK_BF16_TFLOPS."""
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if all(part in device_name for part in name.split()):
            return tflops
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_steps(
    config: TrainConfig,
    device: torch.device,
    *,
    bf16: bool,
    compile_mode: str | None,
    warmup: int,
    steps: int,
    world: int = 1,
    rank: int = 0,
) -> dict:
    """Time `steps` trainer steps (engine.step_on_batch, after `warmup`) on one random on-device batch of
    config.data.batch_size clips, on rank `rank` of `world`; compile_mode: a COMPILE_MODES entry, None = eager."""
    torch.manual_seed(config.seed)
    cfg_m, batch = config.model, config.data.batch_size
    model = build_model(cfg_m).to(device)
    optimizer = build_optimizer(model, config.optim)
    step_model, _ = wrap_model(model, device, world, compile_mode is not None, compile_mode or "default")
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(batch, cfg_m.clip_len, 3, *cfg_m.image_size, generator=generator).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for index in range(warmup):
        stats, _ = step_on_batch(step_model, optimizer, video, config, index, rank, bf16=bf16)
    _sync(device)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(warmup, warmup + steps):
        stats, _ = step_on_batch(step_model, optimizer, video, config, index, rank, bf16=bf16)
    _sync(device)
    step_s = (time.perf_counter() - started) / steps
    clips_per_s = batch * world / step_s
    result = {"batch_per_rank": batch, "step_time_s": step_s, "clips_per_s": clips_per_s, "warmup_s": warmup_s,
              "loss": stats.values[1].item(), "finite": bool(stats.values[0].item()),
              "train_gflops_per_clip": 3 * forward_flops(cfg_m) / 1e9}  # fmt: skip
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        peak = peak_tflops(torch.cuda.get_device_name(device))
        if peak:
            result["mfu"] = 3 * forward_flops(cfg_m) * clips_per_s / world / (peak * 1e12)
    return result


def loader_steps(config: TrainConfig, shards: str, device: torch.device, *, warmup: int, steps: int) -> dict:
    """The real input pipeline feeding the trainer's step (bf16 on CUDA): data_wait_frac, step time, clips/s."""
    from mvm.nvdec import nvdec_problem
    from mvm.shards import resolve_shards, shard_clip_counts
    from mvm.tensors import to_video
    from mvm.train.data import hands_over_i420
    from mvm.train.loop import Position, data_stream

    urls = resolve_shards(shards)
    # The preset's decoder ("auto": I420 planes converted on the GPU), as the trainer runs it; a
    # decoder that is not installed falls back to PyAV in mvm.train.data (decord is optional to carry).
    config = replace(config, data=replace(config.data, shards=shards))
    cfg_m = config.model
    torch.manual_seed(config.seed)
    model = build_model(cfg_m).to(device)
    optimizer = build_optimizer(model, config.optim)
    stream = data_stream(
        urls,
        shard_clip_counts(urls),
        config,
        0,
        1,
        Position(0, 0, 0),
        on_bad=log,
        pin_memory=device.type == "cuda",
    )
    waited = 0.0
    try:
        for index in range(warmup + steps):
            if index == warmup:
                _sync(device)
                started, waited = time.perf_counter(), 0.0
            fetch = time.perf_counter()
            _, (_, frames, _) = next(stream)
            waited += time.perf_counter() - fetch
            video = to_video(frames, device)
            step_on_batch(model, optimizer, video, config, index, 0, bf16=device.type == "cuda")
        _sync(device)
        elapsed = time.perf_counter() - started
    finally:
        stream.close()
    decoder = config.data.decoder + (" (I420 on the device)" if hands_over_i420(config.data.decoder) else "")
    if config.data.decoder == "nvdec" and nvdec_problem() is not None:
        decoder += f", fell back to PyAV: {nvdec_problem()}"
    return {"workers": config.data.workers, "decoder": decoder, "batch": config.data.batch_size,
            "data_wait_frac": waited / elapsed, "step_time_s": elapsed / steps,
            "clips_per_s": steps * config.data.batch_size / elapsed}  # fmt: skip


def _ddp_worker(
    rank: int, world: int, config: TrainConfig, device_type: str, port: int, out: str, steps: int
):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})  # fmt: skip
    import torch.distributed as dist

    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        result = synthetic_steps(config, device, bf16=device.type == "cuda", compile_mode=None, warmup=3,
                                 steps=steps, world=world, rank=rank)  # fmt: skip
        if rank == 0:
            write_atomic(out, json.dumps(result))
        dist.barrier()  # see mvm.train.loop: the last all-reduce must be released before the interpreter exits
    finally:
        dist.destroy_process_group()


def ddp_scaling(config: TrainConfig, world: int, device_type: str, work: Path, steps: int) -> dict:
    """Step time at world 1 and `world` (equal per-rank batch, synthetic data) and the exposed overhead."""
    import torch.multiprocessing as mp

    rows = {}
    for size in (1, world):
        out = work / f"ddp-{size}.json"
        out.unlink(missing_ok=True)
        mp.spawn(_ddp_worker, args=(size, config, device_type, 29500 + os.getpid() % 1000 + size, str(out), steps),
                 nprocs=size, join=True)  # fmt: skip
        rows[size] = json.loads(out.read_text())
    return {"world": world, "step_time_s_world1": rows[1]["step_time_s"], "step_time_s_worldN": rows[world]["step_time_s"],
            "ddp_overhead": rows[world]["step_time_s"] / rows[1]["step_time_s"] - 1,
            "clips_per_s_worldN": rows[world]["clips_per_s"]}  # fmt: skip


def nvdec_check(shards: str, clips: int) -> dict:
    """mvm.nvdec.compare_with_pyav on the first `clips` clips of the shards (in the training process)."""
    from mvm.nvdec import compare_with_pyav, nvdec_problem
    from mvm.shards import iter_verified, resolve_shards

    problem = nvdec_problem()
    if problem is not None:
        raise RuntimeError(f"nvdec cannot run here: {problem}")
    mp4s = []
    for url in resolve_shards(shards):
        mp4s += [sample["mp4"] for sample in iter_verified(url)][: clips - len(mp4s)]
    return compare_with_pyav(mp4s)


STAGE_PROFILE = ("bench.loader_scaling", "gpu_profile")
"""The hook for the main process's per-stage loader profile (issue 24 item 1, bench's loader
benchmark): module and function `gpu_profile(shards: str, device, workers: list[int]) -> list[dict]`,
one dict per worker count with the seconds per batch of each stage. Until it exists the row says so."""


def stage_profile(shards: str, device: torch.device, workers: list[int]) -> dict:
    """The hook's rows as {"profile": [...]}; RuntimeError naming the hook where it is not there yet."""
    import importlib

    module, function = STAGE_PROFILE
    try:
        profile = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError):
        raise RuntimeError(f"skipped: {module}.{function} is not there yet (issue 24 item 1)") from None
    return {"profile": profile(shards, device, workers)}
