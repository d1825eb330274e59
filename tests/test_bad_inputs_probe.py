"""Issue 23, the reading rows: FIFOs where files are expected (7), a run config of the wrong shape
read by mvm-report (12), a short clip read by mvm-probe (16), brace patterns and repeated shards in
--shards (18), one mvm-probe per --out. Each test fails on the code before the fix (a hang counts:
`no_hang` turns it into a TimeoutError)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _sweep_helpers import write_run
from _train_helpers import moving_clip, write_shards
from click.testing import CliRunner

from mvm.atomic import exclusive_lock
from mvm.ingest.audit_cli import main as audit_main
from mvm.probe.cli import EXIT_ERROR
from mvm.probe.cli import main as probe_main
from mvm.shards import (
    FORMAT_VERSION,
    DamagedShardError,
    ShardError,
    ShardWarning,
    clip_key,
    iter_samples,
    read_manifest,
    resolve_shards,
    write_shard_folder,
)
from mvm.slurm.report_collect import collect
from mvm.train.checkpoint import CheckpointError, load_newest, save
from mvm.train.config import apply_overrides, preset
from mvm.train.model import build_model
from mvm.video import encode_clip

MVM_REPORT = Path(sys.executable).parent / "mvm-report"
SIZE, CLIP_LEN = (32, 64), 8


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """Raise TimeoutError in the block after `seconds` (opening a FIFO for reading blocks forever)."""

    def expire(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards") / "set", [2, 2, 1])


# --- Row 7: a FIFO where a regular file is expected ----------------------------------------------


def test_fifo_manifest_is_refused_unopened(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    os.mkfifo(folder / "manifest.json")
    with (
        no_hang(),
        pytest.raises(DamagedShardError, match=r"manifest.json: it is a FIFO, not a regular file"),
    ):
        read_manifest(folder)
    with no_hang():
        result = CliRunner().invoke(audit_main, [str(folder), "--out", str(tmp_path / "audit")])
    assert result.exit_code == 1 and "a FIFO, not a regular file" in result.output, result.output
    assert "Traceback" not in result.output


def test_fifo_shard_is_refused_by_resolve_and_read(tmp_path):
    folder = write_shards(tmp_path / "set", [1, 1])
    (folder / "shard-000001.tar").unlink()
    os.mkfifo(folder / "shard-000001.tar")
    with no_hang(), pytest.raises(ShardError, match=r"shard-000001.tar is a FIFO, not a regular file"):
        resolve_shards(str(folder))
    with no_hang(), pytest.raises(DamagedShardError, match=r"shard-000001.tar is a FIFO"):
        list(iter_samples(folder / "shard-000001.tar"))


def test_fifo_checkpoint_state_is_skipped_like_a_damaged_one(tmp_path):
    step = tmp_path / "run" / "checkpoints" / "step-000001"
    step.mkdir(parents=True)
    (step / "COMPLETE").write_text("step 1\n")
    os.mkfifo(step / "state.pt")
    warned = []
    with no_hang(), pytest.raises(CheckpointError, match="no loadable checkpoint"):
        load_newest(tmp_path / "run", warn=warned.append)
    assert len(warned) == 1 and "a FIFO, not a regular file" in warned[0]


def test_mvm_report_skips_runs_with_fifo_files(tmp_path):
    write_run(tmp_path / "good", clip_len=8, world=1, steps=20, clips_per_s=2.0, comm=None)
    for name in ("config.json", "metrics.jsonl"):
        run = tmp_path / f"fifo-{name}"
        write_run(run, clip_len=8, world=1, steps=20, clips_per_s=2.0, comm=None)
        (run / name).unlink()
        os.mkfifo(run / name)
    with no_hang():
        records, skipped = collect([tmp_path])
    assert [r.name for r in records] == ["good"]
    reasons = {Path(item["run"]).name: item["reason"] for item in skipped}
    assert set(reasons) == {"fifo-config.json", "fifo-metrics.jsonl"}
    assert all("a FIFO, not a regular file" in reason for reason in reasons.values())


# --- Row 12: a run config.json of the wrong shape, read by mvm-report ----------------------------


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ([1, 2, 3], "holds list, not a JSON object"),
        ({"data": 5, "model": {"clip_len": 8}}, "no valid data.batch_size"),
        ({"data": {"batch_size": "4", "shards": "x"}, "model": {"clip_len": 8}}, "no valid data.batch_size"),
    ],
)
@pytest.mark.slow
def test_mvm_report_names_a_run_with_a_malformed_config_and_goes_on(tmp_path, config, reason):
    write_run(tmp_path / "good", clip_len=8, world=1, steps=20, clips_per_s=2.0, comm=None)
    write_run(tmp_path / "bad", clip_len=8, world=1, steps=20, clips_per_s=2.0, comm=None)
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    done = subprocess.run(
        [MVM_REPORT, tmp_path, "--out", tmp_path / "report"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "skipped" in line]
    assert str(tmp_path / "bad" / "config.json") in line and reason in line
    summary = json.loads((tmp_path / "report" / "scaling.json").read_text())
    assert [run["name"] for run in summary["runs"]] == ["good"]


# --- Row 16: a clip shorter than the shards' T, read by mvm-probe --------------------------------


def clip_shards(folder: Path, scene: str, lengths: list[int]) -> Path:
    """One shard of clips of `scene` with the given frame counts; the manifest and metadata say T=8."""
    rng = np.random.default_rng(len(scene))
    samples = []
    for index, length in enumerate(lengths):
        frames, velocity = moving_clip(rng, length, SIZE)
        key = clip_key(scene, index * CLIP_LEN)
        meta = {"version": FORMAT_VERSION, "depth": None, "key": key, "scene": scene, "clip_len": CLIP_LEN, "size": list(SIZE),
                "speed_mps": abs(velocity), "yaw_rate_rps": 0.0}  # fmt: skip
        samples.append([(f"{key}.mp4", encode_clip(frames)), (f"{key}.json", json.dumps(meta).encode())])
    write_shard_folder(folder, [samples], {"clip_len": CLIP_LEN, "size": list(SIZE)})
    return folder


def tiny_checkpoint(run: Path) -> Path:
    """A run folder holding one untrained checkpoint of a 1-block model on 8-frame 32x64 clips."""
    model = {"clip_len": CLIP_LEN, "image_size": list(SIZE), "stem_channels": 8, "embed_dim": 32, "depth": 1,
             "num_heads": 2, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}  # fmt: skip
    config = apply_overrides(preset("tiny"), {"model": model})
    torch.manual_seed(0)
    save(run, 1, {"model": build_model(config.model).state_dict()}, config, keep=1)
    return run


def probe_args(checkpoint: Path, train: str, val: str, out: Path) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--train-shards", train, "--val-shards", val, "--out", str(out),
            "--device", "cpu", "--seeds", "1", "--controls", "none", "--bootstrap", "100"]  # fmt: skip


@pytest.mark.slow
def test_probe_names_the_shard_and_key_of_a_short_clip(tmp_path):
    train = clip_shards(tmp_path / "train", "scene-0001", [8, 4, 8])
    val = clip_shards(tmp_path / "val", "scene-0002", [8, 8])
    checkpoint = tiny_checkpoint(tmp_path / "run")
    result = CliRunner().invoke(probe_main, probe_args(checkpoint, str(train), str(val), tmp_path / "out"))
    assert result.exit_code == EXIT_ERROR, result.output
    message = " ".join(result.output.split())  # the console wraps long lines
    assert f"shard {train / 'shard-000000.tar'}, sample {clip_key('scene-0001', CLIP_LEN)}" in message
    assert "decoded shape (4, 32, 64, 3), expected (8, 32, 64, 3)" in message
    assert "same shape" not in message and "Traceback" not in result.output


# --- Row 18 and repeats: the --shards spec -------------------------------------------------------


def test_brace_patterns_with_commas_expand_before_the_list_splits(shard_dir):
    every = resolve_shards(str(shard_dir))
    assert resolve_shards(f"{shard_dir}/shard-00000{{0,1}}.tar") == every[:2]
    assert resolve_shards(f"{shard_dir}/shard-00000{{0,2}}.tar,{every[1]}") == [every[0], every[2], every[1]]
    with pytest.raises(ShardError, match="unbalanced braces"):
        resolve_shards(f"{shard_dir}/shard-00000{{0,1.tar")


def test_a_shard_named_twice_is_read_once_with_a_warning(shard_dir):
    every = resolve_shards(str(shard_dir))
    with pytest.warns(ShardWarning, match=r"names 2 shard\(s\) more than once") as caught:
        urls = resolve_shards(f"{shard_dir},{shard_dir}/shard-00000[0-1].tar")
    assert urls == every and len(caught) == 1
    with pytest.warns(ShardWarning, match="shard-000000.tar"):  # the same file by another spelling
        assert resolve_shards(f"{every[0]},{shard_dir}/./shard-000000.tar") == every[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_shards(f"{every[0]},{every[1]}") == every[:2]  # no repeat, no warning


def test_probe_prints_the_repeat_warning_as_one_line(shard_dir, tmp_path):
    shard = resolve_shards(str(shard_dir))[0]
    args = probe_args(tmp_path / "no-run", f"{shard},{shard}", str(shard_dir), tmp_path / "out")
    result = CliRunner().invoke(probe_main, args)
    (line,) = [line for line in result.output.splitlines() if "more than once" in line]
    assert line.startswith("mvm-probe: shard spec") and "ShardWarning" not in result.output


# --- One mvm-probe per --out ---------------------------------------------------------------------


def test_a_second_probe_into_the_same_out_exits_1_before_encoding(tmp_path):
    train = clip_shards(tmp_path / "train", "scene-0001", [8])
    val = clip_shards(tmp_path / "val", "scene-0002", [8])
    checkpoint, out = tiny_checkpoint(tmp_path / "run"), tmp_path / "out"
    with exclusive_lock(out, "mvm-probe"):  # the first probe, still running
        result = CliRunner().invoke(probe_main, probe_args(checkpoint, str(train), str(val), out))
    assert result.exit_code == EXIT_ERROR and f"{out} is in use by mvm-probe (pid" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert sorted(path.name for path in out.iterdir()) == [".mvm.lock"]  # nothing written over its files
