"""A hand-made sweep folder in slurm/scaling.sh's layout, for tests of mvm-report and the sweep scripts.

Fabricated run files (config.json, metrics.jsonl, probe report.json) and tiny shard folders are the
report's input here: the numbers are chosen so that tests can check what the report computes.
"""

from __future__ import annotations

import json
from pathlib import Path

from mvm.shards import clip_key, write_shard_folder

EXPERIMENTS = [(1, 8, 1, 0.40), (2, 8, 1, 0.50), (4, 8, 1, 0.60), (4, 4, 1, 0.45), (4, 8, 2, 0.58)]
"""(data scale, T, world size, probe metric): the default --local sweep's five experiments."""


def write_shards(folder: Path, clips: list[int]) -> None:
    """A shard folder whose shards hold clips[i] samples of one `<key>.json` member each: the report
    reads only the manifest's clip counts, which match the shards (they pass mvm.shards' checks)."""
    keys = iter(clip_key("scene-0000", index) for index in range(sum(clips)))
    shards = [[[(f"{next(keys)}.json", b"{}")] for _ in range(count)] for count in clips]
    write_shard_folder(folder, shards, config={})


def write_run(
    folder: Path, *, clip_len: int, world: int, steps: int, clips_per_s: float, comm: float | None
) -> None:
    folder.mkdir(parents=True)
    config = {"preset": "tiny", "model": {"clip_len": clip_len}, "data": {"batch_size": 4, "shards": "gone"}}
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


def write_probe(folder: Path, value: float, gate: str) -> None:
    folder.mkdir(parents=True)
    section = {
        "metric": "balanced_accuracy",
        "pretrained": {"balanced_accuracy": value, "ci": [value - 0.1, value + 0.1]},
        "random": {"summary": {"best": 0.25}},
        "difference_ci": [value - 0.35, value - 0.15],
        "gate": gate,
    }
    depth = {**section, "metric": "delta_1.25", "pretrained": {"delta_1.25": 0.5, "ci": [0.4, 0.6]}}
    # mvm-probe's layout: a section per task (the records read ego-motion's, whatever the order).
    report = {"tasks": {"depth": depth, "ego-motion": section}, "gate": gate, "skipped": {}}
    (folder / "report.json").write_text(json.dumps(report))


def make_sweep(root: Path) -> Path:
    """A probed sweep under `root`: data x1/x2/x4 at T=8, T=4 at x4, world 2 at x4, plus an unfinished run."""
    chunks = {8: [[5, 5], [10], [20]], 4: [[10, 10], [20], [40]]}
    for clip_len, per_chunk in chunks.items():
        for index, clips in enumerate(per_chunk):
            write_shards(root / "shards" / f"T{clip_len}" / f"train-{index}", clips)
    for scale, clip_len, world, probe_value in EXPERIMENTS:
        name = f"x{scale}-T{clip_len}-w{world}"
        used = {1: 1, 2: 2, 4: 3}[scale]
        folders = [str(root / "shards" / f"T{clip_len}" / f"train-{k}") for k in range(used)]
        experiment = {"name": name, "data_scale": scale, "clip_len": clip_len, "world_size": world,
                      "train_shards": ",".join(folders)}  # fmt: skip
        (root / "runs" / name).mkdir(parents=True)
        (root / "runs" / name / "experiment.json").write_text(json.dumps(experiment))
        write_run(root / "runs" / name / "run", clip_len=clip_len, world=world, steps=40,
                  clips_per_s=8.0 * world / clip_len, comm=0.2 if world > 1 else None)  # fmt: skip
        write_probe(root / "runs" / name / "probe", probe_value, "pass" if probe_value > 0.45 else "fail")
    (root / "runs" / "unfinished" / "run").mkdir(parents=True)
    (root / "runs" / "unfinished" / "run" / "config.json").write_text("{}")
    (root / "runs" / "unfinished" / "run" / "metrics.jsonl").write_text("")
    return root
