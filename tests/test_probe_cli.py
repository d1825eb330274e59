"""mvm-probe end to end on real shards (synth -> mvm-ingest) and real checkpoints (mvm.train.checkpoint)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mvm.probe.cli as probe_cli
from mvm.ingest.cli import ingest_main
from mvm.probe.cli import EXIT_FAIL, EXIT_USAGE, main
from mvm.probe.evaluate import evaluate_encoders
from mvm.probe.run import RunResult
from mvm.probe.tasks import make_task
from mvm.shards import resolve_shards
from mvm.synth import generate
from mvm.train.checkpoint import save
from mvm.train.config import apply_overrides, from_dict, preset
from mvm.train.model import build_model
from mvm.train.online_probe import OnlineProbe
from tests._probe_helpers import planted_split

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
        "--controls",
        "--require",
        "Exit codes",
        "3  gate failed",
    ):
        assert text in result.output
    assert CliRunner().invoke(main, ["--task", "steering"]).exit_code == EXIT_USAGE


@pytest.mark.slow
def test_random_checkpoint_fails_the_gate_deterministically(shards, tmp_path):
    # The "pretrained" weights are exactly the seed-0 random encoder: no resample can favour them.
    run = random_checkpoint(tmp_path / "run", seed=0)
    first = probe(run, shards["train"], shards["val"], tmp_path / "a", "--seeds", "2")
    assert first.exit_code == EXIT_FAIL, first.output
    whole = json.loads((tmp_path / "a" / "report.json").read_text())
    # Synthesized shards carry lidar depth targets: the default runs both tasks, and both gates fail.
    assert whole["task_order"] == ["ego-motion", "depth"] and whole["skipped"] == {}
    assert whole["tasks"]["depth"]["gate"] == "fail" and whole["tasks"]["depth"]["difference_ci"][1] <= 0
    assert whole["gate"] == "fail" and whole["checkpoint_step"] == 7
    report = whole["tasks"]["ego-motion"]
    assert report["gate"] == "fail"
    assert report["pretrained"]["balanced_accuracy"] == report["random"]["per_seed"]["0"]["balanced_accuracy"]
    assert report["difference_ci"][1] <= 0  # pretrained minus the best random is never positive
    assert report["n_val_scenes"] == 2 and report["n_train_clips"] > report["n_val_clips"] > 0
    assert sum(report["class_counts"]["val"].values()) == report["n_val_clips"]
    assert (tmp_path / "a" / "confusion.png").is_file() and "FAIL" in (
        tmp_path / "a" / "report.md"
    ).read_text()
    # Controls are on by default: pixels, flow and the two views for every source, per-class recall.
    assert report["strength"] == "none" and (tmp_path / "a" / "controls.png").is_file()
    rows = report["controls"]["rows"]
    assert {(row["kind"], row["view"]) for row in rows} == {
        (kind, view)
        for kind in ("pretrained", "random", "pixels", "flow")
        for view in ("ingested", "shuffled", "static")
    }
    assert "flow" not in report["pooling"]["cv_scores"][next(iter(report["pooling"]["cv_scores"]))]
    # every encoder's layer chosen by CV at the chosen grid, all layers' scores reported (probe/layers.py)
    layers = report["layers"]
    assert layers["candidates"] == ["stem", "last"] and layers["grid"] == report["pooling"]["grid"]
    assert (
        set(layers["chosen"]) == set(layers["cv_scores"]) == {"pretrained", "random seed 0", "random seed 1"}
    )
    assert report["pretrained"]["layer"] == layers["chosen"]["pretrained"]
    assert all(isinstance(row["regularization_on_edge"], bool) for row in rows)
    assert "## Encoder layer" in (tmp_path / "a" / "report.md").read_text()
    assert len(rows) == 3 * (1 + 2 + 1 + 1) and all(
        set(row["per_class_recall"]) == set(report["classes"]) for row in rows
    )
    assert [c["name"] for c in report["conditions"]] == ["beats_random", "beats_pixels", "needs_order"]
    assert report["pooling"]["grid"] in report["pooling"]["candidates"]
    markdown = (tmp_path / "a" / "report.md").read_text().splitlines()
    assert markdown[0] == "# Probe: **FAIL** (ego-motion, depth)"
    assert "## depth: gate **FAIL**, strength **NONE**" in markdown
    section = markdown.index("## ego-motion: gate **FAIL**, strength **NONE**")
    assert markdown[section + 2].startswith("Not held: the pretrained encoder beats the best random encoder")

    second = probe(run, shards["train"], shards["val"], tmp_path / "b", "--seeds", "2")
    assert second.exit_code == EXIT_FAIL
    assert (tmp_path / "a" / "report.json").read_bytes() == (tmp_path / "b" / "report.json").read_bytes()


@pytest.mark.slow
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


@pytest.mark.slow
def test_speed_task_and_online_probe(shards, tmp_path):
    run = random_checkpoint(tmp_path / "run", seed=2)
    result = probe(run, shards["train"], shards["val"], tmp_path / "speed", "--task", "speed", "--seeds", "1")
    assert result.exit_code in (0, EXIT_FAIL), result.output
    report = json.loads((tmp_path / "speed" / "report.json").read_text())["tasks"]["speed"]
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


@pytest.mark.slow
def test_controls_none_and_require_strong_need_each_other(shards, tmp_path):
    run = random_checkpoint(tmp_path / "run", seed=3)
    plain = probe(
        run, shards["train"], shards["val"], tmp_path / "plain", "--seeds", "1", "--controls", "none"
    )
    assert plain.exit_code == EXIT_FAIL, plain.output
    report = json.loads((tmp_path / "plain" / "report.json").read_text())["tasks"]["ego-motion"]
    assert "controls" not in report and report["strength"] is None
    assert [c["name"] for c in report["conditions"]] == ["beats_random"]
    assert not (tmp_path / "plain" / "controls.png").exists()
    refused = probe(
        run, shards["train"], shards["val"], tmp_path / "no", "--controls", "none", "--require", "strong"
    )
    assert refused.exit_code == EXIT_USAGE and "--require strong" in refused.output
    assert not (tmp_path / "no").exists()


@functools.cache
def planted_result(order_free: bool):
    """A real evaluation of planted features whose gate passes; strength weak when `order_free`."""
    rng = np.random.default_rng(1)
    train = planted_split(rng, [f"t{i}" for i in range(8)], 10, 3.0, order_free=order_free, pixel_signal=0.3)
    val = planted_split(rng, [f"v{i}" for i in range(5)], 10, 3.0, order_free=order_free, pixel_signal=0.3)
    return evaluate_encoders(make_task("ego-motion"), train, val, n_boot=200)


@pytest.mark.parametrize(
    ("order_free", "require", "exit_code"),
    [
        (True, "pass", 0),
        (True, "strong", EXIT_FAIL),
        (False, "strong", 0),
    ],
)
@pytest.mark.slow
def test_require_strong_exit_codes(monkeypatch, tmp_path, order_free, require, exit_code):
    """A passing gate with weak strength exits 3 only under --require strong (planted features, real evaluation)."""
    result = planted_result(order_free)
    assert result.verdict.gate == "pass" and result.strength == ("weak" if order_free else "strong")
    monkeypatch.setattr(probe_cli, "run_probe", lambda config: RunResult([result]))
    args = [
        "--checkpoint",
        "x",
        "--train-shards",
        "x",
        "--val-shards",
        "y",
        "--out",
        str(tmp_path),
        "--require",
        require,
    ]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == exit_code, outcome.output
    assert f"strength {result.strength.upper()}" in outcome.output
