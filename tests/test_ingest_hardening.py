"""Issue 11's attacks on ingest, audit and the shard readers, each reproduced and now refused.

One test (or parametrized case) per row of the issue's table that ingest, audit or a reader
(mvm.train.data / mvm.probe.data through mvm.shards) owns; the training-loop rows live with the trainer
tests. Every case asserts the fixed behaviour: nothing written outside the folder, a clear
message, the documented exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _ingest_helpers import audit, cam_front_chains, copy_dataroot, ingest
from _train_helpers import REPO, VENV_BIN, write_shards
from click.testing import CliRunner
from PIL import Image

from mvm.ingest.output import MARKER
from mvm.probe.data import read_metadata
from mvm.shards import MANIFEST, ShardError, iter_verified, resolve_shards, sha256_file, shard_clip_counts
from mvm.synth.cli import main as synth_main
from mvm.train.config import DataConfig
from mvm.train.data import epoch_samples
from mvm.train.split import plan_epoch

OUTSIDE = b"a file outside every output folder\n"


@pytest.fixture
def outside(tmp_path) -> Path:
    path = tmp_path / "outside.txt"
    path.write_bytes(OUTSIDE)
    return path


def copy_output(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("audit"))
    return target


def edit_manifest(folder: Path, **fields) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.update(fields)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def failed_checks(report_dir: Path) -> dict[str, list[str]]:
    report = json.loads((report_dir / "audit.json").read_text())
    return {check["name"]: check["failures"] for check in report["checks"] if not check["ok"]}


# --- writes never leave their folder -----------------------------------------------------------


def test_symlinks_at_temporary_and_final_names_are_never_written_through(dataroot, good, tmp_path, outside):
    out = tmp_path / "out"
    (out / "staging").mkdir(parents=True)
    planted = [
        out / ".shard-000000.tar.partial",
        out / "staging" / ".scene-0002.tar.partial",
        out / "staging" / ".scene-0061.tar.partial",
        out / "shard-000000.tar",
        out / MANIFEST,
    ]
    for link in planted:
        link.symlink_to(outside)
    result = ingest(dataroot, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert outside.read_bytes() == OUTSIDE
    assert not (out / "shard-000000.tar").is_symlink() and not (out / MANIFEST).is_symlink()
    assert (out / "shard-000000.tar").read_bytes() == (good / "shard-000000.tar").read_bytes()
    assert not list(out.glob(".*.partial"))  # finalize removes temporaries a killed run left


def test_symlinked_log_or_output_folder_is_refused(dataroot, tmp_path, outside):
    # The links are planted in folders mvm-ingest started (its marker), where it would write.
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("")
    (out / "ingest.log").symlink_to(outside)
    result = ingest(dataroot, out)
    assert result.exit_code == 1 and "ingest.log" in result.output and "symlink" in result.output
    assert outside.read_bytes() == OUTSIDE
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    result = ingest(dataroot, tmp_path / "link")
    assert result.exit_code == 1 and "symlink" in result.output, result.output
    assert list(real.iterdir()) == []
    for folder in ("staging", "parts"):
        out = tmp_path / f"out-{folder}"
        out.mkdir()
        (out / MARKER).write_text("")
        (out / folder).symlink_to(real)
        result = ingest(dataroot, out)
        assert result.exit_code == 1 and f"{folder}: it is a symlink" in result.output, result.output
        assert list(real.iterdir()) == []


def test_figures_are_saved_atomically_and_closed_even_when_refused(tmp_path, outside):
    """mvm.atomic.save_figure, the one way plots are written: a PNG replaces a symlink planted at
    the final name (the link's target is untouched), a symlinked folder is refused with OutputError,
    and the figure is closed in both cases (no figures pile up in a long sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mvm.atomic import OutputError, save_figure

    out = tmp_path / "plots"
    out.mkdir()
    (out / "loss.png").symlink_to(outside)
    figure = plt.figure()
    assert save_figure(figure, out / "loss.png") == out / "loss.png"
    assert not (out / "loss.png").is_symlink() and Image.open(out / "loss.png").format == "PNG"
    assert outside.read_bytes() == OUTSIDE and figure.number not in plt.get_fignums()
    (tmp_path / "linked").symlink_to(out)
    figure = plt.figure()
    with pytest.raises(OutputError, match="symlink"):
        save_figure(figure, tmp_path / "linked" / "other.png")
    assert figure.number not in plt.get_fignums() and not (out / "other.png").exists()


def test_symlinked_audit_folder_refused_and_audit_md_link_replaced(good, tmp_path, outside):
    out = copy_output(good, tmp_path / "out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "audit").symlink_to(elsewhere)
    result = audit(out, "--psnr-clips", "0")
    assert result.exit_code == 1 and "symlink" in result.output and "Traceback" not in result.output
    assert list(elsewhere.iterdir()) == []
    (out / "audit").unlink()
    (out / "audit").mkdir()
    (out / "audit" / "audit.md").symlink_to(outside)
    (out / "audit" / "audit.json").symlink_to(outside)
    assert audit(out, "--psnr-clips", "0").exit_code == 0
    assert outside.read_bytes() == OUTSIDE
    assert (
        not (out / "audit" / "audit.md").is_symlink() and "PASS" in (out / "audit" / "audit.md").read_text()
    )


# --- manifests are data ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside.tar", "../../../../etc/passwd", "/etc/hostname", "shard-1.tar"])
def test_manifest_names_outside_the_folder_are_refused_by_audit(good, tmp_path, name):
    out = copy_output(good, tmp_path / "set" / "out")
    shutil.copy(out / "shard-000000.tar", tmp_path / "set" / "outside.tar")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["shards"][0]["name"] = name  # sha256 and size still those of the copied shard
    (out / MANIFEST).write_text(json.dumps(manifest))
    result = audit(out, "--psnr-clips", "0")
    assert result.exit_code == 1, result.output
    assert any(
        name in line and "shard-NNNNNN.tar" in line for line in failed_checks(out / "audit")["manifest"]
    )


@pytest.fixture
def small_set(tmp_path) -> Path:
    return write_shards(tmp_path / "set" / "train", [3, 2], clip_len=4, size=(32, 32))


@pytest.mark.parametrize("name", ["../outside.tar", "../../../../etc/passwd", "/etc/hostname"])
def test_manifest_names_outside_the_folder_are_refused_by_train_and_probe(small_set, name):
    shutil.copy(small_set / "shard-000000.tar", small_set.parent / "outside.tar")
    manifest = json.loads((small_set / MANIFEST).read_text())
    manifest["shards"][0]["name"] = name
    (small_set / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="shard-NNNNNN.tar"):
        resolve_shards(str(small_set))  # mvm-train and mvm-probe both resolve through this
    with pytest.raises(ShardError, match="not of the form"):
        read_metadata([str(small_set / "shard-000001.tar")])  # the manifest is refused as a whole


def test_listed_name_that_is_a_symlink_out_of_the_folder_is_refused(small_set, outside):
    target = small_set.parent / "moved.tar"
    (small_set / "shard-000000.tar").rename(target)
    (small_set / "shard-000000.tar").symlink_to(target)
    with pytest.raises(ShardError, match="resolves outside"):
        resolve_shards(str(small_set))


def test_unlisted_shard_and_temporaries_fail_the_audit_and_are_not_read(good, small_set, tmp_path):
    out = copy_output(good, tmp_path / "out")
    shutil.copy(out / "shard-000000.tar", out / "shard-000009.tar")
    (out / ".shard-000001.tar.x1y2.partial").write_bytes(b"half")
    assert audit(out, "--psnr-clips", "0").exit_code == 1
    failures = " ".join(failed_checks(out / "audit")["folder"])
    assert "shard-000009.tar is not listed" in failures and ".shard-000001.tar.x1y2.partial" in failures
    shutil.copy(small_set / "shard-000000.tar", small_set / "shard-000009.tar")
    with pytest.raises(ShardError, match="shard-000009.tar is not listed"):
        resolve_shards(f"{small_set}/shard-*.tar")  # a glob reader no longer picks it up


def test_zero_clip_manifest_fails_the_audit(good, tmp_path):
    out = copy_output(good, tmp_path / "out")
    for path in out.glob("shard-*.tar"):
        path.unlink()
    edit_manifest(out, shards=[], total_clips=0, scenes=[])
    assert audit(out, "--psnr-clips", "0").exit_code == 1
    assert any("0 clips" in line for line in failed_checks(out / "audit")["counts"])


def test_flipped_byte_is_a_corrupt_shard_for_train_and_probe(small_set):
    shard = small_set / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    urls = resolve_shards(str(small_set))
    plan = plan_epoch(shard_clip_counts(urls), 1, 0, seed=0, epoch=0)
    with pytest.raises(ShardError, match="shard-000001.tar does not match its sha256"):
        list(epoch_samples(urls, plan[0], 0, DataConfig(workers=0), 0, 0, 0, (4, 32, 32, 3)))
    samples = list(
        epoch_samples(urls, plan[0], 0, DataConfig(workers=0, on_bad_sample="skip"), 0, 0, 0, (4, 32, 32, 3))
    )
    bad = [sample for sample in samples if "bad" in sample]
    assert len(bad) == 1 and "sha256" in bad[0]["bad"] and len(samples) == 3 + 1
    with pytest.raises(ShardError, match="sha256"):
        read_metadata(urls)
    assert len(list(iter_verified(urls[0]))) == 3  # the intact shard still reads


# --- ingest stays empty-safe and honest ----------------------------------------------------------


def test_clip_len_longer_than_every_scene_fails_with_reasons(dataroot, tmp_path):
    out = tmp_path / "out"
    result = ingest(dataroot, out, "--clip-len", "1000")
    assert result.exit_code == 1, result.output
    assert "no clip was written" in result.output and not (out / MANIFEST).exists()
    for scene in cam_front_chains(dataroot):
        assert f"{scene}: too_short" in result.output


@pytest.mark.parametrize("table", ["scene", "sample_data"])
def test_invalid_table_json_names_the_file_and_position(dataroot, tmp_path, table):
    root = copy_dataroot(dataroot, tmp_path / "root")
    path = root / "v1.0-mini" / f"{table}.json"
    path.write_bytes(path.read_bytes()[:-40])
    result = ingest(root, tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{table}.json is not valid JSON (line" in result.output


def test_png_named_jpg_and_wrong_size_frame_are_corrupt_files(dataroot, tmp_path):
    root = copy_dataroot(dataroot, tmp_path / "root")
    chain = next(iter(cam_front_chains(root).values()))
    png, tiny = root / chain[10]["filename"], root / chain[30]["filename"]
    with Image.open(png) as image:
        image.convert("RGB").save(png, format="PNG")  # same pixels and size, wrong format
    Image.new("RGB", (8, 8), "gray").save(tiny, format="JPEG")
    out = tmp_path / "out"
    assert ingest(root, out).exit_code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    corrupt = {r["frame_index"] for r in manifest["rejects"] if r["reason"] == "corrupt_file"}
    assert {10, 30} <= corrupt
    used = {
        t
        for path in out.glob("shard-*.tar")
        for s in iter_verified(path)
        for t in json.loads(s["json"])["sample_data_tokens"]
    }
    assert chain[10]["token"] not in used and chain[30]["token"] not in used


# --- output folders that cannot be written ----------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str):
    """A real small or read-only file system at `path` (needs mount rights; skipped otherwise)."""
    path.mkdir(parents=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_and_file_outputs_get_one_line(dataroot, good, tmp_path):
    (tmp_path / "file").write_text("x")
    result = ingest(dataroot, tmp_path / "file")
    assert result.exit_code == 2 and "is a file" in result.output and "Traceback" not in result.output
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        context = contextlib.nullcontext(tmp_path / "ro")
    else:
        context = mounted_tmpfs(tmp_path / "ro", "ro,size=1m")
    with context as read_only:
        result = ingest(dataroot, read_only / "out")
        assert result.exit_code == 1 and "read-only" in result.output, result.output
        result = audit(good, "--psnr-clips", "0", "--out", str(read_only / "report"))
        assert result.exit_code == 1 and "read-only" in result.output, result.output
        args = [
            "--out",
            str(read_only / "synth"),
            "--scenes",
            "1",
            "--frames-per-scene",
            "4",
            "--width",
            "64",
        ]
        result = CliRunner().invoke(synth_main, args)
        assert result.exit_code == 1 and "read-only file system" in result.output.lower(), result.output


def test_disk_full_during_finalize_is_one_line_and_leaves_no_temporaries(dataroot, good, tmp_path):
    shard_bytes = sum(path.stat().st_size for path in good.glob("shard-*.tar"))
    # Staging holds about the shards' bytes; finalize writes them again next to it: 1.5x fills up.
    with mounted_tmpfs(tmp_path / "small", f"size={int(shard_bytes * 1.5) // 4096 * 4096}") as small:
        result = ingest(dataroot, small / "out")
        assert result.exit_code == 1 and "no space left" in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3
        assert not [p for p in (small / "out").rglob("*") if p.name.endswith(".partial")]
        assert not (small / "out" / MANIFEST).exists()


# --- workers die with their parent ---------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = {int(c) for c in (task / "children").read_text().split()}
                todo += sorted(children - found)
                found |= children
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigkill_of_ingest_leaves_no_worker_alive(dataroot, tmp_path):
    command = [str(VENV_BIN / "mvm-ingest"), "--dataroot", str(dataroot), "--version", "v1.0-mini",
               "--scenes", "all", "--out", str(tmp_path / "out"), "--workers", "2"]  # fmt: skip
    parent = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(children) < 3 and parent.poll() is None:
            children |= descendants(parent.pid)  # 2 workers + multiprocessing's resource tracker
            time.sleep(0.05)
        assert len(children) >= 2, "the workers never started"
        time.sleep(1.0)  # let the workers get into staging
        children |= descendants(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(pid) for pid in children):
            time.sleep(0.1)
        assert not [pid for pid in children if alive(pid)], "children outlived their killed parent"
    finally:  # on failure, clean up exactly the processes this test started
        if parent.poll() is None:
            children |= descendants(parent.pid)
            parent.kill()
        for pid in children:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_readers_name_a_damaged_manifest(small_set):
    (small_set / MANIFEST).write_text('{"format": "mvm-shards", "version": 1, "shards": [')
    with pytest.raises(ShardError, match=r"manifest.json is not valid JSON \(line 1, column"):
        resolve_shards(str(small_set))
    assert sha256_file(small_set / "shard-000000.tar")  # the shards themselves are untouched
