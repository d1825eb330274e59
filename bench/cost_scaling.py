"""How cost grows with data: ingest time and memory for 1x, 2x, 4x scenes; trainer memory vs shards.

Ingest time should grow linearly with the number of frames and its peak memory stay flat (it
streams scene by scene); the trainer's peak memory should not depend on how many shards it is
pointed at (it streams them). Each is reported as a ratio to the smallest run, next to the
ratio of the data itself.
"""

from __future__ import annotations

from pathlib import Path

from bench.ingest_speed import IngestRun
from bench.training import TrainRun, run_training


def ingest_scaling(runs: list[IngestRun]) -> dict:
    """Rows of wall/CPU time and peak RSS per ingest run, as ratios to the first (smallest) run."""
    first = runs[0]
    rows = [
        {
            "scenes": run.scenes,
            "frames": run.frames,
            "clips": run.clips,
            "shards": run.shards,
            "wall_s": run.child.wall_s,
            "cpu_s": run.child.cpu_s,
            "peak_rss_mb": run.child.peak_rss_mb,
            "data_ratio": run.frames / first.frames,
            "cpu_ratio": run.child.cpu_s / first.child.cpu_s,
            "wall_ratio": run.child.wall_s / first.child.wall_s,
            "mem_ratio": run.child.peak_rss_mb / first.child.peak_rss_mb,
        }
        for run in runs
    ]
    return {"rows": rows}


def trainer_memory_vs_shards(
    runs: list[IngestRun],
    work: Path,
    *,
    done: dict[Path, TrainRun],
    steps: int,
    warmup: int,
    batch_size: int,
    log_every: int,
) -> dict:
    """Peak memory of the same short `tiny` run (0 workers) pointed at each ingest output.

    done: shard folder -> an identical run already made (reused, not repeated).
    """
    rows = []
    for run in runs:
        train = done.get(run.out) or run_training(
            run.out, work / f"train-shards{run.shards}", model="tiny", steps=steps, workers=0, device="cpu",
            warmup=warmup, batch_size=batch_size, log_every=log_every,
        )  # fmt: skip
        rows.append({"shards": run.shards, "clips": run.clips, "peak_mem_mb": train.summary["peak_mem_mb"],
                     "process_peak_rss_mb": train.child.peak_rss_mb})  # fmt: skip
    for row in rows:
        row["shard_ratio"] = row["shards"] / rows[0]["shards"]
        row["mem_ratio"] = row["peak_mem_mb"] / rows[0]["peak_mem_mb"]
    return {"steps": steps, "rows": rows}
