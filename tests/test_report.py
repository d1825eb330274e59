"""mvm-report on a hand-made sweep folder (fabricated run files are the report's input here)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _sweep_helpers import EXPERIMENTS, experiment_name, make_sweep, write_probe, write_run

from mvm.slurm.probe_report import ProbeReportError, parse_probe_report
from mvm.slurm.report_axes import points, spread
from mvm.slurm.report_collect import collect, find_runs, with_ddp_overhead

MVM_REPORT = Path(sys.executable).parent / "mvm-report"


@pytest.fixture
def sweep(tmp_path) -> Path:
    return make_sweep(tmp_path / "sweep")


def test_collect_reads_axes_metrics_and_probes(sweep):
    records, skipped = collect([sweep])
    by_name = {r.name: r for r in records}
    assert sorted(by_name) == sorted(experiment_name(*e[:4]) for e in EXPERIMENTS)
    assert [s["run"] for s in skipped] == [str(sweep / "runs" / "unfinished" / "run")]
    assert [by_name[experiment_name(s, 8, 1, 0)].n_train_clips for s in (1, 2, 4)] == [10, 20, 40]
    assert [by_name[experiment_name(s, 8, 1, 0)].n_train_scenes for s in (1, 2, 4)] == [2, 3, 4]
    w2 = by_name[experiment_name(1, 8, 2, 0)]
    assert w2.world_size == 2 and w2.comm_frac == pytest.approx(0.2) and w2.threads_per_process == 1
    assert w2.clips_per_s == pytest.approx(2.0)  # second half only: the 1.0 warm-up is excluded
    assert w2.clips_seen == 40 * 4 * 2 and w2.probe_gate is None
    assert w2.peak_mem_mb == 140.0 and w2.final_loss == pytest.approx(1 / 40)
    base = by_name[experiment_name(1, 8, 1, 0)]
    assert base.axes[0] == "base" and base.probe_pretrained == 0.40 and base.probe_gate == "fail"
    assert base.probe_task == "ego-motion" and base.seed == 0 and base.lr == 0.001
    # x4 probes carry a section per task: ego-motion stays the headline, depth is read alongside.
    x4 = by_name[experiment_name(4, 8, 1, 1)]
    assert x4.probe_pretrained == 0.64 and x4.probe_ci == (0.54, 0.74)
    assert (
        x4.tasks["depth"]["pretrained"] == pytest.approx(0.74) and x4.tasks["depth"]["metric"] == "delta_1.25"
    )
    # The 2-process run against its one-process twin (same data, T, per-rank batch, seed).
    assert w2.ddp_overhead == pytest.approx(0.25) and w2.ddp_overhead_s == pytest.approx(1.0)
    assert all(r.ddp_overhead is None for r in records if r.world_size == 1)


def test_a_run_short_of_its_planned_steps_is_skipped_not_a_point(sweep):
    # A sweep stopped (or read) while a run trains: its 40 logged steps of a planned 80 are no point.
    name = experiment_name(4, 8, 1, 1)
    experiment = json.loads((sweep / "runs" / name / "experiment.json").read_text())
    (sweep / "runs" / name / "experiment.json").write_text(json.dumps(experiment | {"steps": 80}))
    records, skipped = collect([sweep])
    assert name not in {r.name for r in records}
    assert any("unfinished: logged step 40 of the 80" in s["reason"] for s in skipped)
    experiment["steps"] = 40  # as planned: a point again
    (sweep / "runs" / name / "experiment.json").write_text(json.dumps(experiment))
    assert name in {r.name for r in collect([sweep])[0]}


def test_ddp_overhead_needs_a_twin_with_the_same_per_rank_batch(sweep):
    records, _ = collect([sweep])
    one, two = (next(r for r in records if r.name == experiment_name(1, 8, p, 0)) for p in (1, 2))
    for change in ({"batch_size": 8}, {"data_scale": 2}, {"seed": 1}):
        (again,) = [
            r for r in with_ddp_overhead([dataclasses.replace(one, **change), two]) if r.world_size == 2
        ]
        assert again.ddp_overhead is None, change


def test_points_pool_seeds_per_axis(sweep):
    records, _ = collect([sweep])
    data = points(records, "data-compute")
    assert [p.x for p in data] == [2, 3, 4] and [len(p.runs) for p in data] == [2, 2, 2]
    pooled = spread([r.probe_pretrained for r in data[0].runs])
    assert pooled.mean == pytest.approx(0.42) and pooled.sd == pytest.approx(0.0282843, abs=1e-6)
    assert [p.x for p in points(records, "T")] == [4, 8]
    assert [p.x for p in points(records, "ddp-rank")] == [1, 2] and points(records, "world") == []


def test_probe_report_reads_one_task_or_a_section_per_task():
    single = {"task": "speed", "metric": "r2", "pretrained": {"r2": 0.3, "ci": [0.1, 0.5]}, "gate": "pass",
              "random": {"summary": {"best": 0.1}}, "difference_ci": [0.05, 0.3]}  # fmt: skip
    report = parse_probe_report(single, "r")
    assert report.primary == ("speed", report.tasks["speed"]) and report.gate == "pass"
    depth = {"metric": "delta_1.25", "pretrained": {"delta_1.25": 0.8}, "gate": "fail"}
    both = parse_probe_report({"ego-motion": single | {"task": "ego-motion"}, "depth": depth}, "r")
    assert list(both.tasks) == ["ego-motion", "depth"] and both.gate == "fail"  # any task failing fails
    assert both.tasks["depth"].ci is None and both.tasks["depth"].pretrained == 0.8
    with pytest.raises(ProbeReportError, match="holds no probe task"):
        parse_probe_report({"gate": "pass"}, "r")


def test_find_runs_accepts_a_bare_run_with_its_probe_inside(sweep, tmp_path):
    bare = tmp_path / "bare"
    write_run(bare, clip_len=8, world=1, steps=20, clips_per_s=3.0, comm=None)
    write_probe(bare / "probe", 0.7, "pass")
    assert find_runs(bare) == [bare]
    name = experiment_name(1, 8, 1, 0)
    records, _ = collect([bare, sweep / "runs" / name / "run"])
    assert {r.name: r.probe_gate for r in records} == {"bare": "pass", name: "fail"}
    assert {r.name: r.n_train_clips for r in records} == {"bare": None, name: 10}


@pytest.mark.slow
def test_cli_writes_json_markdown_and_plots(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", override=True)
    (sweep / "logs").mkdir()
    (sweep / "logs" / "local-times.tsv").write_text(
        "ingest-T8-train-0\t30\t0\ningest-T8-train-1\t20\t0\nreport\t5\t0\n"
    )
    out = tmp_path / "report"
    done = subprocess.run([MVM_REPORT, sweep, "--out", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stderr
    summary = json.loads((out / "scaling.json").read_text())
    assert len(summary["runs"]) == len(EXPERIMENTS) and len(summary["skipped"]) == 1
    table = (out / "scaling.md").read_text()
    # The gate and the points run under --no-gate, marked.
    assert f"`{experiment_name(1, 8, 1, 0)}` fail. 8 runs ran under --no-gate (marked †)" in table
    assert f"| {experiment_name(2, 8, 1, 0)} † |" in table and f"| {experiment_name(1, 8, 1, 0)} |" in table
    # Data: mean ± sd over the two seeds, the scene CI, the margin over the best random encoder
    # (0.42 - 0.25 and 0.46 - 0.25), both tasks where probed.
    assert (
        "| 2 † | 10 | 40 | 16.0 | 0.420 ± 0.028 (n=2); scene CI ±0.100 | 0.170 ± 0.028 (n=2) | — | — | 0/2 |"
        in table
    )
    assert "0.740 ± 0.000 (n=2); scene CI ±0.050" in table
    assert (
        "| 2 † | 1 | 4 | 8 | 0.0010 | 40 | 5.000 (n=1) | 1.000 (n=1) | 0.250 (n=1) | 0.200 (n=1) |" in table
    )
    assert "| 2 | 3 † | 20 | 0.0 | 50 |" in table  # ingest seconds of chunks 0 and 1
    assert "Wall time of the local sweep: 1 min over 3 jobs" in table
    for name in ("probe_vs_data", "throughput_memory_vs_data", "clip_len", "ddp"):
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
