"""mvm-probe end to end on real shards (synth -> mvm-ingest) and real checkpoints (train.checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ingest.cli import ingest_main
from ingest.synth import generate
from probe.cli import EXIT_FAIL, EXIT_USAGE, main
from train.checkpoint import save
from train.config import apply_overrides, from_dict, preset
from train.data import resolve_shards
from train.model import build_model
from train.online_probe import OnlineProbe

SIZE = (32, 64)
CLIP_LEN = 8


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The machine's cores are shared; one thread keeps these runs predictable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """Train and val shard folders of a 5-scene synthetic trainval dataroot (3 train, 2 val scenes)."""
    root = tmp_path_factory.mktemp("probe-data")
    dataroot = generate(
        root / "nuscenes", version="v1.0-trainval", scenes=5, frames_per_scene=60, width=320, seed=0
    )
    folders = {}
    for split in ("train", "val"):
        folders[split] = root / "shards" / split
        args = ["--dataroot", str(dataroot), "--version", "v1.0-trainval", "--scenes", split]
        args += ["--size", f"{SIZE[0]}x{SIZE[1]}", "--clip-len", str(CLIP_LEN), "--shard-clips", "8"]
        result = CliRunner().invoke(
            ingest_main, [*args, "--out", str(folders[split])], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
    return folders


def random_checkpoint(run: Path, seed: int) -> Path:
    """A run folder whose only checkpoint is an untrained model initialised after torch.manual_seed(seed)."""
    config = apply_overrides(
        preset("tiny"),
        {
            "model": {
                "clip_len": CLIP_LEN,
                "image_size": list(SIZE),
                "stem_channels": 8,
                "embed_dim": 32,
                "depth": 1,
                "num_heads": 2,
                "decoder_dim": 16,
                "decoder_depth": 1,
                "decoder_heads": 2,
            }
        },
    )
    torch.manual_seed(seed)
    save(run, 7, {"model": build_model(config.model).state_dict()}, config, keep=1)
    return run


def probe(checkpoint: Path, train: Path, val: Path, out: Path, *extra: str):
    args = ["--checkpoint", str(checkpoint), "--train-shards", str(train), "--val-shards", str(val)]
    args += ["--out", str(out), "--device", "cpu", "--bootstrap", "200", *extra]
    return CliRunner().invoke(main, args)


def test_help_documents_options_and_exit_codes():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for text in (
        "--checkpoint",
        "--train-shards",
        "--val-shards",
        "--task",
        "--seeds",
        "--bootstrap",
        "--turn-yaw-rate",
        "--max-clips",
        "Exit codes",
        "3  gate failed",
    ):
        assert text in result.output
    assert CliRunner().invoke(main, ["--task", "steering"]).exit_code == EXIT_USAGE


def test_random_checkpoint_fails_the_gate_deterministically(shards, tmp_path):
    # The "pretrained" weights are exactly the seed-0 random encoder: no resample can favour them.
    run = random_checkpoint(tmp_path / "run", seed=0)
    first = probe(run, shards["train"], shards["val"], tmp_path / "a", "--seeds", "2")
    assert first.exit_code == EXIT_FAIL, first.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["gate"] == "fail" and report["checkpoint_step"] == 7
    assert report["pretrained"]["balanced_accuracy"] == report["random"]["per_seed"]["0"]["balanced_accuracy"]
    assert report["difference_ci"][1] <= 0  # pretrained minus the best random is never positive
    assert report["n_val_scenes"] == 2 and report["n_train_clips"] > report["n_val_clips"] > 0
    assert sum(report["class_counts"]["val"].values()) == report["n_val_clips"]
    assert (tmp_path / "a" / "confusion.png").is_file() and "FAIL" in (
        tmp_path / "a" / "report.md"
    ).read_text()

    second = probe(run, shards["train"], shards["val"], tmp_path / "b", "--seeds", "2")
    assert second.exit_code == EXIT_FAIL
    assert (tmp_path / "a" / "report.json").read_bytes() == (tmp_path / "b" / "report.json").read_bytes()


def test_shared_scenes_are_refused_before_any_work(shards, tmp_path):
    run = random_checkpoint(tmp_path / "run", seed=1)
    both = f"{shards['train']},{shards['val']}"
    result = probe(run, both, shards["val"], tmp_path / "out")
    assert result.exit_code == EXIT_USAGE
    val_scenes = sorted(
        s["name"] for s in json.loads((shards["val"] / "manifest.json").read_text())["scenes"]
    )
    assert "share 2 scene(s)" in result.output and all(name in result.output for name in val_scenes)
    assert not (tmp_path / "out").exists()
    missing = probe(run, str(tmp_path / "nowhere"), shards["val"], tmp_path / "out")
    assert missing.exit_code == EXIT_USAGE and "nowhere" in missing.output
    no_checkpoint = probe(tmp_path / "empty", shards["train"], shards["val"], tmp_path / "out")
    assert no_checkpoint.exit_code == EXIT_USAGE and "no complete checkpoint" in no_checkpoint.output


def test_speed_task_and_online_probe(shards, tmp_path):
    run = random_checkpoint(tmp_path / "run", seed=2)
    result = probe(run, shards["train"], shards["val"], tmp_path / "speed", "--task", "speed", "--seeds", "1")
    assert result.exit_code in (0, EXIT_FAIL), result.output
    report = json.loads((tmp_path / "speed" / "report.json").read_text())
    assert (
        report["metric"] == "r2"
        and "r2" in report["pretrained"]
        and (tmp_path / "speed" / "speed.png").is_file()
    )

    online = OnlineProbe(resolve_shards(str(shards["train"])), max_clips=20, decoder="pyav")
    assert len(online.clips) == 20
    config = from_dict(json.loads((run / "checkpoints" / "step-000007" / "config.json").read_text()))
    model = build_model(config.model).train()
    scores = online.evaluate(model)
    assert model.training  # the probe restores the mode it found
    assert 0.0 <= scores["bal_acc"] <= 1.0 and scores["chance"] >= 0.25
    assert scores["train_clips"] + scores["test_clips"] == 20
    assert online.evaluate(model) == scores
