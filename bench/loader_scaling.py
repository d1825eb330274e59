"""Loader scaling: the trainer's stream at training scale, rows/s and data_wait against workers, and
where the training process spends its time per batch.

The shard set (bench.workspace.ShardSetSpec: thousands of short clips, written through mvm.shards'
writers) is read by the trainer's own stages, composed as mvm.train.loop.data_stream composes them
for one rank: rank_reader (one set of DataLoader workers for every epoch) -> batches
(pinned on CUDA) -> copy to the device -> mvm.tensors.to_video. Each worker count gets one stream
that runs across at least one epoch boundary, in two phases on the same workers:
- ceiling: the training process does nothing but its own stages, so rows/s is the most this loader
  delivers with W workers;
- stepped: after each batch the process sleeps for a simulated model step of batch / model_rows_per_s
  seconds (README: `small` alone trains at 727 clips/s on one H200, bf16 eager); data_wait is the
  trainer's data_wait_frac (time blocked in the stream / wall). A sleep leaves the core free, where
  a real step keeps it busy launching kernels: this is the loader's best case.
Per batch in the training process (ms): wait = blocked on the workers' items (their decode, or the
hand-over of a ready item; with 0 workers the decode itself), collate = stacking the batch, copy =
host -> device (synchronized on CUDA to be timed; nothing on a CPU device), convert = uint8 -> float
RGB (I420 -> RGB for pyav-i420). The ceiling is the training process when its CPU is busy for most of
the wall time (then its largest stage is named), else the workers' decode.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.workspace import ShardSetSpec, cached_shard_set

STAGES = ("wait", "collate", "copy", "convert")
"""Training-process stages per batch, in order."""
README_SMALL_ROWS_PER_S = 727.0
"""`small` alone on one H200 (bf16, eager): README "Training on GPUs", the rate the loader must feed."""


@dataclass(frozen=True)
class ScalingConfig:
    """Sizes of the loader-scaling measurement."""

    shard_set: ShardSetSpec = ShardSetSpec()
    """The shard set read (>= 2000 clips)."""
    workers: tuple[int, ...] = (0, 1, 2)
    """DataLoader worker counts on a CPU-only machine."""
    gpu_workers: tuple[int, ...] = (1, 2, 4, 6, 8, 12)
    """DataLoader worker counts where CUDA is available (16-core GPU machines)."""
    decoders: tuple[str, ...] = ("auto", "pyav-i420")
    """DataConfig.decoder values: the default, and the I420 hand-over the trainer uses on a GPU."""
    batch_size: int = 32
    """Clips per batch (the base preset's)."""
    warmup_batches: int = 4
    """Batches not timed before each phase (worker start-up and the shuffle buffers filling; before the
    stepped phase, the workers getting ahead again)."""
    ceiling_batches: int = 80
    """Timed batches of the ceiling phase (64 batches are one epoch of 2048 clips)."""
    stepped_batches: int = 24
    """Timed batches with the simulated model step."""
    model_rows_per_s: float = README_SMALL_ROWS_PER_S
    """Rate of the simulated model step."""


class Clock:
    """Seconds per training-process stage, accumulated over the timed batches."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Zero every stage (after the warm-up)."""
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def waited(self, items: Iterator[dict]) -> Iterator[dict]:
        """`items`, adding the time spent in each next() to "wait"."""
        while True:
            start = time.perf_counter()
            item = next(items, None)
            self.seconds["wait"] += time.perf_counter() - start
            if item is None:
                return
            yield item


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a stage's time is its own (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(urls: list[str], decoder: str, workers: int, config: ScalingConfig, device: torch.device) -> dict:
    """One worker count and decoder: the ceiling and the stepped phase on one stream (see module doc)."""
    from mvm.shards import clip_shape_of, shard_clip_counts
    from mvm.tensors import to_video
    from mvm.train.config import DataConfig
    from mvm.train.data import EpochPlans, batches, rank_reader

    clip_len, size = clip_shape_of(urls)
    data = DataConfig(batch_size=config.batch_size, workers=workers, decoder=decoder)
    plans = EpochPlans(tuple(shard_clip_counts(urls)), 1, workers, 0, 0)
    reader = rank_reader(urls, plans, data, 0, 0, 0, 0, (clip_len, *size, 3))
    clock = Clock()
    pin = device.type == "cuda"
    batch_stream = (
        batch
        for epoch in itertools.count()
        for batch in batches(clock.waited(reader.samples(epoch)), data.batch_size, pin_memory=pin)
    )
    step_s = config.batch_size / config.model_rows_per_s

    def run(batch_stream: Iterator, count: int, step: bool) -> tuple[float, float, float]:
        """(wall s, training-process CPU s, s blocked in the stream) over `count` batches; stage times go
        to clock."""
        blocked, start, cpu = 0.0, time.perf_counter(), time.process_time()
        for _ in range(count):
            before, waited = time.perf_counter(), clock.seconds["wait"]
            _keys, frames, _used = next(batch_stream)
            taken = time.perf_counter() - before
            blocked += taken
            clock.seconds["collate"] += taken - (clock.seconds["wait"] - waited)
            before = time.perf_counter()
            moved = frames.to(device, non_blocking=True)
            sync(device)
            clock.seconds["copy"] += time.perf_counter() - before
            before = time.perf_counter()
            to_video(moved, device)
            sync(device)
            clock.seconds["convert"] += time.perf_counter() - before
            if step:
                time.sleep(step_s)
        return time.perf_counter() - start, time.process_time() - cpu, blocked

    run(batch_stream, config.warmup_batches, step=False)
    clock.reset()
    ceiling_s, cpu_s, _ = run(batch_stream, config.ceiling_batches, step=False)
    per_batch = {stage: 1000 * clock.seconds[stage] / config.ceiling_batches for stage in STAGES}
    run(batch_stream, config.warmup_batches, step=True)  # the ceiling phase left nothing decoded ahead
    stepped_s, _, blocked_s = run(batch_stream, config.stepped_batches, step=True)
    del batch_stream, reader  # stops the workers
    return {
        "decoder": decoder,
        "workers": workers,
        "rows_per_s": config.ceiling_batches * config.batch_size / ceiling_s,
        "ms_per_batch": per_batch,
        "ceiling": ceiling(per_batch, cpu_s / ceiling_s),
        # Busy CPU of the training process per batch: near the wall time per batch, this process is the
        # ceiling (hand-overs, collation, conversion); far below it, it waits for the workers' decode.
        "main_cpu_ms_per_batch": 1000 * cpu_s / config.ceiling_batches,
        "wall_ms_per_batch": 1000 * ceiling_s / config.ceiling_batches,
        "stepped_rows_per_s": config.stepped_batches * config.batch_size / stepped_s,
        "data_wait_frac": blocked_s / stepped_s,
    }


BUSY = 0.8
"""Share of the wall time the training process's CPU must be busy for it to be named the ceiling."""


def ceiling(per_batch: dict[str, float], busy: float) -> str:
    """What limits rows/s: the training process's largest stage when its CPU is busy `busy` >= BUSY of
    the time, else the workers (the training process waits for their decode)."""
    if busy >= BUSY:
        return f"training process ({max(per_batch, key=per_batch.get)}), busy {busy:.0%}"
    return f"workers' decode (training process busy {busy:.0%})"


def bench_loader_scaling(config: ScalingConfig, work: Path) -> dict:
    """Every decoder x worker count on the cached shard set; rows/s also as ratios to the first count."""
    from mvm.shards import resolve_shards

    torch.set_num_threads(1)  # the training process's own stages per core (workers run one thread each)
    urls = resolve_shards(str(cached_shard_set(config.shard_set, work)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for decoder in config.decoders:
        first = None
        for workers in config.gpu_workers if device.type == "cuda" else config.workers:
            row = measure(urls, decoder, workers, config, device)
            first = first or row["rows_per_s"]
            rows.append({**row, "vs_first": row["rows_per_s"] / first})
    spec = config.shard_set
    return {
        "device": str(device),
        "clips": spec.clips,
        "clip_len": spec.clip_len,
        "size": list(spec.size),
        "shards": len(urls),
        "batch_size": config.batch_size,
        "epoch_batches": spec.clips // config.batch_size,
        "timed_batches": config.ceiling_batches,
        "stepped_batches": config.stepped_batches,
        "model_rows_per_s": config.model_rows_per_s,
        "rows": rows,
    }


def gpu_profile(shards: str, device: torch.device, workers: list[int]) -> list[dict]:
    """bench.gpu's per-stage loader profile: `measure` on the given shards for each worker count,
    with the default decoder and the I420 hand-over (one row per decoder and count)."""
    from mvm.shards import resolve_shards, shard_clip_counts

    urls = resolve_shards(shards)
    # A set smaller than a batch would never fill one (the last short batch of an epoch is dropped).
    config = replace(GPU_PROFILE, batch_size=min(GPU_PROFILE.batch_size, sum(shard_clip_counts(urls)) // 2))
    return [measure(urls, decoder, count, config, device) for decoder in config.decoders for count in workers]


GPU_PROFILE = ScalingConfig(warmup_batches=2, ceiling_batches=12, stepped_batches=6)
"""Shorter phases for bench.gpu, whose rows share one time budget (150 s for this one)."""
