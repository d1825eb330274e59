"""A hand-made sweep folder in slurm/scaling.sh's layout, for tests of mvm-report and the sweep scripts.

Fabricated run files (config.json, metrics.jsonl, probe report.json) and tiny shard folders are the
report's input here: the numbers are chosen so that tests can check what the report computes.
"""

from __future__ import annotations

import json
from pathlib import Path

from mvm.shards import clip_key, write_manifest, write_shard_folder

EXPERIMENTS = [
    # (scale, T, processes, seed, probe metric, axes)
    (1, 8, 1, 0, 0.40, ("base", "data-compute", "T", "ddp-rank")),
    (1, 8, 1, 1, 0.44, ("data-compute", "T", "ddp-rank")),
    (2, 8, 1, 0, 0.50, ("data-compute",)),
    (2, 8, 1, 1, 0.54, ("data-compute",)),
    (4, 8, 1, 0, 0.60, ("data-compute",)),
    (4, 8, 1, 1, 0.64, ("data-compute",)),
    (1, 4, 1, 0, 0.45, ("T",)),
    (1, 4, 1, 1, 0.47, ("T",)),
    (1, 8, 2, 0, None, ("ddp-rank",)),
]
"""A small sweep in slurm/grid.py's layout: data x1/x2/x4 (2 seeds), T 4/8, 1 vs 2 processes."""


def experiment_name(scale: int, clip_len: int, procs: int, seed: int) -> str:
    return f"x{scale}-T{clip_len}-p{procs}b4-n40-s{seed}"


def write_shards(folder: Path, clips: list[int]) -> None:
    """A shard folder whose shards hold clips[i] samples of one `<key>.json` member each, shard i being
    scene `{folder name}-{i}`: the report reads only the manifest's clip counts and scene names, which
    match the shards (they pass mvm.shards' checks)."""
    keys = iter(clip_key("scene-0000", index) for index in range(sum(clips)))
    shards = [[[(f"{next(keys)}.json", b"{}")] for _ in range(count)] for count in clips]
    manifest = write_shard_folder(folder, shards, config={})
    scenes = [
        {"name": f"{folder.name}-{i}", "token": f"{folder.name}-{i}", "clips": n} for i, n in enumerate(clips)
    ]
    write_manifest(folder, manifest | {"scenes": scenes})


def write_run(
    folder: Path, *, clip_len: int, world: int, steps: int, clips_per_s: float, comm: float | None
) -> None:
    folder.mkdir(parents=True)
    config = {"preset": "tiny", "model": {"clip_len": clip_len}, "data": {"batch_size": 4, "shards": "gone"},
              "optim": {"lr": 0.001}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    lines = [{"event": "resume", "step": 0}]
    for step in range(10, steps + 1, 10):
        # The first half is warm-up: the report must average the second half only.
        speed = 1.0 if step <= steps // 2 else clips_per_s
        # Two processes take 25% longer per step than one (the exposed DDP overhead the report shows).
        step_time = 4 * world / speed * (1 + 0.25 * (world - 1))
        line = {"step": step, "loss": 1.0 / step, "clips_per_s": speed, "step_time_s": step_time,
                "data_wait_frac": 0.1, "peak_mem_mb": 100.0 + step}  # fmt: skip
        if comm is not None:
            line["comm_frac"] = comm
        lines.append(line)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for rank in range(world):
        (folder / f"keys-rank{rank}.jsonl").write_text('{"step": 1, "keys": []}\n')


def write_probe(folder: Path, value: float, gate: str, *, depth: float | None = None) -> None:
    """mvm-probe's report.json: one task at the top level, or (depth given) a section per task."""
    folder.mkdir(parents=True)
    report = {
        "task": "ego-motion",
        "metric": "balanced_accuracy",
        "pretrained": {"balanced_accuracy": value, "ci": [value - 0.1, value + 0.1]},
        "random": {"summary": {"best": 0.25}},
        "difference_ci": [value - 0.35, value - 0.15],
        "gate": gate,
    }
    if depth is not None:
        section = {"metric": "delta_1.25", "pretrained": {"delta_1.25": depth, "ci": [depth - 0.05, depth + 0.05]},
                   "random": {"summary": {"best": 0.5}}, "difference_ci": [0.01, 0.1], "gate": "pass"}  # fmt: skip
        report = {"tasks": {"ego-motion": report, "depth": section}, "gate": gate}
    (folder / "report.json").write_text(json.dumps(report))


def make_sweep(root: Path, *, override: bool = False) -> Path:
    """A probed sweep under `root` (EXPERIMENTS, the x4 runs with a depth section too), plus an
    unfinished run; `override`: the scaled points ran under --no-gate."""
    chunks = {8: [[5, 5], [10], [20]], 4: [[10, 10], [20], [40]]}
    for clip_len, per_chunk in chunks.items():
        for index, clips in enumerate(per_chunk):
            write_shards(root / "shards" / f"T{clip_len}" / f"train-{index}", clips)
    for scale, clip_len, procs, seed, probe_value, axes in EXPERIMENTS:
        name = experiment_name(scale, clip_len, procs, seed)
        used = {1: 1, 2: 2, 4: 3}[scale]
        folders = [str(root / "shards" / f"T{clip_len}" / f"train-{k}") for k in range(used)]
        experiment = {"name": name, "axes": list(axes), "data_scale": scale, "clip_len": clip_len,
                      "world_size": procs, "seed": seed, "world": 1, "threads_per_process": 2 // procs,
                      "gate_override": override and "base" not in axes, "train_shards": ",".join(folders)}  # fmt: skip
        (root / "runs" / name).mkdir(parents=True)
        (root / "runs" / name / "experiment.json").write_text(json.dumps(experiment))
        write_run(root / "runs" / name / "run", clip_len=clip_len, world=procs, steps=40,
                  clips_per_s=8.0 * procs / clip_len, comm=0.2 if procs > 1 else None)  # fmt: skip
        if probe_value is not None:
            write_probe(root / "runs" / name / "probe", probe_value, "pass" if probe_value > 0.45 else "fail",
                        depth=0.7 + scale / 100 if scale == 4 else None)  # fmt: skip
    (root / "runs" / "unfinished" / "run").mkdir(parents=True)
    (root / "runs" / "unfinished" / "run" / "config.json").write_text("{}")
    (root / "runs" / "unfinished" / "run" / "metrics.jsonl").write_text("")
    return root
