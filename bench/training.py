"""Trainer throughput on CPU: `mvm-train --model tiny` with 0, 1 and 2 data workers.

Each run is a short, fresh `mvm-train` process; the numbers come from its own RUN/metrics.jsonl
(clips_per_s, step_time_s, data_wait_frac, peak_mem_mb), with the first logged steps dropped as
warm-up, plus the peak RSS of the whole process tree from the OS. The GPU part runs only where
torch sees CUDA.
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.workspace import ChildRun, run_child, venv_script

STEP_FIELDS = ("clips_per_s", "step_time_s", "data_wait_frac")


def read_step_metrics(run_dir: Path) -> list[dict]:
    """The per-step lines of RUN/metrics.jsonl (event lines, which carry no `loss`, are skipped)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [record for record in records if "step" in record and "clips_per_s" in record]


def summarize_steps(steps: list[dict], warmup: int) -> dict:
    """Medians of STEP_FIELDS over the steps after `warmup` logged ones, and the max peak_mem_mb."""
    steady = steps[warmup:] or steps
    if not steady:
        raise RuntimeError("metrics.jsonl has no step lines")
    summary = {field: statistics.median(step[field] for step in steady) for field in STEP_FIELDS}
    summary["peak_mem_mb"] = max(step["peak_mem_mb"] for step in steps)
    summary["logged_steps"] = len(steps)
    return summary


@dataclass(frozen=True)
class TrainRun:
    """One measured `mvm-train` process."""

    summary: dict
    """summarize_steps of its metrics."""
    child: ChildRun
    """Wall, CPU and peak RSS of its process tree."""


def run_training(
    shards: Path,
    out: Path,
    *,
    model: str,
    steps: int,
    workers: int,
    device: str,
    warmup: int,
    batch_size: int,
    log_every: int,
) -> TrainRun:
    """Train `steps` steps from scratch on `shards` into a fresh `out` and summarize it.

    Metrics every `log_every` steps; no pictures or checkpoints before the end (they would be timed).
    """
    shutil.rmtree(out, ignore_errors=True)
    args = [
        venv_script("mvm-train"),
        "--shards", str(shards),
        "--out", str(out),
        "--model", model,
        "--steps", str(steps),
        "--workers", str(workers),
        "--device", device,
        "--batch-size", str(batch_size),
        "--log-every", str(log_every),
        "--viz-every", str(steps + 1),
        "--ckpt-every", str(steps + 1),
    ]  # fmt: skip
    child = run_child(args, out.with_name(out.name + ".log")).check()
    return TrainRun(summarize_steps(read_step_metrics(out), warmup), child)


def bench_training(
    shards: Path,
    work: Path,
    *,
    steps: int,
    warmup: int,
    workers: tuple[int, ...],
    batch_size: int,
    log_every: int,
) -> tuple[dict, dict[int, TrainRun]]:
    """tiny on CPU with each worker count; ratios of clips/s against the first count. GPU rows when CUDA exists.

    Returns (results, worker count -> its CPU TrainRun) so the cost-scaling runs can reuse them.
    """
    import torch

    rows = []
    runs = {}
    for count in workers:
        run = run_training(
            shards, work / f"train-cpu-w{count}", model="tiny", steps=steps, workers=count, device="cpu",
            warmup=warmup, batch_size=batch_size, log_every=log_every,
        )  # fmt: skip
        runs[count] = run
        rows.append({"device": "cpu", "model": "tiny", "workers": count, **run.summary,
                     "process_peak_rss_mb": run.child.peak_rss_mb, "wall_s": run.child.wall_s})  # fmt: skip
    base = rows[0]["clips_per_s"]
    for row in rows:
        row["vs_first"] = row["clips_per_s"] / base
    result = {"steps": steps, "batch_size": batch_size, "warmup_logs_dropped": warmup, "rows": rows}
    if torch.cuda.is_available():
        gpu_rows = []
        for model in ("small", "base"):
            run = run_training(
                shards, work / f"train-cuda-{model}", model=model, steps=steps, workers=max(workers),
                device="cuda", warmup=warmup, batch_size=batch_size, log_every=log_every,
            )  # fmt: skip
            gpu_rows.append({"device": "cuda", "model": model, "workers": max(workers), **run.summary})
        result["gpu_rows"] = gpu_rows
    else:
        result["gpu_note"] = "skipped: torch.cuda.is_available() is False on this machine"
    return result, runs
