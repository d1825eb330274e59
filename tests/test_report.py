"""mvm-report on a hand-made sweep folder (fabricated run files are the report's input here)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _sweep_helpers import make_sweep, write_probe, write_run

from mvm.slurm.report_collect import collect, find_runs, probe_section, with_ddp_overhead
from mvm.slurm.report_plots import series

MVM_REPORT = Path(sys.executable).parent / "mvm-report"


@pytest.fixture
def sweep(tmp_path) -> Path:
    return make_sweep(tmp_path / "sweep")


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
    # The probe's report.json has a section per task; a report from before that is read as it is.
    legacy = {"metric": "balanced_accuracy", "gate": "pass"}
    assert probe_section(legacy) is legacy and probe_section({"tasks": {"speed": legacy}}) is legacy
    # x4-T8-w2 against its one-process twin x4-T8-w1 (same data, T, preset, per-rank batch).
    assert w2.ddp_overhead == pytest.approx(0.25)
    assert all(by_name[name].ddp_overhead is None for name in by_name if name != "x4-T8-w2")


def test_ddp_overhead_needs_a_twin_with_the_same_per_rank_batch(sweep):
    records, _ = collect([sweep])
    one, two = (next(r for r in records if r.name == name) for name in ("x4-T8-w1", "x4-T8-w2"))
    other_batch = dataclasses.replace(one, batch_size=8)
    (two_again,) = [r for r in with_ddp_overhead([other_batch, two]) if r.world_size == 2]
    assert two_again.ddp_overhead is None
    other_data = dataclasses.replace(one, data_scale=2)
    (two_again,) = [r for r in with_ddp_overhead([other_data, two]) if r.world_size == 2]
    assert two_again.ddp_overhead is None


def test_series_group_runs_differing_in_one_axis(sweep):
    records, _ = collect([sweep])
    data = series(records, "data")
    assert list(data) == ["T=8, w=1, tiny"]
    assert [r.n_train_clips for r in data["T=8, w=1, tiny"]] == [10, 20, 40]
    assert [r.clip_len for r in series(records, "clip_len")["data=4, w=1, tiny"]] == [4, 8]
    assert [r.world_size for r in series(records, "world_size")["data=4, T=8, tiny"]] == [1, 2]


def test_find_runs_accepts_a_bare_run_with_its_probe_inside(sweep, tmp_path):
    bare = tmp_path / "bare"
    write_run(bare, clip_len=8, world=1, steps=20, clips_per_s=3.0, comm=None)
    write_probe(bare / "probe", 0.7, "pass")
    assert find_runs(bare) == [bare]
    records, _ = collect([bare, sweep / "runs" / "x1-T8-w1" / "run"])
    assert {r.name: r.probe_gate for r in records} == {"bare": "pass", "x1-T8-w1": "fail"}
    assert {r.name: r.n_train_clips for r in records} == {"bare": None, "x1-T8-w1": 10}


@pytest.mark.slow
def test_cli_writes_json_markdown_and_plots(sweep, tmp_path):
    out = tmp_path / "report"
    done = subprocess.run([MVM_REPORT, sweep, "--out", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stderr
    summary = json.loads((out / "scaling.json").read_text())
    assert len(summary["runs"]) == 5 and len(summary["skipped"]) == 1
    table = (out / "scaling.md").read_text()
    assert (
        "| x4-T8-w2 | tiny | 4 | 40 | 8 | 2 | 40 | 0.0250 | 2.0 | 5.000 | 0.250 | 0.100 | 0.200 | 140 |"
        in table
    )
    assert "| x1-T8-w1 | tiny | 1 | 10 | 8 | 1 | 40 | 0.0250 | 1.0 | 4.000 | — | 0.100 | — |" in table
    assert "0.600 [0.500, 0.700]" in table
    by_name = {run["name"]: run for run in summary["runs"]}
    assert by_name["x4-T8-w2"]["ddp_overhead"] == pytest.approx(0.25)
    assert by_name["x4-T8-w1"]["ddp_overhead"] is None and by_name["x4-T8-w1"]["comm_frac"] is None
    for name in ("probe_vs_clips", "throughput_memory_vs_scale", "world_size", "clip_len"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({name}.png)" in table


def test_cli_without_runs_fails_clearly(tmp_path):
    done = subprocess.run([MVM_REPORT, tmp_path, "--out", tmp_path / "r"], capture_output=True, text=True)
    assert done.returncode == 1 and "no run with logged steps" in done.stderr
    missing = subprocess.run([MVM_REPORT, tmp_path / "nope", "--out", tmp_path / "r"], capture_output=True)
    assert missing.returncode == 2


def test_cli_refuses_a_symlinked_output_folder(sweep, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    done = subprocess.run([MVM_REPORT, sweep, "--out", tmp_path / "link"], capture_output=True, text=True)
    assert done.returncode == 1 and "symlink" in done.stderr and "Traceback" not in done.stderr
    assert list(target.iterdir()) == []
