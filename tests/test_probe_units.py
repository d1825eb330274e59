"""Probe pieces without models or shards: labels from hand-made poses, heads, bootstrap, gate."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from mvm.ego_motion import MotionThresholds
from mvm.probe.evaluate import Source, Split, evaluate_encoders, majority_predictions
from mvm.probe.gate import FAIL, PASS, decide
from mvm.probe.report_files import report_dict
from mvm.probe.report_run import write_report
from mvm.probe.stats import paired_difference, percentile_interval, scene_resamples
from mvm.probe.tasks import class_counts, clip_target, make_task, targets
from mvm.report_format import dumps_json
from mvm.train.online_probe import split_scenes
from tests._probe_helpers import planted_split


def quaternion_of_yaw(yaw: np.ndarray) -> np.ndarray:
    """(T,) yaw in radians -> (T, 4) quaternions [w, x, y, z] about +z."""
    return np.stack([np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], axis=1)


def drive(
    speed_mps: float, yaw_rate_rps: float, frames: int = 8, interval_s: float = 0.083, yaw0: float = 0.3
) -> dict:
    """Clip metadata of a car moving forward at `speed_mps` while turning at `yaw_rate_rps` (+ = CCW)."""
    times = np.arange(frames) * interval_s
    yaw = yaw0 + yaw_rate_rps * times
    step = speed_mps * interval_s
    xy = np.cumsum(np.stack([np.cos(yaw), np.sin(yaw)], axis=1) * step, axis=0) + [400.0, 1100.0]
    return {
        "timestamps": (1_532_402_927_612_460 + times * 1e6).round().astype(int).tolist(),
        "ego_translation": np.concatenate([xy, np.zeros((frames, 1))], axis=1).tolist(),
        "ego_rotation": quaternion_of_yaw(yaw).tolist(),
    }


def test_ego_motion_labels_from_poses_with_sign_convention():
    task = make_task("ego-motion")
    assert clip_target(task, drive(0.0, 0.0)) == "stopped"
    assert clip_target(task, drive(0.2, 0.5)) == "stopped"  # stopped wins over turning
    assert clip_target(task, drive(8.0, 0.0)) == "straight"
    assert clip_target(task, drive(8.0, 0.05)) == "straight"
    # Counter-clockwise seen from above (yaw increasing) is a left turn; across the ±pi wrap too.
    assert clip_target(task, drive(6.0, 0.3)) == "left"
    assert clip_target(task, drive(6.0, -0.3)) == "right"
    assert clip_target(task, drive(6.0, 0.3, yaw0=math.pi - 0.05)) == "left"
    assert clip_target(task, drive(6.0, -0.3, yaw0=-math.pi + 0.05)) == "right"


def test_thresholds_are_configurable_and_speed_target():
    strict = make_task("ego-motion", MotionThresholds(stopped_speed_mps=3.0, turn_yaw_rate_rps=0.5))
    assert clip_target(strict, drive(2.0, 0.0)) == "stopped"
    assert clip_target(strict, drive(6.0, 0.3)) == "straight"
    speeds = targets(make_task("speed"), [drive(5.0, 0.0), drive(12.0, 0.2)])
    assert speeds.dtype == np.float64
    np.testing.assert_allclose(speeds, [5.0, 12.0], rtol=1e-3)
    labels = targets(make_task("ego-motion"), [drive(0.0, 0), drive(9.0, 0), drive(9.0, 0)])
    assert class_counts(make_task("ego-motion"), labels) == {
        "stopped": 1,
        "straight": 2,
        "left": 0,
        "right": 0,
    }
    with pytest.raises(ValueError, match="unknown task"):
        make_task("steering")


def test_gate_decision_rules():
    assert decide(0.6, 0.4, (0.05, 0.3), "balanced_accuracy", 5).gate == PASS
    assert decide(0.6, 0.4, (-0.01, 0.3), "balanced_accuracy", 5).gate == FAIL
    assert decide(0.4, 0.6, (0.05, 0.3), "balanced_accuracy", 5).gate == FAIL
    assert decide(0.6, 0.4, (float("nan"), 0.3), "r2", 5).gate == FAIL
    # One validation scene: the bootstrap CI collapses to a point, so it cannot support a pass.
    assert decide(0.6, 0.4, (0.2, 0.2), "r2", 1).gate == FAIL


def test_bootstrap_resamples_whole_scenes_and_is_seeded():
    scenes = np.array(["a"] * 3 + ["b"] * 5 + ["c"] * 2)
    first = scene_resamples(scenes, 50, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(first, scene_resamples(scenes, 50, seed=7), strict=True))
    assert any(
        not np.array_equal(x, y) for x, y in zip(first, scene_resamples(scenes, 50, seed=8), strict=True)
    )
    for index in first:
        drawn = scenes[index]
        for name in set(drawn):  # a drawn scene contributes all its clips, k times over
            assert np.sum(drawn == name) % np.sum(scenes == name) == 0
    diff = paired_difference(np.array([0.5, 0.6]), [np.array([0.4, 0.7]), np.array([0.45, 0.5])])
    np.testing.assert_allclose(diff, [0.05, -0.1])
    assert percentile_interval(np.linspace(0, 1, 1001)) == pytest.approx((0.025, 0.975))


@pytest.mark.slow
def test_planted_separable_features_pass_and_noise_fails(tmp_path):
    task = make_task("ego-motion")
    rng = np.random.default_rng(0)
    train_scenes = [f"scene-{i:04d}" for i in range(12)]
    val_scenes = [f"scene-{i:04d}" for i in range(100, 106)]
    train, val = planted_split(rng, train_scenes, 20, 3.0), planted_split(rng, val_scenes, 20, 3.0)
    result = evaluate_encoders(task, train, val, n_boot=300, seed=0)
    assert result.verdict.gate == PASS, result.verdict.reason
    assert result.row(Source.pretrained()).metrics["balanced_accuracy"] > 0.8
    assert result.conditions[0].ci[0] > 0
    assert max(row.metrics["balanced_accuracy"] for row in result.randoms) < 0.45
    assert [row.source.seed for row in result.randoms] == [0, 1, 2]

    # The "pretrained" encoder is as uninformative as the randoms: the gate must refuse.
    train0, val0 = planted_split(rng, train_scenes, 20, 0.0), planted_split(rng, val_scenes, 20, 0.0)
    null = evaluate_encoders(task, train0, val0, n_boot=300, seed=0)
    assert null.verdict.gate == FAIL and null.strength == "none"
    assert null.conditions[0].ci[0] <= 0

    paths = write_report([result], tmp_path)
    report = json.loads(paths[0].read_text())
    assert list(report["tasks"]) == ["ego-motion"] and report["gate"] == PASS and report["skipped"] == {}
    report = report["tasks"]["ego-motion"]
    assert report["n_val_scenes"] == 6 and report["n_val_clips"] == 120
    for field in (
        "task",
        "metric",
        "pretrained",
        "random",
        "majority",
        "difference_ci",
        "gate",
        "n_train_clips",
        "n_val_clips",
        "n_val_scenes",
        "class_counts",
        "strength",
        "conditions",
        "controls",
        "pooling",
    ):
        assert field in report
    assert set(report["random"]["per_seed"]) == {"0", "1", "2"}
    assert "PASS" in paths[1].read_text()
    assert paths[2].stat().st_size > 10_000


@pytest.mark.slow
def test_evaluation_is_deterministic_and_refuses_shared_scenes():
    task = make_task("ego-motion")
    make = lambda: planted_split(np.random.default_rng(3), [f"s{i}" for i in range(8)], 10, 1.0)  # noqa: E731
    train = make()
    val = planted_split(np.random.default_rng(4), [f"v{i}" for i in range(5)], 10, 1.0)
    first = evaluate_encoders(task, train, val, n_boot=200, seed=5)
    second = evaluate_encoders(task, make(), val, n_boot=200, seed=5)
    assert dumps_json(report_dict(first)) == dumps_json(report_dict(second))
    with pytest.raises(ValueError, match="share scenes"):
        evaluate_encoders(task, train, train, n_boot=100)


def test_speed_regression_and_majority_baseline(tmp_path):
    task = make_task("speed")
    rng = np.random.default_rng(1)

    def split(names):
        speed = rng.uniform(0, 15, len(names) * 10)
        pretrained = np.concatenate(
            [speed[:, None] + rng.normal(0, 1, (len(speed), 1)), rng.normal(size=(len(speed), 7))], 1
        )
        features = {Source.pretrained(): pretrained, Source.random(0): rng.normal(size=(len(speed), 8))}
        return Split(
            {(k, "ingested", (1, 1)): v.astype(np.float32) for k, v in features.items()},
            speed,
            np.repeat(names, 10),
        )

    train, val = split([f"t{i}" for i in range(10)]), split([f"v{i}" for i in range(6)])
    result = evaluate_encoders(task, train, val, n_boot=200, controls=False)
    assert result.row(Source.pretrained()).metrics["r2"] > 0.8 and result.verdict.gate == PASS
    assert result.row(Source("majority")).metrics["r2"] <= 0.0
    assert result.strength is None and not result.row(Source.pretrained()).per_class_recall
    paths = write_report([result], tmp_path)
    assert (tmp_path / "speed.png") in paths and (tmp_path / "controls.png") not in paths
    assert "controls" not in json.loads(paths[0].read_text())["tasks"]["speed"]
    counts = majority_predictions(make_task("ego-motion"), np.array(["left", "straight", "straight"]), 2)
    assert counts.tolist() == ["straight", "straight"]


def test_online_probe_scene_split_is_stable():
    scenes = [f"scene-{i:04d}" for i in range(10)]
    train, test = split_scenes(scenes)
    assert (train, test) == split_scenes(list(reversed(scenes)))
    assert train.isdisjoint(test) and train | test == set(scenes) and len(test) == 3
    assert split_scenes(["a", "b"])[1] and split_scenes(["a", "b"])[0]


def test_fast_metrics_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, r2_score

    from mvm.probe.stats import balanced_accuracy, r2

    rng = np.random.default_rng(2)
    classes = np.array(["stopped", "straight", "left", "right"])
    for _ in range(20):
        y_true, y_pred = classes[rng.integers(0, 3, 30)], classes[rng.integers(0, 4, 30)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns when y_pred holds a class absent from y_true
            expected = balanced_accuracy_score(y_true, y_pred)
        assert balanced_accuracy(y_true, y_pred) == pytest.approx(expected)
        values, noisy = rng.normal(size=30), rng.normal(size=30)
        assert r2(values, noisy) == pytest.approx(r2_score(values, noisy))
