"""One-command GPU check: `make bench-gpu` or `python -m bench.gpu [--shards DIR]`.

On a CUDA machine, in under 10 minutes, for the `small` and `base` presets at 144x256, T = 8
(batch = the preset's per-GPU batch unless said), it measures with mvm.train.engine (the trainer's
own step), most telling first, so a spent budget drops the least:
- synthetic on-device batches (the model alone): step time, clips/s, peak memory, MFU, for
  bf16 autocast vs fp32, eager;
- the real shard loader (mvm.train.loop.data_stream, bf16 eager): data_wait_frac, step time and
  clips/s as training would see them, for each decoder (`LOADER_DECODERS`: auto = PyAV I420 in the
  preset's W workers, PyAV RGB in the workers, nvdec in the training process) and, for `small`,
  against the number of workers (`WORKER_COUNTS`);
- the NVDEC check: max |difference| and PSNR of NVDEC's I420 planes against PyAV's on the same clips;
- larger per-GPU batches (`BATCH_FACTORS` x the preset's, bf16 eager) until one does not fit:
  clips/s, peak memory and MFU at each;
- torch.compile in each of `COMPILE_MODES` (reduce-overhead = CUDA graphs: fewer launches);
- the main process's per-stage loader profile, where bench's loader benchmark provides it
  (`stage_profile`, a hook: issue 24 item 1);
- with 2+ GPUs: DDP step time at world 1 and world N on synthetic batches (equal per-rank batch),
  and the exposed DDP overhead = step time(N) / step time(1) - 1.
Results: bench/results-gpu.json and bench/results-gpu.md (a markdown table naming the device).
Without CUDA it prints one line and exits 0. Every measurement runs under its own time limit
inside a total budget; one that fails or runs out of time is recorded with its error and the
rest go on.

Shards: `--shards DIR` (pre-built at 144x256, T=8: see README "GPU check"), else, where the
nuScenes devkit is installed, a small set is built with mvm-synth + mvm-ingest into bench/work/.

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
    motion head:          2 (3 (V / (T' - h)) d) (3 h k)          (h hidden token steps)
tests/test_bench_gpu.py checks it against torch.utils.flop_counter on the real model.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mvm.atomic import ensure_dir, write_atomic
from mvm.report_format import dumps_json
from mvm.train.config import COMPILE_MODES, ModelConfig, TrainConfig, apply_overrides, preset
from mvm.train.engine import build_optimizer, step_on_batch, wrap_model
from mvm.train.masks import future_steps, mask_units
from mvm.train.model import build_model
from mvm.train.tokens import token_steps

SIZE, CLIP_LEN = (144, 256), 8
RESULTS_JSON = Path(__file__).resolve().parent / "results-gpu.json"
RESULTS_MD = Path(__file__).resolve().parent / "results-gpu.md"
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
}
"""Dense bf16 tensor-core peaks (vendor datasheets, no sparsity); the first name found in the device name wins."""
LOADER_DECODERS = (("auto", None), ("pyav", None), ("nvdec", 0))
"""(--decoder, workers or None for the preset's) of the loader rows: nvdec decodes in the training process."""
WORKER_COUNTS = (1, 2, 4, 8, 12)
"""DataLoader workers of the worker-scaling rows (small, decoder auto)."""
BATCH_FACTORS = (2, 4, 8)
"""Per-GPU batch = factor x the preset's, tried in order until one runs out of memory."""
NVDEC_CHECK_CLIPS = 32
"""Clips decoded by both NVDEC and PyAV for the comparison."""


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
    if cfg.prediction == "camera-motion":
        hidden = future_steps(steps, cfg.mask_ratio)
        return float(stem + encoder + 2 * (3 * visible // (steps - hidden) * d) * (3 * hidden * k))
    decoder = cfg.decoder_depth * (tokens * (8 * dd * dd + 4 * r * dd * dd) + 4 * tokens * tokens * dd)
    return float(stem + encoder + 2 * visible * d * dd + decoder + 2 * tokens * dd * 3 * k * p * p)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a device name, or None when the chip is not in PEAK_BF16_TFLOPS."""
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if all(part in device_name for part in name.split()):
            return tflops
    return None


def bench_config(name: str, size=SIZE, clip_len: int = CLIP_LEN) -> TrainConfig:
    """A preset with the benchmark's frame size and clip length."""
    return apply_overrides(preset(name), {"model": {"image_size": list(size), "clip_len": clip_len}})


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
    stream = data_stream(urls, shard_clip_counts(urls), config, 0, 1, Position(0, 0, 0), on_bad=log)
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


@contextlib.contextmanager
def time_limit(seconds: float):
    """TimeoutError in the main thread after `seconds` (a hung compile or loader cannot eat the budget)."""

    def expire(_signum, _frame):
        raise TimeoutError(f"over its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Budget:
    """Total wall-clock budget; each measurement gets at most its own limit and what is left."""

    total_s: float
    started: float = 0.0

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.started)


def measure(rows: list[dict], budget: Budget, limit_s: float, row: dict, fn: Callable[[], dict]) -> None:
    """Run one measurement into `rows`: its result, or its error; skipped when the budget is spent."""
    allowed = min(limit_s, budget.left() - 5)
    label = ", ".join(f"{k}={v}" for k, v in row.items())
    if allowed < 10:
        log(f"skip {label}: budget spent")
        rows.append({**row, "error": "skipped: total time budget spent"})
        return
    log(f"start {label} (limit {allowed:.0f} s)")
    started = time.perf_counter()
    try:
        with time_limit(allowed):
            result = fn()
        rows.append({**row, **result, "wall_s": time.perf_counter() - started})
        log(
            f"done  {label}: "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
        )
    except BaseException as error:  # noqa: BLE001  (recorded; the next measurement still runs)
        if isinstance(error, KeyboardInterrupt):
            raise
        rows.append({**row, "error": f"{type(error).__name__}: {error}".splitlines()[0][:300],
                     "wall_s": time.perf_counter() - started})  # fmt: skip
        log(f"FAILED {label}: {type(error).__name__}: {error}")
        traceback.print_exc(limit=3, file=sys.stdout)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        torch._dynamo.reset()


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


def run_all(
    configs: dict[str, TrainConfig],
    device: torch.device,
    shards: str | None,
    *,
    budget_s: float,
    warmup: int,
    steps: int,
    compile_warmup: int,
    loader_steps_n: int,
    work: Path,
    compile_modes: tuple[str, ...] = COMPILE_MODES,
    worker_counts: tuple[int, ...] = WORKER_COUNTS,
    batch_factors: tuple[int, ...] = BATCH_FACTORS,
    nvdec_clips: int = NVDEC_CHECK_CLIPS,
) -> dict:
    """Every measurement for every config (name -> TrainConfig at the bench's size), most telling
    first; the results dict. Worker scaling runs on the first config. compile_modes=() leaves out
    the torch.compile rows (CPU tests: inductor takes minutes there)."""
    budget = Budget(budget_s, time.perf_counter())
    rows: list[dict] = []
    precision = "bf16" if device.type == "cuda" else "fp32"  # bf16 autocast on CPU is not what training uses

    def model_row(name, config, precision, mode, factor=1, limit=120):
        batch = config.data.batch_size * factor
        config = replace(config, data=replace(config.data, batch_size=batch))
        row = {"kind": "model", "preset": name, "precision": precision, "mode": mode, "batch": batch}
        measure(rows, budget, limit, row, lambda: synthetic_steps(
            config, device, bf16=precision == "bf16", compile_mode=None if mode == "eager" else mode,
            warmup=warmup if mode == "eager" else compile_warmup, steps=steps))  # fmt: skip

    def loader_row(name, config, decoder, workers):
        workers = config.data.workers if workers is None else workers
        config = replace(config, data=replace(config.data, decoder=decoder, workers=workers))
        row = {"kind": "loader", "preset": name, "precision": precision, "mode": "eager",
               "batch": config.data.batch_size}  # fmt: skip
        if shards is None:
            rows.append({**row, "error": "skipped: no --shards and no devkit to build them"})
            return
        measure(rows, budget, 150, row, lambda: loader_steps(config, shards, device, warmup=warmup,
                                                              steps=loader_steps_n))  # fmt: skip

    for name, config in configs.items():  # the eager rows first: they are quick and always useful
        for each in ("bf16", "fp32") if device.type == "cuda" else ("fp32",):
            model_row(name, config, each, "eager")
    for name, config in configs.items():
        for decoder, workers in LOADER_DECODERS:
            loader_row(name, config, decoder, workers)
    checks: list[dict] = []
    if shards is not None:
        measure(checks, budget, 60, {"kind": "nvdec-check"}, lambda: nvdec_check(shards, nvdec_clips))
    name, config = next(iter(configs.items()))
    for workers in worker_counts:
        if workers != config.data.workers:  # the preset's own count is already a loader row
            loader_row(name, config, "auto", workers)
    for name, config in configs.items():
        for factor in batch_factors:
            model_row(name, config, precision, "eager", factor)
            if "OutOfMemoryError" in rows[-1].get("error", ""):
                break  # larger ones do not fit either
    for mode in compile_modes:
        for name, config in configs.items():
            model_row(name, config, precision, mode, limit=240)
    if shards is not None:
        measure(checks, budget, 150, {"kind": "stage-profile"},
                lambda: stage_profile(shards, device, [0, *worker_counts]))  # fmt: skip
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    ddp = []
    if count >= 2:
        for name, config in configs.items():
            measure(ddp, budget, 150, {"kind": "ddp", "preset": name},
                    lambda c=config: ddp_scaling(c, count, "cuda", work, steps))  # fmt: skip
    return {
        "rows": rows,
        "checks": checks,
        "ddp": ddp,
        "ddp_note": None if count >= 2 else f"{max(count, 1)} GPU: no DDP scaling rows",
    }


def markdown(results: dict) -> str:
    """The README table: one line per measurement, the device named in the heading; then the checks."""
    from mvm.report_format import fmt, markdown_table

    lines = [f"GPU check on **{results['device']}** ({results['torch']}, {results['date']}; "
             f"{results['size']} T={results['clip_len']}):", ""]  # fmt: skip
    header = ["kind", "preset", "precision", "mode", "batch", "clips/s", "step s", "peak MiB", "MFU",
              "data_wait_frac", "note"]  # fmt: skip
    body = []
    for row in results["rows"]:
        note = f"W={row['workers']} {row['decoder']}" if "workers" in row else ""
        body.append([row["kind"], row["preset"], row["precision"], row["mode"], row["batch"],
                     fmt(row.get("clips_per_s"), 1), fmt(row.get("step_time_s"), 4), fmt(row.get("peak_mem_mb"), 0),
                     fmt(row.get("mfu"), 3), fmt(row.get("data_wait_frac"), 3), row.get("error", note)])  # fmt: skip
    lines.append(markdown_table(header, body))
    for row in results.get("checks", []):
        if "error" in row:
            lines.append(f"\n{row['kind']}: {row['error']}")
        elif row["kind"] == "nvdec-check":
            lines.append(f"\nNVDEC vs PyAV I420 on {row['clips']} clips: max |difference| {row['max_abs_diff']}, "
                         f"PSNR {fmt(row['psnr_db'], 2)} dB.")  # fmt: skip
        else:
            lines.append(f"\nLoader stage profile (main process, s per batch): {json.dumps(row['profile'])}")
    for row in results["ddp"]:
        if "error" in row:
            lines.append(f"\nDDP {row['preset']}: {row['error']}")
        else:
            lines.append(f"\nDDP {row['preset']}: world 1 {fmt(row['step_time_s_world1'], 4)} s/step, world "
                         f"{row['world']} {fmt(row['step_time_s_worldN'], 4)} s/step, exposed overhead "
                         f"{fmt(row['ddp_overhead'], 3)}")  # fmt: skip
    if results.get("ddp_note"):
        lines.append(f"\n{results['ddp_note']}.")
    return "\n".join(lines) + "\n"


def build_shards(work: Path) -> str | None:
    """A small 144x256 T=8 shard set from mvm-synth (needs the devkit); None where it is not installed."""
    try:
        import nuscenes  # noqa: F401
    except ImportError:
        return None
    import subprocess

    out = work / "shards-144x256"
    if (out / "manifest.json").is_file():
        return str(out)
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "mvm-synth"), "--out", str(work / "nuscenes"), "--version", "v1.0-mini", "--scenes", "10",
                    "--frames-per-scene", "128", "--width", "480"], check=True)  # fmt: skip
    subprocess.run([str(bindir / "mvm-ingest"), "--dataroot", str(work / "nuscenes"), "--version", "v1.0-mini",
                    "--scenes", "mini_train", "--size", "144x256", "--clip-len", "8", "--shard-clips", "16",
                    "--out", str(out)], check=True)  # fmt: skip
    return str(out)


def main(argv: list[str] | None = None) -> int:
    """Parse `--shards DIR` and `--budget-s S`, run everything, write the results."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", help="pre-built shard folder at 144x256, T=8 (else built with mvm-synth)")
    parser.add_argument(
        "--budget-s", type=float, default=540, help="total wall-clock budget in seconds [540]"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.gpu: no CUDA device visible to torch; nothing measured (run it on a GPU machine).")
        return 0
    device = torch.device("cuda", 0)
    work = Path(__file__).resolve().parent / "work"
    ensure_dir(work)
    log(f"{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}, torch {torch.__version__}")
    shards = args.shards
    if shards is None:
        try:
            shards = build_shards(work)
        except Exception as error:  # noqa: BLE001
            log(f"could not build shards: {error}")
    configs = {name: bench_config(name) for name in ("small", "base")}
    results = run_all(configs, device, shards, budget_s=args.budget_s, warmup=3, steps=10, compile_warmup=3,
                      loader_steps_n=30, work=work)  # fmt: skip
    results.update({"device": torch.cuda.get_device_name(device), "gpus": torch.cuda.device_count(),
                    "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
                    "date": time.strftime("%Y-%m-%d"), "size": f"{SIZE[0]}x{SIZE[1]}", "clip_len": CLIP_LEN,
                    "shards": None if shards is None else str(shards), "flops_formula": "bench/gpu.py module docstring"})  # fmt: skip

    write_atomic(RESULTS_JSON, dumps_json(results))
    table = markdown(results)
    write_atomic(RESULTS_MD, table)
    print(table, flush=True)
    log(f"wrote {RESULTS_JSON} and {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
