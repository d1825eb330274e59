"""slurm/ scripts on a real single-node Slurm cluster started by the `cluster` fixture.

Skipped when munge/Slurm are not installed, unless MVM_REQUIRE_SLURM=1 (set by .ci/run), which
turns a missing Slurm into a failure so CI never skips these silently.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _slurm_cluster import SlurmCluster, missing_binaries, start_cluster

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SLURM = REPO / "slurm"
SIZE = "32x64"
TRAIN_ARGS = ["--model", "tiny", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--log-every", "5"]

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    missing = missing_binaries()
    message = f"Slurm/munge not installed (missing: {', '.join(missing)})" if missing else ""
    if not missing and os.geteuid() != 0:
        message = "the test cluster's slurmd launches jobs and must run as root"
    if message:
        if os.environ.get("MVM_REQUIRE_SLURM") == "1":
            pytest.fail(f"MVM_REQUIRE_SLURM=1 but {message}", pytrace=False)
        pytest.skip(message)
    with start_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict[str, str]:
    """Environment for slurm/ scripts: the shipped site.env plus this machine's overrides."""
    folder = tmp_path_factory.mktemp("site")
    site_env = folder / "site.env"
    overrides = {
        "MVM_SBATCH_EXTRA": "--mem=1G --cpus-per-task=1",
        "MVM_VENV": str(BIN.parent),
        "MVM_WORK": str(folder),
        "MVM_INGEST_PARTS": "1",  # the array test asks for 3 parts itself; the sweep keeps jobs few
        "MVM_GPUS_PER_NODE": "0",
    }
    site_env.write_text(
        (SLURM / "site.env").read_text() + "".join(f'{key}="{value}"\n' for key, value in overrides.items())
    )
    tools = folder / "bin"
    tools.mkdir()
    if not (BIN / "torchrun").exists():  # torch reached through a .pth has no console script in this venv
        (tools / "torchrun").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
        (tools / "torchrun").chmod(0o755)
    return {
        "MVM_SITE_ENV": str(site_env),
        "MVM_ROOT": str(REPO),
        "PATH": f"{BIN}:{tools}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, object]:
    """A 3-scene synthetic dataroot and its single-process ingest (the reference bytes)."""
    root = tmp_path_factory.mktemp("data")
    dataroot = root / "nuscenes"
    subprocess.run(
        [BIN / "mvm-synth", "--out", dataroot, "--version", "v1.0-mini", "--scenes", "3",
         "--frames-per-scene", "48", "--width", "256"],
        check=True, capture_output=True,
    )  # fmt: skip
    ingest_args = ["--dataroot", str(dataroot), "--version", "v1.0-mini", "--scenes", "all",
                   "--size", SIZE, "--shard-clips", "4"]  # fmt: skip
    single = root / "single"
    subprocess.run([BIN / "mvm-ingest", *ingest_args, "--out", single], check=True, capture_output=True)
    return {"ingest_args": ingest_args, "single": single, "root": root}


def _products(folder: Path) -> dict[str, bytes]:
    """The files that must be reproducible: shards and manifest (logs and ledgers excluded)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".tar"} | {
        "manifest.json": (folder / "manifest.json").read_bytes()
    }


def test_ingest_array_and_finalize_match_single_process(cluster, site, data):
    out = data["root"] / "array"
    submitted = subprocess.run(
        ["bash", SLURM / "ingest.sh", "--parts", "3", "--", *data["ingest_args"], "--out", str(out)],
        env={**cluster.env, **site}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    finalize_id = submitted.stdout.strip().splitlines()[-1]
    array_id = re.search(r"array job (\d+)", submitted.stderr).group(1)
    states = cluster.wait([array_id, finalize_id], timeout_s=120)
    logs = sorted((data["root"] / "logs").glob("ingest-array-*"))
    assert states == {array_id: ["COMPLETED"] * 3, finalize_id: ["COMPLETED"]}, [p.read_text() for p in logs]
    assert len([p for p in logs if "finalize" not in p.name]) == 3
    reference = _products(data["single"])
    produced = _products(out)
    assert sorted(produced) == sorted(reference)
    assert len(reference) > 2
    for name, content in reference.items():
        assert produced[name] == content, f"{name} differs between the array ingest and one process"


def _submit_training(cluster, site, run: Path, shards: Path, steps: int, extra: list[str]) -> str:
    log = run.parent / f"{run.name}.out"
    return cluster.run(
        "sbatch", "--parsable", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=1G",
        f"--output={log}", str(SLURM / "train_ddp.sbatch"),
        "--shards", str(shards), "--out", str(run), "--steps", str(steps), *TRAIN_ARGS, *extra,
        env=site,
    ).strip()  # fmt: skip


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_two_task_ddp_training_through_srun(cluster, site, data):
    run = data["root"] / "ddp-run"
    job = _submit_training(cluster, site, run, data["single"], steps=10, extra=["--ckpt-every", "5"])
    states = cluster.wait([job], timeout_s=180)
    log = (run.parent / "ddp-run.out").read_text()
    assert states[job] == ["COMPLETED"], log
    assert "2 agent(s) x 1 process(es)" in log
    for rank in (0, 1):
        assert (run / f"keys-rank{rank}.jsonl").read_text().strip(), f"rank {rank} consumed no clips\n{log}"
    steps = [r for r in _metrics(run) if "loss" in r]
    assert steps[-1]["step"] == 10
    assert all("comm_frac" in r for r in steps), "no DDP all-reduce was measured"
    assert json.loads((run / "config.json").read_text())["steps"] == 10
    complete = sorted(p.parent.name for p in (run / "checkpoints").glob("step-*/COMPLETE"))
    assert complete == ["step-000005", "step-000010"]


def test_requeued_training_resumes_from_its_checkpoint(cluster, site, data):
    run = data["root"] / "requeue-run"
    job = _submit_training(cluster, site, run, data["single"], steps=40, extra=["--ckpt-every", "10"])
    first = run / "checkpoints" / "step-000010" / "COMPLETE"
    deadline = time.monotonic() + 150
    while not first.exists():
        assert cluster.job_states(job) != ["FAILED"], (run.parent / "requeue-run.out").read_text()
        assert time.monotonic() < deadline, "no checkpoint within 150 s"
        time.sleep(0.2)
    assert cluster.job_states(job) == ["RUNNING"], "training finished before the requeue; give it more steps"
    cluster.run("scontrol", "requeue", job)
    # Slurm holds a requeued job for 120 s (BeginTime); release it as soon as it is pending again.
    while cluster.job_states(job) != ["PENDING"]:
        time.sleep(0.2)
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    states = cluster.wait([job], timeout_s=180)
    log = (run.parent / "requeue-run.out").read_text()
    assert states[job] == ["COMPLETED"], log
    assert cluster.job_field(job, "Restarts") == "1"
    assert "DUE TO JOB REQUEUE" in log and "(restart 1)" in log
    records = _metrics(run)
    resumes = [r for r in records if r.get("event") == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] >= 10, resumes
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 40, steps
    assert (run / "checkpoints" / "step-000040" / "COMPLETE").exists()


def _sweep(
    cluster, site, sweep: Path, settings: dict, *flags: str
) -> tuple[subprocess.CompletedProcess, dict]:
    """Submit slurm/scaling.sh; (its result, plan job id -> Slurm job id) from its log lines."""
    submitted = subprocess.run(
        ["bash", SLURM / "scaling.sh", *flags, str(sweep)], env={**cluster.env, **site, **settings},
        capture_output=True, text=True,
    )  # fmt: skip
    return submitted, dict(re.findall(r"scaling.sh: (\S+): job (\d+)", submitted.stderr))


def test_scaled_jobs_wait_for_the_base_gate_and_the_override_runs_them(cluster, site, data):
    sweep = data["root"] / "sweep"
    settings = {
        "MVM_SWEEP_DATAROOT": str(data["root"] / "nuscenes"),
        "MVM_SWEEP_VERSION": "v1.0-mini",
        "MVM_SWEEP_SPLITS": "mini_train mini_val",
        "MVM_SWEEP_SCALES": "1 2",
        "MVM_SWEEP_CLIP_LENS": "8",
        "MVM_SWEEP_PROCS": "1 2",
        "MVM_SWEEP_DATA_SEEDS": "1",
        "MVM_SWEEP_AXIS_SEEDS": "1",
        "MVM_SWEEP_FUTURE_STEPS": "0",  # --future-steps is the hybrid branch's mvm-train option
        "MVM_SWEEP_MODEL": "tiny",
        "MVM_SWEEP_BATCH": "2",  # 6 clips at x1: two ranks of 2
        "MVM_SWEEP_STEPS": "4",
        "MVM_SWEEP_SIZE": SIZE,
        # A learning rate of 1e-9 leaves the encoder at its random init: the base gate fails for real.
        "MVM_SWEEP_TRAIN_ARGS": " ".join(TRAIN_ARGS[4:]) + " --viz-every 100 --lr 1e-9",
        # Too few clips here for four ego-motion classes: the speed task probes every run.
        "MVM_SWEEP_PROBE_ARGS": "--task speed --seeds 1 --bootstrap 100 --device cpu",
    }
    base = "x1-T8-p1b2-n4-s0"
    submitted, jobs = _sweep(cluster, site, sweep, settings)
    assert submitted.returncode == 0, submitted.stderr
    report_job = submitted.stdout.strip()
    scaled = {
        plan_id: job for plan_id, job in jobs.items() if plan_id.startswith("train-") and base not in plan_id
    }
    # Data x2, the epoch-matched x1 (2 steps), DDP at the same global and at the same per-rank batch.
    assert sorted(scaled) == ["train-x1-T8-p1b2-n2-s0", "train-x1-T8-p2b1-n4-s0", "train-x1-T8-p2b2-n4-s0",
                              "train-x2-T8-p1b2-n4-s0"]  # fmt: skip
    gate_job = jobs[f"probe-{base}"]
    for job in scaled.values():  # submitted with an afterok dependency on the base probe
        assert f"afterok:{gate_job}" in cluster.job_field(job, "Dependency") or cluster.job_states(job) == [
            "CANCELLED"]  # fmt: skip
    state = cluster.wait([report_job], timeout_s=300)[report_job]
    assert state == ["COMPLETED"], [p.read_text()[-2000:] for p in sorted((sweep / "logs").glob("*.out"))]
    assert cluster.job_states(gate_job) == ["FAILED"]  # mvm-probe's exit 3
    assert json.loads((sweep / "runs" / base / "probe" / "report.json").read_text())["gate"] == "fail"
    for plan_id, job in scaled.items():  # cancelled, never started
        assert cluster.job_states(job) == ["CANCELLED"], plan_id
        assert not (sweep / "runs" / plan_id.removeprefix("train-") / "run").exists(), plan_id
    assert [run["name"] for run in json.loads((sweep / "report" / "scaling.json").read_text())["runs"]] == [
        base
    ]
    scenes = [(sweep / "scenes" / f"train-{k}.txt").read_text().split() for k in (0, 1)]
    assert sorted(scenes[0] + scenes[1]) == ["scene-0061", "scene-0553"]
    assert len(list((sweep / "logs").glob("ingest-train-0-*"))) == 2  # 1 part + finalize

    # --no-gate: the kept base is not re-run; the scaled points are submitted without the dependency.
    forced, jobs = _sweep(cluster, site, sweep, settings, "--no-gate")
    assert forced.returncode == 0, forced.stderr
    report_job = forced.stdout.strip()
    assert f"train-{base}" not in jobs and "afterok" not in cluster.job_field(
        jobs["train-x2-T8-p1b2-n4-s0"], "Dependency"
    )
    assert cluster.wait([report_job], timeout_s=300)[report_job] == ["COMPLETED"]
    summary = json.loads((sweep / "report" / "scaling.json").read_text())
    by_name = {run["name"]: run for run in summary["runs"]}
    assert sorted(by_name) == [
        "x1-T8-p1b2-n2-s0",
        base,
        "x1-T8-p2b1-n4-s0",
        "x1-T8-p2b2-n4-s0",
        "x2-T8-p1b2-n4-s0",
    ]
    assert [name for name, run in by_name.items() if run["gate_override"]] == sorted(set(by_name) - {base})
    assert (
        by_name["x1-T8-p2b2-n4-s0"]["world_size"] == 2
        and by_name["x1-T8-p2b2-n4-s0"]["comm_frac"] is not None
    )
    assert by_name["x1-T8-p2b2-n4-s0"]["ddp_overhead"] is not None
    assert by_name[base]["n_train_clips"] < by_name["x2-T8-p1b2-n4-s0"]["n_train_clips"]
    assert "| x2-T8-p1b2-n4-s0 † |" in (sweep / "report" / "scaling.md").read_text()
    assert (sweep / "report" / "ddp.png").is_file()
