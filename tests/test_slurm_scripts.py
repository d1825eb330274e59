"""slurm/ scripts without a cluster: syntax, documented #SBATCH lines, usage errors, a --local re-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _sweep_helpers import EXPERIMENTS, make_sweep

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


@pytest.mark.slow
def test_local_rerun_of_a_probed_sweep_only_reports(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    done = subprocess.run(["bash", SLURM / "scaling.sh", "--local", sweep], cwd=REPO,
                          env={"PATH": LOCAL_PATH, "HOME": str(tmp_path)}, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("already probed, kept") == len(EXPERIMENTS)
    assert "scaling.sh: report\n" in done.stderr and "scaling.sh: train" not in done.stderr
    assert not (sweep / "nuscenes").exists()  # nothing to ingest: no dataroot synthesized
    assert len(json.loads((sweep / "report" / "scaling.json").read_text())["runs"]) == len(EXPERIMENTS)
    assert "mode=local" in (sweep / "sweep.env").read_text()


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
    assert hows["train-x4-T8-w4"] == "gpu"  # site.env's MVM_GPUS_PER_NODE=4 sets the second world size
    assert list((tmp_path / "sweep" / "logs").iterdir()) == []  # nothing was submitted
