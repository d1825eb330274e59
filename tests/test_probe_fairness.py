"""Probe fairness: the regularization grid, its one-standard-error choice and edge reports."""

from __future__ import annotations

import numpy as np
import torch
from _train_helpers import small_model

from mvm.features import INGESTED, EncoderLayer, extract_features, pool
from mvm.probe import linear
from mvm.probe.evaluate import Source, Split, evaluate_encoders
from mvm.probe.layers import layer_names, select_layers
from mvm.probe.linear import RIDGE_ALPHA_GRID, choose_regularization, fit_head, predict
from mvm.probe.report_files import markdown, report_dict
from mvm.probe.tasks import make_task
from mvm.train.model import build_model

OLD_RIDGE_ALPHA_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def test_one_standard_error_rule_prefers_the_most_regularized_value_within_noise():
    # 5 folds x 4 grid values, most regularized first: index 2 has the best mean, index 1 is within
    # one standard error of it, index 0 is not.
    # (best mean 0.80, fold std 0.1, standard error 0.045: the bar is 0.755)
    best = np.array([0.9, 0.7, 0.9, 0.7, 0.8])
    scores = np.stack([np.full(5, 0.50), np.full(5, 0.78), best, np.full(5, 0.70)], axis=1)
    assert choose_regularization(scores) == 1
    assert choose_regularization(scores[:1]) == 2  # one fold: no noise estimate, the argmax
    # identical fold scores at the strongest end are one head: take the least regularized of the run
    flat = np.array([[0.6, 0.6, 0.6, 0.5], [0.7, 0.7, 0.7, 0.4]])
    assert choose_regularization(flat) == 2


def test_logistic_cv_scores_do_not_depend_on_the_worker_count(monkeypatch):
    # The folds run in worker processes when there are CPUs for them; one worker (in process) must
    # give the same CV scores, choice and head: every fit is single-threaded either way.
    rng = np.random.default_rng(3)
    scenes = np.repeat([f"s{i}" for i in range(6)], 30)
    features = rng.normal(size=(len(scenes), 40))
    labels = np.array(["left", "right", "straight"])[
        np.argmax(features[:, :3] + rng.normal(0, 1, (len(scenes), 3)), 1)
    ]
    task = make_task("ego-motion")
    monkeypatch.setattr(linear, "cpu_count", lambda: 2)
    parallel = fit_head(task, features, labels, scenes)
    monkeypatch.setattr(linear, "cpu_count", lambda: 1)
    serial = fit_head(task, features, labels, scenes)
    assert (parallel.regularization, parallel.cv_score) == (serial.regularization, serial.cv_score)
    assert 0.4 < serial.cv_score < 1.0  # the planted classes are learnable, not at chance
    np.testing.assert_array_equal(predict(parallel, features), predict(serial, features))


def planted_ridge(rng, clips_per_scene=20, scenes=12, pairs=8, eps=0.1, noise=0.3):
    """Feature pairs (b, b + eps z) whose target lies in z: a weak direction (variance ~eps²) after
    standardization, so the best alpha is small (0.01 here), below the old grid's 0.1."""
    base = rng.normal(size=(clips_per_scene * scenes, pairs))
    hidden = rng.normal(size=base.shape)
    features = np.concatenate([base, base + eps * hidden], axis=1)
    target = hidden @ rng.normal(size=pairs) + rng.normal(0, noise, len(base))
    return features, target, np.repeat([f"s{i}" for i in range(scenes)], clips_per_scene)


def test_a_best_regularization_beyond_the_old_grid_is_found_inside_the_new_one():
    features, target, scenes = planted_ridge(np.random.default_rng(0))
    head = fit_head(make_task("speed"), features, target, scenes)
    assert head.regularization < min(OLD_RIDGE_ALPHA_GRID)  # the old grid would have stopped at its edge
    assert not head.on_edge and min(RIDGE_ALPHA_GRID) < head.regularization
    assert head.cv_score > 0.95


def test_a_choice_forced_onto_the_edge_is_reported():
    rng = np.random.default_rng(2)
    task = make_task("speed")

    def split(names):
        speed = rng.uniform(0, 15, len(names) * 10)
        pretrained = np.concatenate(
            [speed[:, None] + rng.normal(0, 1, (len(speed), 1)), rng.normal(size=(len(speed), 7))], 1
        )
        # pure noise: every penalty scores below predicting the mean, so the strongest one (the edge) wins
        noise = rng.normal(size=(len(speed), 8))
        features = {Source.pretrained(): pretrained, Source.random(0): noise}
        return Split({(k, "ingested", (1, 1)): v for k, v in features.items()}, speed, np.repeat(names, 10))

    train, val = split([f"t{i}" for i in range(10)]), split([f"v{i}" for i in range(6)])
    result = evaluate_encoders(task, train, val, n_boot=50, controls=False)
    random_row = result.row(Source.random(0))
    assert random_row.on_edge and random_row.regularization == max(RIDGE_ALPHA_GRID)
    assert not result.row(Source.pretrained()).on_edge
    report = report_dict(result)
    assert report["random"]["per_seed"]["0"]["regularization_on_edge"] is True
    assert report["pretrained"]["regularization_on_edge"] is False
    text = markdown(result, report)
    sentence = next(line for line in text.splitlines() if line.startswith("Regularization on the edge"))
    assert "random seed 0" in sentence and "pretrained" not in sentence


def test_each_encoder_gets_the_layer_its_training_scenes_favour():
    rng = np.random.default_rng(3)
    scenes = np.repeat([f"s{i}" for i in range(3)], 16)
    labels = np.array(["stopped", "straight", "left", "right"])[rng.integers(0, 4, len(scenes))]
    onehot = (labels[:, None] == np.array(["stopped", "straight", "left", "right"])).astype(float)
    directions = rng.normal(size=(4, 8))
    layers = layer_names(2)
    assert layers == ("stem", "block1", "last")
    carrier = {"pretrained": "block1", "random seed 0": "stem"}  # where each encoder's class signal is
    features = {
        (name, layer): (3.0 if layer == carrier[name] else 0.0) * onehot @ directions
        + rng.normal(size=(len(scenes), 8))
        for name in carrier
        for layer in layers
    }
    choice, heads = select_layers(make_task("ego-motion"), features, (1, 1), labels, scenes)
    assert choice.chosen == carrier
    assert set(choice.cv_scores["pretrained"]) == set(layers)
    assert choice.cv_scores["pretrained"]["block1"] > choice.cv_scores["pretrained"]["last"] + 0.2
    assert heads["pretrained"].cv_score == choice.cv_scores["pretrained"]["block1"]


def test_layers_of_one_encoder_share_one_forward_pass():
    torch.manual_seed(0)
    model = build_model(small_model())
    calls = []
    original = model.token_layers
    model.token_layers = lambda video: calls.append(1) or original(video)
    clips = [np.random.default_rng(i).integers(0, 256, (4, 32, 48, 3), dtype=np.uint8) for i in range(5)]
    sources = {layer: EncoderLayer(model, layer) for layer in layer_names(2)}
    features = extract_features(sources, iter(clips), [(1, 1), (2, 3)], batch_size=2)
    assert len(calls) == 3  # 3 batches, one forward each, for 3 layers
    video = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 255
    expected = pool(original(video)["stem"], (2, 3)).numpy()
    assert np.allclose(features[("stem", INGESTED, (2, 3))], expected, atol=1e-5)
    assert model.training  # eval for the extraction, the mode restored
