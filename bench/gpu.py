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
The nvdec rows need PyNvVideoCodec (`pip install pynvvideocodec`; on an offline GPU image, its
wheel carried along); without it they say so and show PyAV's rate.
The measurements themselves and the MFU formula: bench/gpu_steps.py.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.gpu_steps import ddp_scaling, loader_steps, log, nvdec_check, stage_profile, synthetic_steps
from mvm.atomic import ensure_dir, write_atomic
from mvm.report_format import dumps_json
from mvm.train.config import COMPILE_MODES, TrainConfig, apply_overrides, preset

SIZE, CLIP_LEN = (144, 256), 8
RESULTS_JSON = Path(__file__).resolve().parent / "results-gpu.json"
RESULTS_MD = Path(__file__).resolve().parent / "results-gpu.md"
LOADER_DECODERS = (("auto", None), ("pyav", None), ("nvdec", 0))
"""(--decoder, workers or None for the preset's) of the loader rows: nvdec decodes in the training process."""
WORKER_COUNTS = (1, 2, 4, 8, 12)
"""DataLoader workers of the worker-scaling rows (small, decoder auto)."""
BATCH_FACTORS = (2, 4, 8)
"""Per-GPU batch = factor x the preset's, tried in order until one runs out of memory."""
NVDEC_CHECK_CLIPS = 32
"""Clips decoded by both NVDEC and PyAV for the comparison."""


def bench_config(name: str, size=SIZE, clip_len: int = CLIP_LEN) -> TrainConfig:
    """A preset with the benchmark's frame size and clip length."""
    return apply_overrides(preset(name), {"model": {"image_size": list(size), "clip_len": clip_len}})


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
                lambda: stage_profile(shards, device, sorted({0, *worker_counts})))  # fmt: skip
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
