"""Smoke test of `make bench`: every section runs end to end on a tiny dataroot and reports sane numbers.

No timing thresholds (the machine is shared); only the structure of the results and that every
rate and ratio is a finite positive number.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import report
from bench.run import BenchConfig, run_bench
from bench.workspace import DatarootSpec

TINY = BenchConfig(
    dataroot=DatarootSpec(scenes=2, frames_per_scene=24, width=320),
    size=(64, 112),
    shard_clips=1,
    scale_factors=(1, 2),
    min_seconds=0.05,
    rounds=1,
    train_steps=4,
    train_batch=2,
    train_log_every=1,
    train_warmup_logs=1,
    train_workers=(0,),
    psnr_clips=2,
)


def floats(value, path=""):
    """(path, value) for every float leaf of a nested results dict (ints are counts, e.g. 0 workers)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from floats(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from floats(item, f"{path}[{index}]")
    elif isinstance(value, float):
        yield path, value


@pytest.mark.slow
def test_bench_sections_report_finite_positive_ratios(tmp_path):
    results, failed = run_bench(TINY, "test", work=tmp_path)

    assert failed == [], [results[name]["error"] for name in failed]
    assert {"loader", "ingest", "storage", "training", "scaling", "machine", "goals"} <= results.keys()
    loaders = {row["loader"] for row in results["loader"]["rows"]}
    assert loaders == {"shards_decord", "shards_pyav", "naive_devkit_jpeg", "resized_jpeg"}
    assert results["loader"]["clip_len"] == 8 and results["loader"]["size"] == [64, 112]
    assert [row["workers"] for row in results["training"]["rows"]] == [0]
    assert [row["scenes"] for row in results["scaling"]["ingest"]["rows"]] == [1, 2]
    shard_counts = [row["shards"] for row in results["scaling"]["trainer_memory"]["rows"]]
    assert shard_counts[1] > shard_counts[0]
    assert results["storage"]["mean_psnr_db"] > 20
    assert results["machine"]["cores"] >= 1 and results["machine"]["libraries"]["av"]

    for section in ("loader", "ingest", "storage", "training", "scaling"):
        for path, value in floats(results[section], section):
            if path.endswith("startup_cpu_s"):
                continue  # an extrapolated intercept: may be negative on a noisy machine
            assert math.isfinite(value) and value > 0, f"{path} = {value}"
    names = {goal["name"] for goal in results["goals"]}
    assert {"loader_vs_naive", "loader_vs_resized", "ingest_vs_reduced_decode", "psnr"} <= names

    markdown = report.markdown(results)
    assert "| (c) devkit full-size JPEGs + resize |" in markdown
    json.dumps(results)
