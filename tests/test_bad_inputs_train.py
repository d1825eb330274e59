"""mvm-train against hostile or broken surroundings (issue 23, the training rows): a second trainer
on the run folder, data changed under a run, torn log lines, checkpoints that do not fit their
config, a full disk, a planted symlink, bad samples in a dropped batch, output modes. Each ends in
one line and the right exit code, never a traceback, and leaves the run folder usable.

Runs are in-process (CliRunner) where they can be, a subprocess where a second process is the point.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_helpers import FAULTS, REPO, read_keys, tiny_config, write_shards
from click.testing import CliRunner

from mvm.atomic import exclusive_lock
from mvm.shards import iter_samples, sample_members, write_shard_folder
from mvm.train.checkpoint import complete_checkpoints, load_for_eval
from mvm.train.cli import main
from mvm.train.metrics import read_jsonl

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "train", [4, 4])


def train(shards, run: Path, config: Path, steps: int, *extra: str):
    """mvm-train in this process; the result's output holds stdout and stderr."""
    args = ["--shards", str(shards), "--out", str(run), "--model", "tiny", "--config", str(config),
            "--device", "cpu", "--steps", str(steps), *extra]  # fmt: skip
    return CliRunner().invoke(main, args)


def check(result, code: int = 0) -> None:
    """Exit `code` by the CLI's own sys.exit (an escaped exception would also read as exit 1 here)."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output


def resume_steps(run: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "resume"]


# ---- row 5: one writer per run folder -------------------------------------------------------------


@pytest.mark.slow
def test_second_trainer_on_a_busy_run_folder_exits_1_and_changes_nothing(shard_dir, tmp_path):
    config, run, pause = tiny_config(tmp_path / "c.json"), tmp_path / "run", tmp_path / "paused"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MVM_FAULT_PAUSE_AT_STEP": "2",
        "MVM_FAULT_PAUSE_FILE": str(pause),
    }
    first = subprocess.Popen(
        [sys.executable, str(FAULTS), "--shards", str(shard_dir), "--out", str(run), "--model", "tiny",
         "--config", str(config), "--device", "cpu", "--steps", "4"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not pause.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pause.exists(), first.communicate()[0]
        before = {name: (run / name).read_bytes() for name in ("keys-rank0.jsonl", "metrics.jsonl")}
        second = train(shard_dir, run, config, 4, "--lr", "0.01")
        check(second, 1)
        assert f"in use by mvm-train (pid {first.pid})" in second.output
        assert {name: (run / name).read_bytes() for name in before} == before
    finally:
        pause.unlink(missing_ok=True)
        output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output
    assert [step for step, _ in read_keys(run)] == [1, 2, 3, 4]
    saved = json.loads((complete_checkpoints(run)[-1] / "config.json").read_text())
    assert saved["optim"]["lr"] != 0.01
    check(train(shard_dir, run, config, 5))  # the lock went with the first process


# ---- row 4: a run trains on the data it started with ----------------------------------------------


@pytest.mark.slow
def test_resume_compares_shard_content_not_spelling(tmp_path, monkeypatch):
    config, run = tiny_config(tmp_path / "c.json"), tmp_path / "run"
    here, there = tmp_path / "here", tmp_path / "there"
    write_shards(here / "shards", [4, 4])
    write_shards(there / "shards", [4, 4], seed=1)  # the same names, other clips
    monkeypatch.chdir(here)
    check(train("shards", run, config, 2))

    monkeypatch.chdir(there)  # the same relative spec from another working folder: other data
    moved = train("shards", run, config, 3)
    check(moved, 2)
    assert (
        "trained on other data" in moved.output and str(there / "shards" / "shard-000000.tar") in moved.output
    )
    assert resume_steps(run) == []

    same_files = train("../here/shards/shard-{000000..000001}.tar", run, config, 3)  # another spelling
    check(same_files)
    assert resume_steps(run) == [2]

    monkeypatch.chdir(here)  # re-ingested in place with other scenes
    write_shards(here / "shards", [4, 4], seed=2)
    reingested = train("shards", run, config, 4)
    check(reingested, 2)
    assert "shard-000001.tar" in reingested.output and "start a new run folder" in reingested.output
    assert [step for step, _ in read_keys(run)] == [1, 2, 3]


def test_saved_position_that_no_longer_fits_is_one_line_exit_1(tmp_path):
    """A checkpoint from before shard identities (compared by path only) on shards re-ingested smaller."""
    config, run, shards = tiny_config(tmp_path / "c.json"), tmp_path / "run", tmp_path / "shards"
    write_shards(shards, [6, 6])
    check(train(shards, run, config, 2))  # epoch 0, 8 of 12 samples consumed
    state_path = complete_checkpoints(run)[-1] / "state.pt"
    state = torch.load(state_path, weights_only=True)
    state.pop("shards", None)
    torch.save(state, state_path)
    write_shards(shards, [5], seed=1)
    result = train(shards, run, config, 3)
    check(result, 1)
    assert "data position" in result.output and "does not fit these shards" in result.output


# ---- row 9: torn log lines -------------------------------------------------------------------------


@pytest.mark.slow
def test_torn_last_log_lines_are_dropped_on_resume_and_skipped_by_the_report(shard_dir, tmp_path):
    from mvm.slurm.report_collect import collect

    config, run = tiny_config(tmp_path / "c.json"), tmp_path / "run"
    check(train(shard_dir, run, config, 2))
    with open(run / "keys-rank0.jsonl", "a") as keys, open(run / "metrics.jsonl", "a") as metrics:
        keys.write('{"step": 3, "keys": ["scene-0000-00')  # a crash mid-write
        metrics.write('{"step": 3, "loss": 0.')
    with pytest.warns(UserWarning, match="metrics.jsonl line .* not a JSON object"):
        records, skipped = collect([run])
    assert skipped == [] and [r.steps for r in records] == [2]

    resumed = train(shard_dir, run, config, 3)
    check(resumed)
    assert "keys-rank0.jsonl line 3 is not a JSON object" in resumed.output
    assert [step for step, _ in read_keys(run)] == [1, 2, 3]  # every line parses again
    assert resume_steps(run) == [2]


# ---- row 11: weights that do not fit their config ---------------------------------------------------


@pytest.mark.slow
def test_checkpoint_whose_weights_do_not_fit_its_config_is_skipped(shard_dir, tmp_path, capsys):
    config, run = tiny_config(tmp_path / "c.json", ckpt_every=1), tmp_path / "run"
    check(train(shard_dir, run, config, 2))
    newest = complete_checkpoints(run)[-1] / "state.pt"
    state = torch.load(newest, weights_only=True)
    state["config"]["model"]["embed_dim"] = 64  # weights of a d=32 model under a d=64 config
    torch.save(state, newest)

    _, loaded, folder = load_for_eval(run)  # what mvm-probe calls
    assert folder.name == "step-000001" and loaded.model.embed_dim == 32
    assert "weights do not match its config" in capsys.readouterr().err

    resumed = train(shard_dir, run, config, 3)
    check(resumed)
    assert str(newest) in resumed.output and "trying the previous one" in resumed.output
    assert resume_steps(run) == [1]


# ---- row 8: a full disk while a checkpoint is written ------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root; skipped where mounting is refused), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.slow
def test_full_disk_while_checkpointing_is_one_line_exit_1_and_keeps_the_run(shard_dir, tmp_path, small_disk):
    config, run = tiny_config(tmp_path / "c.json", viz_every=1000), small_disk / "run"
    check(train(shard_dir, run, config, 1))
    first = complete_checkpoints(run)[-1]
    size = sum(path.stat().st_size for path in first.iterdir())
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - size // 2))  # room for the logs, not a checkpoint

    result = train(shard_dir, run, config, 2)
    check(result, 1)
    assert "no space left on the device" in result.output and "state.pt" in result.output
    assert complete_checkpoints(run) == [first] and (first / "state.pt").stat().st_size > 0
    assert not list((run / "checkpoints").glob(".*")), "a temporary was left behind"
    (small_disk / "filler").unlink()
    check(train(shard_dir, run, config, 2))  # and the run goes on from its checkpoint
    assert resume_steps(run)[-1] == 1


# ---- row 14: a symlink planted among the checkpoints ---------------------------------------------


@pytest.mark.slow
def test_symlinks_at_step_folders_are_neither_loaded_nor_pruned(shard_dir, tmp_path):
    config, run = tiny_config(tmp_path / "c.json", ckpt_every=1, keep_ckpts=1), tmp_path / "run"
    check(train(shard_dir, run, config, 2))
    victim = shutil.copytree(complete_checkpoints(run)[-1], tmp_path / "victim")  # complete, elsewhere
    for name in ("step-000001", "step-000009"):  # an older one to prune, a newer one to load
        (run / "checkpoints" / name).symlink_to(victim, target_is_directory=True)

    resumed = train(shard_dir, run, config, 4)
    check(resumed)
    assert "step-000009: a symlink" in resumed.output
    assert resume_steps(run) == [2]
    assert [p.name for p in complete_checkpoints(run)] == ["step-000004"]
    assert (run / "checkpoints" / "step-000001").is_symlink() and (victim / "state.pt").is_file()


# ---- row 15: a bad sample in the short final batch -------------------------------------------------


def test_bad_sample_in_the_dropped_final_batch_is_reported(shard_dir, tmp_path):
    samples = [sample_members(s) for s in iter_samples(shard_dir / "shard-000000.tar")]
    samples += [sample_members(s) for s in iter_samples(shard_dir / "shard-000001.tar")][:2]
    bad_key = samples[-1][0][0].split(".")[0]
    samples[-1] = [(name, b"" if name.endswith(".mp4") else data) for name, data in samples[-1]]
    shards = tmp_path / "shards"
    write_shard_folder(shards, [samples], {"clip_len": 8, "size": [32, 64]})
    # In file order (a one-sample shuffle buffer): batches of 2 from 5 good clips, then the bad one
    # together with the 5th, a short final batch that is dropped.
    config = tiny_config(tmp_path / "c.json", data={"batch_size": 2, "shuffle_buffer": 1})
    result = train(shards, tmp_path / "run", config, 3, "--on-bad-sample", "skip")
    check(result)
    assert f"skipped bad sample: shard {shards / 'shard-000000.tar'}, sample {bad_key}" in result.output
    events = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("event") == "bad_sample"]
    assert [(e["step"], bad_key in e["detail"]) for e in events] == [(2, True)]


# ---- output modes and exit codes --------------------------------------------------------------------


def test_checkpoint_folders_follow_the_umask(shard_dir, tmp_path):
    config, run = tiny_config(tmp_path / "c.json"), tmp_path / "run"
    check(train(shard_dir, run, config, 1))
    umask = os.umask(0o022)
    os.umask(umask)
    folder = complete_checkpoints(run)[-1]
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert {path.stat().st_mode & 0o777 for path in folder.iterdir()} == {0o666 & ~umask}


def test_damaged_manifest_is_a_data_failure_exit_1(shard_dir, tmp_path):
    shards = shutil.copytree(shard_dir, tmp_path / "shards")
    (shards / "manifest.json").write_text('{"format": "mvm-shards", "version": 1, "shards": [')
    result = train(shards, tmp_path / "run", tiny_config(tmp_path / "c.json"), 1)
    check(result, 1)
    assert "data error" in result.output and "manifest.json" in result.output


def test_held_lock_is_refused_before_anything_is_read_or_written(shard_dir, tmp_path):
    config, run = tiny_config(tmp_path / "c.json"), tmp_path / "run"
    with exclusive_lock(run, "mvm-train"):
        result = train(shard_dir, run, config, 1)
    check(result, 1)
    assert "in use by mvm-train" in result.output
    assert sorted(p.name for p in run.iterdir()) == [".mvm.lock"]
