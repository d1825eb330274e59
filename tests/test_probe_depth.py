"""The depth probe (mvm.probe.depth*): metrics, planted features, gate and strength, the shard inputs,
and mvm-probe running ego-motion and depth in one run on shards with depth targets."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import moving_clip
from click.testing import CliRunner

import mvm.probe.cli as probe_cli
from mvm.features import INGESTED, PIXELS
from mvm.probe.cli import EXIT_FAIL, EXIT_PASS, EXIT_USAGE, main
from mvm.probe.depth import (
    ABS_REL,
    DELTA,
    DepthSplit,
    abs_rel,
    delta_accuracy,
    evaluate_depth,
    position_means,
)
from mvm.probe.depth_data import DepthTokens, depth_frames, depth_problem, depth_split
from mvm.probe.evaluate import POSITION_ONLY, Source, evaluate_encoders
from mvm.probe.gate import FAIL, PASS, STRONG, WEAK
from mvm.probe.report_run import write_report
from mvm.probe.run import RunResult, plan_tasks
from mvm.probe.tasks import make_task
from mvm.shards import FORMAT_VERSION, DamagedShardError, clip_key, decode_depth, write_shard_folder
from mvm.train.checkpoint import save
from mvm.train.config import apply_overrides, preset
from mvm.train.model import build_model
from mvm.video import encode_clip
from tests._probe_helpers import planted_split

LAYOUT = (3, 4)
DIM = 8


def test_metrics_match_hand_computed_values():
    true, pred = np.array([1.0, 2.0, 4.0, 10.0]), np.array([1.2, 3.0, 4.0, 8.1])
    # ratios 1.2, 1.5, 1.0, 1.2346: three within 1.25
    assert delta_accuracy(true, pred) == pytest.approx(0.75)
    assert abs_rel(true, pred) == pytest.approx((0.2 + 0.5 + 0.0 + 0.19) / 4)
    assert delta_accuracy(true, true * 1.25) == 0.0  # the bound is strict
    means = position_means(np.log([2.0, 8.0, 3.0]), np.array([0, 0, 2]), 4)
    assert means == pytest.approx([np.log(4.0), np.mean(np.log([2.0, 8.0, 3.0])), np.log(3.0), means[1]])


def planted_depth(
    rng: np.random.Generator,
    scenes: list[str],
    clips_per_scene: int = 6,
    pretrained: str = "residual",
    pixels_read_depth: bool = False,
) -> DepthSplit:
    """Depth samples over a LAYOUT grid: log depth = the position's base (near at the bottom) + a
    per-patch residual; a fifth of the patches missing. pretrained: "residual" (a feature carries the
    residual), or "position" (features carry only the one-hot position). Pixels: noise, or with
    pixels_read_depth the pretrained encoder's residual feature. Random encoders: noise."""
    rows, cols = LAYOUT
    base = np.repeat(np.linspace(np.log(40.0), np.log(5.0), rows), cols)
    depth, positions, names, residuals = [], [], [], []
    for scene in scenes:
        for _ in range(clips_per_scene):
            keep = np.flatnonzero(rng.random(rows * cols) > 0.2)
            residual = rng.normal(0.0, 0.5, len(keep))
            depth.append(np.exp(base[keep] + residual))
            positions.append(keep)
            names.append(np.full(len(keep), scene))
            residuals.append(residual)
    residual, position = np.concatenate(residuals), np.concatenate(positions)
    n = len(residual)

    def noise() -> np.ndarray:
        return rng.normal(size=(n, DIM))

    planted = noise()
    if pretrained == "residual":
        planted[:, 0] = residual + rng.normal(0.0, 0.05, n)
    else:
        planted[:, :] = 0.0
        planted[np.arange(n), position % DIM] = 1.0 + position // DIM
    pixels = noise()
    if pixels_read_depth:
        pixels[:, 0] = residual + rng.normal(0.0, 0.05, n)
    features = {Source.pretrained(): planted, Source.pixels(): pixels}
    features.update({Source.random(seed): noise() for seed in range(2)})
    return DepthSplit(
        {source: values.astype(np.float32) for source, values in features.items()},
        np.concatenate(depth),
        position,
        np.concatenate(names),
        LAYOUT,
        len(scenes) * clips_per_scene,
    )


def splits(seed: int = 0, **planted) -> tuple[DepthSplit, DepthSplit]:
    rng = np.random.default_rng(seed)
    return (
        planted_depth(rng, [f"t{i}" for i in range(8)], **planted),
        planted_depth(rng, [f"v{i}" for i in range(6)], **planted),
    )


def test_tokens_carrying_the_residual_beat_position_only_and_the_gate_passes(tmp_path):
    result = evaluate_depth(*splits(), n_boot=300)
    pretrained, position = result.row(Source.pretrained()), result.row(Source(POSITION_ONLY))
    assert result.verdict.gate == PASS and result.strength == STRONG, result.strength_reason
    assert pretrained.metrics[DELTA] > position.metrics[DELTA] + 0.3
    assert pretrained.metrics[ABS_REL] < position.metrics[ABS_REL] / 2
    assert [c.name for c in result.conditions] == ["beats_random", "beats_pixels", "beats_position_only"]
    assert all(c.held for c in result.conditions)
    for row in result.rows:  # CIs bracket the full-set values and have width (6 scenes resampled)
        for metric in (DELTA, ABS_REL):
            low, high = row.ci[metric]
            assert low <= row.metrics[metric] <= high and high > low
    # Random encoders' noise adds nothing over the position means.
    assert all(abs(r.metrics[DELTA] - position.metrics[DELTA]) < 0.05 for r in result.randoms)
    assert position.regularization is None and pretrained.regularization is not None

    paths = write_report([result], tmp_path, {"checkpoint": "ck"}, {})
    report = json.loads(paths[0].read_text())
    section = report["tasks"]["depth"]
    assert report["gate"] == PASS and section["metric"] == DELTA and section["gate"] == PASS
    assert section["pretrained"][DELTA] == pretrained.metrics[DELTA]
    assert section["pretrained"]["ci"] == list(pretrained.ci[DELTA])
    assert [row["source"] for row in section["rows"]] == [
        "pretrained",
        "random seed 0",
        "random seed 1",
        "pixels",
        "position-only",
    ]
    assert len(section["abs_rel_by_token_row"]["pretrained"]) == LAYOUT[0]
    assert section["n_val_scenes"] == 6 and section["n_val_patches"] == len(result.val.depth)
    markdown = paths[1].read_text()
    assert "## depth: gate **PASS**, strength **STRONG**" in markdown and "- checkpoint: `ck`" in markdown
    assert (tmp_path / "depth.png").stat().st_size > 10_000


def test_features_carrying_only_position_do_not_beat_position_only():
    result = evaluate_depth(*splits(seed=1, pretrained="position"), n_boot=300)
    pretrained, position = result.row(Source.pretrained()), result.row(Source(POSITION_ONLY))
    assert abs(pretrained.metrics[DELTA] - position.metrics[DELTA]) < 0.03
    assert not result.conditions[2].held and result.conditions[2].ci[0] <= 0 <= result.conditions[2].ci[1]
    assert result.verdict.gate == FAIL and result.strength == "none"


def test_strength_is_weak_when_pixels_read_depth_as_well_and_none_without_controls():
    train, val = splits(seed=2, pixels_read_depth=True)
    result = evaluate_depth(train, val, n_boot=300)
    assert result.verdict.gate == PASS and result.strength == WEAK
    assert not result.conditions[1].held and result.conditions[2].held
    plain = evaluate_depth(train, val, n_boot=300, controls=False)
    assert plain.strength is None and [c.name for c in plain.conditions] == ["beats_random"]
    assert Source.pixels() not in {row.source for row in plain.rows}
    again = evaluate_depth(*splits(seed=2, pixels_read_depth=True), n_boot=300, controls=False)
    assert [r.ci for r in again.rows] == [r.ci for r in plain.rows]  # seeded: the same replicates
    with pytest.raises(ValueError, match="share scenes"):
        evaluate_depth(train, train, n_boot=100)


def test_decode_depth_frames_and_problems():
    values = np.array([[1.5, np.nan], [3.0, 4.0]], np.float32)
    buffer = io.BytesIO()
    np.save(buffer, values)
    sample = {"key": "k", "url": "u", "depth.npy": buffer.getvalue()}
    assert np.array_equal(decode_depth(sample), values, equal_nan=True)
    assert decode_depth({"key": "k"}) is None
    buffer = io.BytesIO()
    np.save(buffer, values.astype(np.float64))
    with pytest.raises(DamagedShardError, match="expected float32"):
        decode_depth({"key": "k", "url": "u", "depth.npy": buffer.getvalue()})

    metas = [
        {"key": "a", "clip_len": 8},
        {"key": "b", "clip_len": 8, "depth": None},
        {"key": "c", "clip_len": 8, "depth": {"frame": 5, "patch": 16}},
    ]
    assert depth_frames(metas) == [None, None, 5]
    with pytest.raises(DamagedShardError, match="clip d"):
        depth_frames([{"key": "d", "clip_len": 8, "depth": {"frame": 8, "patch": 16}}])
    assert depth_problem({"train": metas, "val": metas[2:]}, 16) is None
    assert "the val shards carry no depth targets" in depth_problem({"train": metas, "val": metas[:2]}, 16)
    assert "--depth-patch 8" in depth_problem({"train": metas, "val": metas}, 8)

    assert plan_tasks((), None) == (["ego-motion", "depth"], {})
    assert plan_tasks((), "no depth") == (["ego-motion"], {"depth": "no depth"})
    assert plan_tasks(("depth", "ego-motion", "depth"), None) == (["depth", "ego-motion"], {})
    assert plan_tasks(("speed",), "no depth") == (["speed"], {})
    with pytest.raises(ValueError, match="no depth"):
        plan_tasks(("ego-motion", "depth"), "no depth")


def test_depth_tokens_take_the_frame_s_step_and_fold_pixels_into_patches():
    frames = [None, 5]
    sink = DepthTokens({"enc", "pixels"}, frames, clip_len=8, layout=(2, 4))
    tokens = torch.arange(2 * 4 * 2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 2, 4, 3)  # token_frames 2
    sink("enc", INGESTED, 0, tokens)
    sink("enc", "shuffled", 0, tokens + 1)  # other views are not depth's
    video = torch.rand(2, 8, 3, 32, 64)
    sink("pixels", INGESTED, 0, PIXELS.token_grid(video))
    assert set(sink.tokens["enc"]) == {1} and np.array_equal(sink.tokens["enc"][1], tokens[1, 2].numpy())
    patch = sink.tokens["pixels"][1][1, 2]  # row 1, column 2 of frame 5: pixels 16..31 x 32..47
    assert patch.shape == (16 * 16 * 3,)
    assert np.allclose(patch, video[1, 5, :, 16:32, 32:48].permute(1, 2, 0).reshape(-1).numpy())

    metas = [{"key": "a", "scene": "s0"}, {"key": "b", "scene": "s0"}]
    maps = {"b": np.array([[2.0, np.nan, 3.0, 4.0], [np.nan] * 4], np.float32)}
    split = depth_split(sink, metas, maps, {"enc": Source.pretrained(), "pixels": Source.pixels()})
    assert split.positions.tolist() == [0, 2, 3] and split.depth.tolist() == [2.0, 3.0, 4.0]
    assert split.features[Source.pretrained()].tolist() == tokens[1, 2, 0, [0, 2, 3]].tolist()
    assert split.clips == 1 and split.scenes.tolist() == ["s0"] * 3
    with pytest.raises(DamagedShardError, match="positive metres"):
        depth_split(sink, metas, {"b": -maps["b"]}, {"enc": Source.pretrained(), "pixels": Source.pixels()})


# --- mvm-probe with depth targets in the shards -------------------------------------------------

SIZE, CLIP_LEN = (32, 64), 8


def depth_shards(folder: Path, scenes: list[str], clips: int = 3, patch: int = 16, with_depth: bool = True):
    """Moving-texture clips with ego poses (turning, straight or stopped by the texture's velocity) and,
    with_depth, a `depth.npy` member and `depth` metadata (shard format v2, shards/README.md)."""
    rng = np.random.default_rng(len(scenes[0]) + clips)
    samples = []
    for scene in scenes:
        for index in range(clips):
            frames, velocity = moving_clip(rng, CLIP_LEN, SIZE)
            key = clip_key(scene, index * CLIP_LEN)
            speed, yaw_rate = (0.0 if velocity == 0 else 5.0), {-3.0: -0.5, 3.0: 0.5}.get(velocity, 0.0)
            times = np.arange(CLIP_LEN) * 0.1
            yaw = yaw_rate * times
            meta = {"version": FORMAT_VERSION, "key": key, "scene": scene, "clip_len": CLIP_LEN, "size": list(SIZE),
                    "speed_mps": speed, "yaw_rate_rps": yaw_rate,
                    "timestamps": [int(t * 1e6) for t in times],
                    "ego_translation": [[speed * t, 0.0, 0.0] for t in times],
                    "ego_rotation": [[math.cos(a / 2), 0.0, 0.0, math.sin(a / 2)] for a in yaw]}  # fmt: skip
            members = [(f"{key}.mp4", encode_clip(frames))]
            if with_depth:
                grid = (SIZE[0] // patch, SIZE[1] // patch)
                values = rng.uniform(3.0, 40.0, grid).astype(np.float32)
                values[0, 0] = np.nan
                buffer = io.BytesIO()
                np.save(buffer, values)
                members.append((f"{key}.depth.npy", buffer.getvalue()))
                meta["depth"] = {"frame": index % CLIP_LEN, "lidar_token": f"lidar-{key}",
                                 "lidar_timestamp": 0, "offset_us": 0, "points": 100, "patch": patch,
                                 "coverage": 0.875}  # fmt: skip
            samples.append([*members, (f"{key}.json", json.dumps(meta).encode())])
    write_shard_folder(folder, [samples], {"clip_len": CLIP_LEN, "size": list(SIZE)})
    return folder


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("depth-shards")
    return {
        "train": depth_shards(root / "train", ["scene-0001", "scene-0002", "scene-0003"]),
        "val": depth_shards(root / "val", ["scene-0101", "scene-0102"]),
        "plain": depth_shards(root / "plain", ["scene-0201", "scene-0202"], with_depth=False),
        "patch8": depth_shards(root / "patch8", ["scene-0301", "scene-0302"], patch=8),
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained 1-block model on 8-frame 32x64 clips: `pretrained` is exactly random seed 0."""
    model = {"clip_len": CLIP_LEN, "image_size": list(SIZE), "stem_channels": 8, "embed_dim": 16, "depth": 1,
             "num_heads": 2, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}  # fmt: skip
    config = apply_overrides(preset("tiny"), {"model": model})
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    save(run, 3, {"model": build_model(config.model).state_dict()}, config, keep=1)
    return run


def probe(checkpoint: Path, train: Path, val: Path, out: Path, *extra: str):
    args = ["--checkpoint", str(checkpoint), "--train-shards", str(train), "--val-shards", str(val)]
    args += ["--out", str(out), "--device", "cpu", "--bootstrap", "100", "--seeds", "1", *extra]
    return CliRunner().invoke(main, args)


@pytest.mark.slow  # two probe runs: about 20 s on 2 shared cores
def test_two_tasks_in_one_run_share_one_report(shard_sets, checkpoint, tmp_path):
    torch.set_num_threads(1)
    result = probe(checkpoint, shard_sets["train"], shard_sets["val"], tmp_path / "out")
    assert result.exit_code == EXIT_FAIL, result.output  # pretrained is random seed 0: no gate can pass
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["task_order"] == ["ego-motion", "depth"] and report["skipped"] == {}
    assert report["gate"] == FAIL and report["model"]["patch_size"] == 16
    depth = report["tasks"]["depth"]
    assert depth["gate"] == FAIL and depth["difference_ci"][1] <= 0
    assert depth["pretrained"][DELTA] == depth["random"]["per_seed"]["0"][DELTA]
    assert depth["n_val_clips"] == 6 and depth["n_val_patches"] == 6 * 7  # one NaN patch per map
    assert {row["kind"] for row in depth["rows"]} == {"pretrained", "random", "pixels", "position-only"}
    assert depth["pixels"]["feature_dim"] == 16 * 16 * 3 and depth["pretrained"]["feature_dim"] == 16
    assert report["tasks"]["ego-motion"]["conditions"][0]["name"] == "beats_random"
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## ego-motion: gate **FAIL**" in markdown and "## depth: gate **FAIL**" in markdown
    for name in ("confusion.png", "controls.png", "depth.png"):
        assert (tmp_path / "out" / name).is_file()
    assert "ego-motion: gate FAIL" in result.output and "depth: gate FAIL" in result.output

    only = probe(checkpoint, shard_sets["train"], shard_sets["val"], tmp_path / "depth", "--task", "depth")
    assert only.exit_code == EXIT_FAIL, only.output
    alone = json.loads((tmp_path / "depth" / "report.json").read_text())
    assert list(alone["tasks"]) == ["depth"] and alone["tasks"]["depth"]["rows"] == depth["rows"]
    assert not (tmp_path / "depth" / "confusion.png").exists()


def test_depth_usage_errors_name_the_fix(shard_sets, checkpoint, tmp_path):
    result = probe(checkpoint, shard_sets["train"], shard_sets["plain"], tmp_path / "a", "--task", "depth")
    assert result.exit_code == EXIT_USAGE and "the val shards carry no depth targets" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    result = probe(checkpoint, shard_sets["train"], shard_sets["patch8"], tmp_path / "b", "--task", "depth")
    assert result.exit_code == EXIT_USAGE and "--depth-patch 16" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "b").exists()


def test_exit_code_needs_every_task(monkeypatch, tmp_path):
    rng = np.random.default_rng(1)
    train = planted_split(rng, [f"t{i}" for i in range(8)], 10, 3.0, pixel_signal=0.3)
    val = planted_split(rng, [f"v{i}" for i in range(5)], 10, 3.0, pixel_signal=0.3)
    motion = evaluate_encoders(make_task("ego-motion"), train, val, n_boot=200)
    passing = evaluate_depth(*splits(), n_boot=200)
    failing = evaluate_depth(*splits(seed=1, pretrained="position"), n_boot=200)
    assert motion.strength == STRONG and passing.strength == STRONG
    args = ["--checkpoint", "x", "--train-shards", "x", "--val-shards", "y", "--out", str(tmp_path)]
    for results, code in (([motion, passing], EXIT_PASS), ([motion, failing], EXIT_FAIL)):
        monkeypatch.setattr(probe_cli, "run_probe", lambda config, r=results: RunResult(r))
        outcome = CliRunner().invoke(main, [*args, "--require", "strong"])
        assert outcome.exit_code == code, outcome.output
    monkeypatch.setattr(probe_cli, "run_probe", lambda config: RunResult([motion], {"depth": "no targets"}))
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == EXIT_PASS and "depth: skipped: no targets" in outcome.output
