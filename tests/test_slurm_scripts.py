"""slurm/ scripts without a cluster: syntax, documented #SBATCH lines, usage errors, a --local re-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
# The venv's commands first, as `make sweep` puts them.
LOCAL_PATH = f"{Path(sys.executable).parent}:/usr/bin:/bin"
SCRIPTS = sorted([*SLURM.glob("*.sh"), *SLURM.glob("*.sbatch")])


def test_every_script_parses():
    assert {p.name for p in SCRIPTS} >= {"ingest.sh", "scaling.sh", "ingest_array.sbatch", "train_ddp.sbatch"}
    for script in [*SCRIPTS, SLURM / "site.env"]:
        done = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
        assert done.returncode == 0, f"{script.name}: {done.stderr}"


def test_every_sbatch_line_says_what_it_is_for():
    for script in SLURM.glob("*.sbatch"):
        lines = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
        assert lines, script.name
        for line in lines:
            assert "#" in line[1:], f"{script.name}: uncommented {line!r}"


@pytest.mark.parametrize(
    "args",
    [
        ["ingest.sh"],
        ["ingest.sh", "--parts", "0", "--", "--out", "x"],
        ["ingest.sh", "--", "--scenes", "all"],
        ["ingest.sh", "--", "--out", "x", "--part", "0/2"],
        ["scaling.sh"],
        ["scaling.sh", "--local"],
        ["scaling.sh", "--bogus", "dir"],
        ["scaling.sh", "--dry-run"],
        ["scaling.sh", "--local", "a", "b"],
        ["scaling.sh", "--local", "--gate-off", "a"],
    ],
)
def test_usage_errors_exit_2_before_submitting(args, tmp_path):
    # No sbatch on PATH: a script that got past its argument checks would fail differently.
    done = subprocess.run(["bash", SLURM / args[0], *args[1:]], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # fmt: skip
    assert done.returncode == 2, done.stderr


def test_local_sweep_with_a_bad_setting_exits_2_before_running_anything(tmp_path):
    done = subprocess.run(["bash", SLURM / "scaling.sh", "--local", tmp_path / "sweep"], cwd=REPO,
                          env={"PATH": LOCAL_PATH, "HOME": str(tmp_path), "MVM_SWEEP_SCALES": "1 2.5"},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert (
        "MVM_SWEEP_SCALES='1 2.5': expected whole numbers" in done.stderr and "Traceback" not in done.stderr
    )
    assert not (tmp_path / "sweep").exists()


# The quick grid with no DDP rows; the hidden-horizon flags off (--future-steps is the hybrid
# branch's mvm-train option); a learning rate of 1e-9 leaves the encoder at its random init, so
# the base gate fails for real (pretrained is no better than a random encoder).
FAILING_GATE = {"MVM_SWEEP_PROCS": "1", "MVM_SWEEP_FUTURE_STEPS": "0",
                "MVM_SWEEP_TRAIN_ARGS": "--log-every 2 --viz-every 100 --workers 0 --lr 1e-9"}  # fmt: skip


def _local_sweep(sweep: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SLURM / "scaling.sh", "--local", "--quick", *flags, sweep], cwd=REPO,
                          env={"PATH": LOCAL_PATH, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", **FAILING_GATE},
                          capture_output=True, text=True)  # fmt: skip


@pytest.mark.slow
def test_local_sweep_stops_at_a_failed_gate_and_the_override_runs_the_rest_marked(tmp_path):
    sweep = tmp_path / "sweep"
    done = _local_sweep(sweep, tmp_path)
    assert done.returncode == 3, done.stderr
    assert "the base point's probe gate FAILED: no scaled point runs" in done.stderr
    trained = sorted(p.parent.name for p in (sweep / "runs").glob("*/run"))
    assert trained == ["x1-T8-p1b16-n4-s0"]  # the base only: nothing scaled was trained
    assert "scaling.sh: train-x2" not in done.stderr and "scaling.sh: report\n" in done.stderr
    table = (sweep / "report" / "scaling.md").read_text()
    assert "`x1-T8-p1b16-n4-s0` fail" in table and "No run ran under --no-gate" in table
    # A re-run re-reads the kept base's verdict and stops again, at once.
    again = _local_sweep(sweep, tmp_path)
    assert (
        again.returncode == 3
        and "scaling.sh: gate\n" in again.stderr
        and "scaling.sh: train" not in again.stderr
    )
    # The override runs the scaled points; the report marks each of them.
    forced = _local_sweep(sweep, tmp_path, "--no-gate")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.parent.name for p in (sweep / "runs").glob("*/run")) == [
        "x1-T8-p1b16-n2-s0", "x1-T8-p1b16-n4-s0", "x2-T8-p1b16-n4-s0"]  # fmt: skip
    summary = json.loads((sweep / "report" / "scaling.json").read_text())
    assert {run["name"]: run["gate_override"] for run in summary["runs"]} == {
        "x1-T8-p1b16-n2-s0": True, "x1-T8-p1b16-n4-s0": False, "x2-T8-p1b16-n4-s0": True}  # fmt: skip
    table = (sweep / "report" / "scaling.md").read_text()
    assert "2 runs ran under --no-gate (marked †)" in table and "| x2-T8-p1b16-n4-s0 † |" in table
    times = (sweep / "logs" / "local-times.tsv").read_text()
    assert "train-x2-T8-p1b16-n4-s0\t" in times and "ingest-T8-train-1\t" in times


def test_dry_run_shows_the_gate_first_and_the_estimate(tmp_path):
    done = subprocess.run(["bash", SLURM / "scaling.sh", "--dry-run", "--local", tmp_path / "sweep"], cwd=REPO,
                          env={"PATH": LOCAL_PATH, "HOME": str(tmp_path)}, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    jobs = [line.split("\t")[:2] for line in done.stdout.splitlines()]
    gate = jobs.index(["probe-x1-T8-p1b16-n1000-s0", "gate"])
    assert [job for job, _ in jobs[:gate]] == ["synth", "scenes", "ingest-T8-train-0", "ingest-T8-val",
                                                "train-x1-T8-p1b16-n1000-s0"]  # fmt: skip
    assert "estimate on 2 quiet CPU cores:" in done.stderr
    assert not (tmp_path / "sweep" / "runs" / "x1-T8-p1b16-n1000-s0" / "run").exists()


@pytest.mark.slow
def test_dry_run_prints_the_slurm_plan_and_submits_nothing(tmp_path):
    # Slurm mode without a cluster: no sbatch on PATH, so only a dry run can succeed.
    # The shipped site.env, activating this test's venv as a login node would.
    site = tmp_path / "site.env"
    site.write_text((SLURM / "site.env").read_text() + f'MVM_VENV="{Path(sys.executable).parent.parent}"\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MVM_SITE_ENV": str(site),
           "MVM_SWEEP_DATAROOT": str(tmp_path / "data")}  # fmt: skip
    done = subprocess.run(["bash", SLURM / "scaling.sh", "--dry-run", tmp_path / "sweep"], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    jobs = [line.split("\t") for line in done.stdout.splitlines()]
    hows = {job[0]: job[1] for job in jobs}
    assert hows["scenes"] == "run" and hows["ingest-T12-val"] == "ingest" and hows["report"] == "cpu"
    # site.env's MVM_GPUS_PER_NODE=4 sets the second process count; it waits for the base probe.
    ddp = next(job for job in jobs if job[0] == "train-x1-T8-p4b4-n20000-s0")
    assert ddp[1] == "gpu" and "probe-x1-T8-p1b16-n20000-s0" in ddp[2].split(":")[1].split(",")
    assert list((tmp_path / "sweep" / "logs").iterdir()) == []  # nothing was submitted
