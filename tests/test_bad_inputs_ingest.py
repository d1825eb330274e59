"""Issue 23's attacks on mvm-ingest and mvm-audit (rows 1, 2, 3, 6, 17, 19 and the leftover
temporaries), each reproduced and now refused: names from the dataroot are data, an output
folder belongs to one writer and one tool, --overwrite touches only mvm-ingest's own files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _ingest_helpers import (
    VERSION,
    audit,
    cam_front_chains,
    copy_dataroot,
    edit_cam_front,
    ingest,
    load_table,
    output_files,
    save_table,
)
from _train_helpers import VENV_BIN

from mvm.atomic import exclusive_lock
from mvm.ingest.output import MARKER, folder_lock, part_lock
from mvm.shards import MANIFEST
from mvm.video import DEFAULT_CRF

THEIRS = b"someone else's file\n"


def copy_output(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("audit"))
    return target


def folder_failures(report_dir: Path) -> str:
    report = json.loads((report_dir / "audit.json").read_text())
    return " ".join(next(check["failures"] for check in report["checks"] if check["name"] == "folder"))


# --- rows 1 and 6: scene records are validated before any file is named after them ---------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("absolute", "cannot name a file"),
        ("dotdot", "cannot name a file"),
        ("duplicate", "used by two records"),
        ("missing", "has no name"),
        ("numeric", "not a string"),
    ],
)
def test_unusable_scene_names_are_named_before_anything_is_written(dataroot, tmp_path, change, message):
    root = copy_dataroot(dataroot, tmp_path / "root")
    victim = tmp_path / "victim" / "important"
    victim.parent.mkdir()
    victim.with_suffix(".json").write_bytes(THEIRS)
    scenes = load_table(root, "scene")
    first = scenes[0]
    if change == "absolute":
        first["name"] = str(victim)
    elif change == "dotdot":
        first["name"] = "../../../x"
    elif change == "duplicate":
        first["name"] = scenes[1]["name"]
    elif change == "missing":
        del first["name"]
    else:
        first["name"] = 61
    save_table(root, "scene", scenes)
    out = tmp_path / "work" / "out"
    result = ingest(root, out)
    assert result.exit_code == 1 and message in result.output, result.output
    assert first["token"] in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2
    assert victim.with_suffix(".json").read_bytes() == THEIRS and not victim.with_suffix(".tar").exists()
    assert not out.exists() and not (tmp_path / "x.tar").exists()


# --- row 19: a sample_data filename outside the dataroot is never opened -------------------------


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_frame_filename_outside_the_dataroot_is_refused_naming_the_token(dataroot, tmp_path, where):
    root = copy_dataroot(dataroot, tmp_path / "root")
    name, chain = next(iter(cam_front_chains(root).items()))
    record = chain[3]
    secret = tmp_path / "secret.jpg"
    shutil.copy(root / record["filename"], secret)  # a readable image: only the name can stop it
    filename = str(secret) if where == "absolute" else "../secret.jpg"
    edit_cam_front(root, {record["token"]: {"filename": filename}})
    out = tmp_path / "out"
    result = ingest(root, out, scenes=name)
    assert result.exit_code == 1, result.output
    assert record["token"] in result.output and "outside the dataroot" in result.output
    assert "Traceback" not in result.output and not (out / MANIFEST).exists()
    assert not list(out.rglob("*.tar"))


def test_real_nuscenes_names_pass():
    from mvm.ingest.names import check_filename, scene_names

    real = "samples/CAM_FRONT/n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927612460.jpg"
    assert check_filename({"token": "t", "filename": real}) == real
    assert list(
        scene_names([{"token": "a", "name": "scene-0001"}, {"token": "b", "name": "scene-1110"}])
    ) == [
        "scene-0001",
        "scene-1110",
    ]


# --- row 2: a folder of someone else's files is not mvm-ingest's ---------------------------------


def test_foreign_folder_refused_and_overwrite_touches_only_ingest_files(dataroot, good, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "shard-000005.tar").write_bytes(THEIRS)
    (out / ".mydata.partial").write_bytes(THEIRS)
    result = ingest(dataroot, out)
    assert result.exit_code == 2 and "did not write" in result.output and "--overwrite" in result.output
    assert sorted(path.name for path in out.iterdir()) == [".mydata.partial", "shard-000005.tar"]
    assert (out / "shard-000005.tar").read_bytes() == THEIRS
    result = ingest(dataroot, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / ".mydata.partial").read_bytes() == THEIRS  # not a name mvm-ingest writes
    assert output_files(out) == output_files(good) and (out / MARKER).is_file()
    # Now the folder is mvm-ingest's: a later run needs no --overwrite.
    assert ingest(dataroot, out).exit_code == 0


# --- row 3: one writer per output folder (per part for an array) ---------------------------------


def test_second_writer_is_refused_at_once(dataroot, tmp_path):
    out = tmp_path / "out"
    with folder_lock(out, shared=False):  # a single run or a finalize holds the folder
        for extra in ([], ["--crf", "30"], ["--part", "0/2"], ["--finalize"]):
            result = ingest(dataroot, out, *extra)
            assert result.exit_code == 1 and "in use by mvm-ingest (pid" in result.output, result.output
            assert len(result.output.strip().splitlines()) == 1
    assert not (out / MANIFEST).exists() and not (out / "staging").exists()
    with folder_lock(out, shared=True), part_lock(out, 0, 2):  # part 0/2 is running
        result = ingest(dataroot, out, "--part", "0/2")
        assert result.exit_code == 1 and "--part 0/2" in result.output, result.output
        for extra in ([], ["--finalize"]):
            result = ingest(dataroot, out, *extra)
            assert result.exit_code == 1 and "in use by mvm-ingest" in result.output, result.output
        result = ingest(dataroot, out, "--part", "1/2")  # another part of the array runs alongside
        assert result.exit_code == 0, result.output
    assert ingest(dataroot, out, "--part", "0/2").exit_code == 0
    assert ingest(dataroot, out, "--finalize").exit_code == 0
    assert not (out / "staging").exists()  # part locks go with staging/


@pytest.mark.slow  # two real processes: about 8 s on two busy cores
def test_two_real_ingests_at_once_never_replace_each_other(dataroot, tmp_path):
    """Row 3 with two real processes started together, the second with other options: one
    writes, the other stops (in use, or, if it came late, the folder holds other options)."""
    out = tmp_path / "out"
    args = ["--dataroot", str(dataroot), "--version", VERSION, "--scenes", "all", "--out", str(out)]
    runs = [
        subprocess.Popen([str(VENV_BIN / "mvm-ingest"), *args, *extra], stderr=subprocess.PIPE, text=True)
        for extra in ([], ["--crf", "30"])
    ]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) in ([0, 1], [0, 2]), errors
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert "in use by mvm-ingest (pid" in errors[loser] or "other options" in errors[loser], errors[loser]
    assert "Traceback" not in errors[loser]
    assert json.loads((out / MANIFEST).read_text())["config"]["crf"] == (DEFAULT_CRF if winner == 0 else 30)


def test_audit_report_folder_has_one_writer(good, tmp_path):
    report = tmp_path / "report"
    with exclusive_lock(report, "mvm-audit"):
        result = audit(good, "--psnr-clips", "0", "--out", str(report))
    assert result.exit_code == 1 and "in use by mvm-audit" in result.output
    assert not (report / "audit.json").exists()


# --- row 17: --overwrite with another number of parts --------------------------------------------


@pytest.mark.slow
def test_overwrite_with_another_part_count_replaces_the_old_ledgers(dataroot, good, tmp_path):
    out = copy_output(good, tmp_path / "out")  # finished as one process: ledger part 0 of 1
    for step in (["--part", "0/2"], ["--part", "1/2"], ["--finalize"]):
        result = ingest(dataroot, out, "--clip-len", "4", "--overwrite", *step)
        assert result.exit_code == 0, result.output
    assert json.loads((out / MANIFEST).read_text())["config"]["clip_len"] == 4
    assert sorted(path.name for path in (out / "parts").iterdir()) == [
        "part-0000-of-0002.json",
        "part-0001-of-0002.json",
    ]
    assert audit(out, "--psnr-clips", "0").exit_code == 0


# --- leftover temporaries: reported by the audit, removed by their tool's next run ---------------


@pytest.mark.slow
def test_leftover_temporaries_fail_the_audit_and_are_cleaned_by_their_owner(dataroot, good, tmp_path):
    out = copy_output(good, tmp_path / "out")
    planted = {
        "staging/.scene-0061.tar.k3j4.partial",
        "parts/.part-0000-of-0001.json.k3j4.partial",
        "audit/.audit.json.k3j4.partial",
    }
    for name in planted:
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(b"half")
    result = audit(out, "--psnr-clips", "0", "--out", str(tmp_path / "report"))
    assert result.exit_code == 1
    assert all(f"{name} is a leftover" in folder_failures(tmp_path / "report") for name in planted)
    result = audit(out, "--psnr-clips", "0")  # mvm-audit owns audit/: its own leftovers go first
    assert result.exit_code == 1 and not (out / "audit/.audit.json.k3j4.partial").exists()
    assert "audit/" not in folder_failures(out / "audit")
    result = ingest(dataroot, out)  # complete already; mvm-ingest removes its own leftovers
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert not [name for name in planted if (out / name).exists()]
    assert audit(out, "--psnr-clips", "0").exit_code == 0


def test_output_files_follow_the_umask(good, tmp_path):
    expected = 0o666 & ~_current_umask()
    assert {path.stat().st_mode & 0o777 for path in good.glob("*.tar")} | {
        (good / MANIFEST).stat().st_mode & 0o777
    } == {expected}
    script = "import sys; from mvm.atomic import write_atomic; write_atomic(sys.argv[1], 'x')"
    for umask, mode in ((0o027, 0o640), (0o002, 0o664)):
        target = tmp_path / f"file-{umask:o}"
        subprocess.run(
            [sys.executable, "-c", script, str(target)], check=True, preexec_fn=lambda u=umask: os.umask(u)
        )
        assert target.stat().st_mode & 0o777 == mode


def _current_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask
