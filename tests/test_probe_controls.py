"""The probe's controls: views on hand-made clips, pooling, grid selection, strength on planted features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mvm.probe.pooling
from mvm.features import (
    INGESTED,
    PIXELS,
    SHUFFLED,
    STATIC,
    VIEWS,
    apply_view,
    extract_features,
    grid_pool,
    pool,
    shuffled_order,
    temporal_pool,
)
from mvm.probe.evaluate import Source, evaluate_encoders
from mvm.probe.gate import FAIL, NONE, PASS, STRONG, WEAK, Verdict, compare, strength
from mvm.probe.linear import fit_head, predict
from mvm.probe.pooling import candidate_grids
from mvm.probe.tasks import make_task
from tests._probe_helpers import planted_split


def hand_made_clip(frames: int = 8, index: int = 0) -> np.ndarray:
    """(T, 4, 6, 3) uint8 clip whose frame t is filled with the value 10 * t + index (frames distinguishable)."""
    return np.stack([np.full((4, 6, 3), 10 * t + index, np.uint8) for t in range(frames)])


def test_shuffled_view_is_a_seeded_non_identity_permutation():
    clip = hand_made_clip()
    shuffled = apply_view(clip, SHUFFLED, seed=0, clip_index=3)
    assert shuffled.shape == clip.shape and shuffled.dtype == clip.dtype
    # The same frames, in another order.
    assert sorted(frame[0, 0, 0] for frame in shuffled) == sorted(frame[0, 0, 0] for frame in clip)
    assert not np.array_equal(shuffled, clip)
    assert np.array_equal(shuffled, apply_view(clip, SHUFFLED, seed=0, clip_index=3))
    orders = {tuple(shuffled_order(8, seed, index)) for seed in range(3) for index in range(5)}
    assert len(orders) > 10  # seed and clip index both matter
    for frames in (2, 3):  # never the identity, even when the draw would be
        assert all(not np.array_equal(shuffled_order(frames, 0, i), np.arange(frames)) for i in range(50))


def test_static_view_has_no_temporal_change_and_ingested_is_untouched():
    clip = hand_made_clip(index=5)
    static = apply_view(clip, STATIC, seed=0, clip_index=0)
    assert static.shape == clip.shape
    assert np.all(np.diff(static.astype(int), axis=0) == 0) and np.array_equal(static[0], clip[0])
    assert apply_view(clip, INGESTED, 0, 0) is clip
    with pytest.raises(ValueError, match="unknown view"):
        apply_view(clip, "reversed", 0, 0)


def test_pooling_shapes_and_pixel_thumbnail():
    tokens = torch.arange(2 * 3 * 4 * 6 * 5, dtype=torch.float32).reshape(2, 3, 4, 6, 5)  # (B, T, R, C, d)
    assert grid_pool(tokens, (2, 2)).shape == (2, 3, 2 * 2 * 5)
    assert pool(tokens, (4, 6)).shape == (2, 3 * 4 * 6 * 5)
    np.testing.assert_allclose(grid_pool(tokens, (1, 1)), tokens.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="finer"):
        grid_pool(tokens, (5, 6))
    per_step = torch.tensor([[[0.0], [1.0], [3.0], [6.0]]])  # (1, T=4, 1)
    mean, change, step = temporal_pool(per_step)[0].tolist()
    assert (mean, change, step) == pytest.approx((2.5, 4.0, 2.0))

    # Pixels: the static view's change and step features are exactly zero; the shuffled view keeps
    # the time mean (a permutation) but not the signed change.
    clips = [hand_made_clip(index=i) for i in range(3)]
    features = extract_features({"pixels": PIXELS}, iter(clips), [(1, 1), (2, 3)], VIEWS, batch_size=2)
    assert features[("pixels", INGESTED, (2, 3))].shape == (3, 3 * 2 * 3 * 3)
    static = features[("pixels", STATIC, (1, 1))]
    np.testing.assert_allclose(static[:, 3:], 0.0)
    ingested, shuffled = features[("pixels", INGESTED, (1, 1))], features[("pixels", SHUFFLED, (1, 1))]
    np.testing.assert_allclose(shuffled[:, :3], ingested[:, :3], rtol=1e-6)
    assert not np.allclose(shuffled[:, 3:6], ingested[:, 3:6])
    np.testing.assert_allclose(ingested[:, 0], (np.arange(3) + 35) / 255.0, rtol=1e-6)  # mean of 10t + i


def test_candidate_grids():
    assert candidate_grids((4, 7)) == [(1, 1), (2, 2), (4, 7)]
    assert candidate_grids((2, 2)) == [(1, 1), (2, 2)]
    assert candidate_grids((1, 3)) == [(1, 1), (1, 3)]


@pytest.mark.slow
def test_grid_selection_sees_training_scenes_only(monkeypatch):
    task = make_task("ego-motion")
    rng = np.random.default_rng(0)
    grids = [(1, 1), (2, 2)]
    train = planted_split(rng, [f"t{i}" for i in range(6)], 12, 2.0, pixel_signal=1.0, grids=grids)
    val = planted_split(rng, [f"v{i}" for i in range(4)], 12, 2.0, pixel_signal=1.0, grids=grids)
    seen = []
    real = mvm.probe.pooling.fit_head

    def spy(task, features, targets, scenes):
        seen.append((features, targets, scenes))
        return real(task, features, targets, scenes)

    monkeypatch.setattr(mvm.probe.pooling, "fit_head", spy)
    result = evaluate_encoders(task, train, val, n_boot=100, controls=False)
    sources = {source for source, _, _ in train.features}
    assert len(seen) == len(sources) * len(grids)  # one head per (source, grid), nothing more
    val_arrays = list(val.features.values())
    for features, targets, scenes in seen:
        assert targets is train.targets and scenes is train.scenes
        assert any(features is x for x in train.features.values())
        assert not any(np.shares_memory(features, x) for x in val_arrays)
    assert result.pooling.grid in grids and set(result.pooling.cv_scores) == set(grids)
    assert set(result.pooling.cv_scores[(1, 1)]) == {source.name for source in sources}


def test_strength_rules():
    passed, failed = Verdict(PASS, "ok"), Verdict(FAIL, "no")
    good = compare("beats_pixels", "x", 0.8, 0.6, (0.05, 0.3))
    noisy = compare("needs_order", "y", 0.8, 0.75, (-0.02, 0.1))
    below = compare("beats_pixels", "x", 0.6, 0.8, (-0.3, -0.1))
    assert good.held and not noisy.held and not below.held
    assert not compare("n", "s", 0.8, 0.6, (float("nan"), 0.3)).held
    assert strength(passed, [good, good])[0] == STRONG
    level, reason = strength(passed, [good, noisy])
    assert level == WEAK and "needs_order" in reason
    assert strength(failed, [good, good])[0] == NONE


@pytest.mark.parametrize("order_free", [False, True])
@pytest.mark.slow
def test_strength_on_planted_features(order_free):
    """Order-dependent features reach `strong`; order-free ones (signal survives shuffling) stay `weak`."""
    task = make_task("ego-motion")
    rng = np.random.default_rng(1)
    train = planted_split(rng, [f"t{i}" for i in range(8)], 12, 3.0, order_free=order_free, pixel_signal=0.3)
    val = planted_split(rng, [f"v{i}" for i in range(6)], 12, 3.0, order_free=order_free, pixel_signal=0.3)
    result = evaluate_encoders(task, train, val, n_boot=200)
    conditions = {condition.name: condition for condition in result.conditions}
    assert result.verdict.gate == PASS and conditions["beats_pixels"].held
    assert conditions["needs_order"].held is (not order_free)
    assert result.strength == (WEAK if order_free else STRONG)
    pretrained = Source.pretrained()
    assert result.row(pretrained, STATIC).drop > 0.3  # planted: no signal on the static view
    recall = result.row(pretrained).per_class_recall
    assert set(recall) == set(task.classes) and all(0.0 <= value <= 1.0 for value in recall.values())
    rows = {(row.source.kind, row.view) for row in result.rows}
    assert {("pixels", view) for view in VIEWS} <= rows and ("random", SHUFFLED) in rows


def test_model_token_grid_lays_out_the_encoder_tokens():
    """token_grid is the unmasked encoder output, time-major tokens laid out as (B, T, H/p, W/p, d)."""
    from _train_helpers import small_model

    from mvm.train.model import build_model
    from mvm.train.tokens import patchify

    torch.manual_seed(0)
    model = build_model(small_model(stem_channels=4, embed_dim=8, depth=1, decoder_dim=8)).eval()
    video = torch.rand(2, 4, 3, 32, 48)
    tokens = model.token_grid(video)
    assert tokens.shape == (2, 4, 2, 3, 8)
    with torch.no_grad():
        flat = model.encode(patchify(video, 16), None)  # (B, T * rows * cols, d), token l = t * N + n
    torch.testing.assert_close(tokens.reshape(2, -1, 8), flat)
    torch.testing.assert_close(tokens[:, 1, 0, 2], flat[:, 1 * 6 + 0 * 3 + 2])


def test_row_space_projection_is_exact_for_l2_heads():
    """Ridge on the projected features predicts exactly what ridge on the full features does (F > N)."""
    from sklearn.linear_model import Ridge

    from mvm.probe.linear import RowSpace

    rng = np.random.default_rng(0)
    train, test, y = rng.normal(size=(30, 400)), rng.normal(size=(10, 400)), rng.normal(size=30)
    span = RowSpace().fit(train)
    assert span.basis_.shape == (400, 30)
    np.testing.assert_allclose(span.basis_.T @ span.basis_, np.eye(30), atol=1e-8)
    full = Ridge(alpha=3.0).fit(train, y).predict(test)
    projected = Ridge(alpha=3.0).fit(span.transform(train), y).predict(span.transform(test))
    np.testing.assert_allclose(projected, full, atol=1e-8)
    assert RowSpace().fit(train[:, :20]).transform(test[:, :20]).shape == (10, 20)  # F <= N: identity


def test_a_constant_feature_set_still_gets_a_head():
    """All-zero standardized features with F > N (flow on the static view of few clips): intercept only."""
    task = make_task("speed")
    features = np.zeros((6, 40), np.float32)
    speeds, scenes = np.arange(6, dtype=float), np.repeat(["a", "b", "c"], 2)
    head = fit_head(task, features, speeds, scenes)
    np.testing.assert_allclose(predict(head, np.ones((2, 40))), speeds.mean())
