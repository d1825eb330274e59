"""mvm-report on a hand-made sweep folder (fabricated run files are the report's input here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from probe.report_collect import collect, find_runs
from probe.report_plots import series

MVM_REPORT = Path(sys.executable).parent / "mvm-report"


def _shards(folder: Path, clips: list[int]) -> None:
    folder.mkdir(parents=True)
    names = [f"shard-{index:06d}.tar" for index in range(len(clips))]
    for name in names:
        (folder / name).write_bytes(b"")
    manifest = {"shards": [{"name": n, "clips": c} for n, c in zip(names, clips, strict=True)]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _run(
    folder: Path, *, clip_len: int, world: int, steps: int, clips_per_s: float, comm: float | None
) -> None:
    folder.mkdir(parents=True)
    config = {"preset": "tiny", "model": {"clip_len": clip_len}, "data": {"batch_size": 4, "shards": "gone"}}
    (folder / "config.json").write_text(json.dumps(config))
    lines = [{"event": "resume", "step": 0}]
    for step in range(10, steps + 1, 10):
        # The first half is warm-up: the report must average the second half only.
        speed = 1.0 if step <= steps // 2 else clips_per_s
        line = {"step": step, "loss": 1.0 / step, "clips_per_s": speed, "step_time_s": 4 * world / speed,
                "data_wait_frac": 0.1, "peak_mem_mb": 100.0 + step}  # fmt: skip
        if comm is not None:
            line["comm_frac"] = comm
        lines.append(line)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for rank in range(world):
        (folder / f"keys-rank{rank}.jsonl").write_text('{"step": 1, "keys": []}\n')


def _probe(folder: Path, value: float, gate: str) -> None:
    folder.mkdir(parents=True)
    report = {
        "metric": "balanced_accuracy",
        "pretrained": {"balanced_accuracy": value, "ci": [value - 0.1, value + 0.1]},
        "random": {"summary": {"best": 0.25}},
        "difference_ci": [value - 0.35, value - 0.15],
        "gate": gate,
    }
    (folder / "report.json").write_text(json.dumps(report))


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A sweep in slurm/scaling.sh's layout: data x1/x2/x4 at T=8, T=4 at x4, world 2 at x4, plus one bare run."""
    root = tmp_path / "sweep"
    chunks = {8: [[5, 5], [10], [20]], 4: [[10, 10], [20], [40]]}
    for clip_len, per_chunk in chunks.items():
        for index, clips in enumerate(per_chunk):
            _shards(root / "shards" / f"T{clip_len}" / f"train-{index}", clips)
    plan = [(1, 8, 1, 0.40), (2, 8, 1, 0.50), (4, 8, 1, 0.60), (4, 4, 1, 0.45), (4, 8, 2, 0.58)]
    for scale, clip_len, world, probe_value in plan:
        name = f"x{scale}-T{clip_len}-w{world}"
        used = {1: 1, 2: 2, 4: 3}[scale]
        folders = [str(root / "shards" / f"T{clip_len}" / f"train-{k}") for k in range(used)]
        experiment = {"name": name, "data_scale": scale, "clip_len": clip_len, "world_size": world,
                      "train_shards": ",".join(folders)}  # fmt: skip
        (root / "runs" / name).mkdir(parents=True)
        (root / "runs" / name / "experiment.json").write_text(json.dumps(experiment))
        _run(root / "runs" / name / "run", clip_len=clip_len, world=world, steps=40,
             clips_per_s=8.0 * world / clip_len, comm=0.2 if world > 1 else None)  # fmt: skip
        _probe(root / "runs" / name / "probe", probe_value, "pass" if probe_value > 0.45 else "fail")
    (root / "runs" / "unfinished" / "run").mkdir(parents=True)
    (root / "runs" / "unfinished" / "run" / "config.json").write_text("{}")
    (root / "runs" / "unfinished" / "run" / "metrics.jsonl").write_text("")
    return root


def test_collect_reads_axes_metrics_and_probes(sweep):
    records, skipped = collect([sweep])
    by_name = {r.name: r for r in records}
    assert sorted(by_name) == ["x1-T8-w1", "x2-T8-w1", "x4-T4-w1", "x4-T8-w1", "x4-T8-w2"]
    assert [s["run"] for s in skipped] == [str(sweep / "runs" / "unfinished" / "run")]
    assert [by_name[f"x{s}-T8-w1"].n_train_clips for s in (1, 2, 4)] == [10, 20, 40]
    assert by_name["x4-T4-w1"].n_train_clips == 80
    w2 = by_name["x4-T8-w2"]
    assert w2.world_size == 2 and w2.comm_frac == pytest.approx(0.2)
    assert w2.clips_per_s == pytest.approx(2.0)  # second half only: the 1.0 warm-up is excluded
    assert w2.clips_seen == 40 * 4 * 2
    assert w2.peak_mem_mb == 140.0 and w2.final_loss == pytest.approx(1 / 40)
    assert by_name["x4-T8-w1"].comm_frac is None
    assert by_name["x1-T8-w1"].probe_pretrained == 0.40 and by_name["x1-T8-w1"].probe_gate == "fail"
    assert by_name["x2-T8-w1"].probe_ci == (0.4, 0.6)


def test_series_group_runs_differing_in_one_axis(sweep):
    records, _ = collect([sweep])
    data = series(records, "data")
    assert list(data) == ["T=8, w=1, tiny"]
    assert [r.n_train_clips for r in data["T=8, w=1, tiny"]] == [10, 20, 40]
    assert [r.clip_len for r in series(records, "clip_len")["data=4, w=1, tiny"]] == [4, 8]
    assert [r.world_size for r in series(records, "world_size")["data=4, T=8, tiny"]] == [1, 2]


def test_find_runs_accepts_a_bare_run_with_its_probe_inside(sweep, tmp_path):
    bare = tmp_path / "bare"
    _run(bare, clip_len=8, world=1, steps=20, clips_per_s=3.0, comm=None)
    _probe(bare / "probe", 0.7, "pass")
    assert find_runs(bare) == [bare]
    records, _ = collect([bare, sweep / "runs" / "x1-T8-w1" / "run"])
    assert {r.name: r.probe_gate for r in records} == {"bare": "pass", "x1-T8-w1": "fail"}
    assert {r.name: r.n_train_clips for r in records} == {"bare": None, "x1-T8-w1": 10}


def test_cli_writes_json_markdown_and_plots(sweep, tmp_path):
    out = tmp_path / "report"
    done = subprocess.run([MVM_REPORT, sweep, "--out", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stderr
    summary = json.loads((out / "scaling.json").read_text())
    assert len(summary["runs"]) == 5 and len(summary["skipped"]) == 1
    table = (out / "scaling.md").read_text()
    assert "| x4-T8-w2 | tiny | 4 | 40 | 8 | 2 | 40 |" in table
    assert "0.600 [0.500, 0.700]" in table
    for name in ("probe_vs_clips", "throughput_memory_vs_scale", "world_size", "clip_len"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({name}.png)" in table


def test_cli_without_runs_fails_clearly(tmp_path):
    done = subprocess.run([MVM_REPORT, tmp_path, "--out", tmp_path / "r"], capture_output=True, text=True)
    assert done.returncode == 1 and "no run with logged steps" in done.stderr
    missing = subprocess.run([MVM_REPORT, tmp_path / "nope", "--out", tmp_path / "r"], capture_output=True)
    assert missing.returncode == 2


def test_exposed_ddp_overhead_pairs_equal_runs_at_world_1_and_n(sweep):
    from probe.report import ddp_overhead

    records, _ = collect([sweep])
    rows = ddp_overhead(records)
    assert [(row["run"], row["baseline"], row["world"]) for row in rows] == [("x4-T8-w2", "x4-T8-w1", 2)]
    by_name = {r.name: r for r in records}
    expected = by_name["x4-T8-w2"].step_time_s / by_name["x4-T8-w1"].step_time_s - 1
    assert rows[0]["overhead"] == pytest.approx(expected)
