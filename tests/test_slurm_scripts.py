"""slurm/ scripts without a cluster: syntax, documented #SBATCH lines, usage errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SLURM = Path(__file__).resolve().parents[1] / "slurm"
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
    ],
)
def test_usage_errors_exit_2_before_submitting(args, tmp_path):
    # No sbatch on PATH: a script that got past its argument checks would fail differently.
    done = subprocess.run(["bash", SLURM / args[0], *args[1:]], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # fmt: skip
    assert done.returncode == 2, done.stderr
