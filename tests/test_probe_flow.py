"""The `flow` reference: block matching on hand-made motion, and its place in the evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvm.features import INGESTED, SHUFFLED, STATIC, pool
from mvm.probe.evaluate import FLOW, Source, Split, evaluate_encoders
from mvm.probe.flow import FlowSource, block_matching_flow, candidate_shifts
from mvm.probe.tasks import make_task
from tests._probe_helpers import planted_split


def textured_frame(height: int = 48, width: int = 64, seed: int = 0) -> torch.Tensor:
    """(3, H, W) smooth random texture in [0, 1]: every 16-pixel patch has structure to match."""
    coarse = torch.rand(1, 3, height // 4, width // 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]


def test_candidate_shifts_cover_the_square_nearest_first():
    shifts = candidate_shifts(2)
    assert len(shifts) == 25 and len(set(shifts)) == 25 and shifts[0] == (0, 0)
    distances = [abs(dx) + abs(dy) for dx, dy in shifts]
    assert distances == sorted(distances)


def test_block_matching_recovers_a_known_translation():
    """Content moving (+2, -1) pixels per frame reads (2, -1) in every patch away from the border."""
    frame = textured_frame()
    video = torch.stack([torch.roll(frame, shifts=(-1 * t, 2 * t), dims=(1, 2)) for t in range(4)])[None]
    flow = block_matching_flow(video, patch_size=16, radius=4)
    assert flow.shape == (1, 3, 3, 4, 2)
    # the top row and the right column read frame t + 1 beyond its border (edge padding); the rest must be exact
    interior = flow[0, :, 1:, :-1]
    assert torch.equal(interior, torch.tensor([2.0, -1.0]).expand_as(interior))


def test_still_and_flat_clips_read_zero_motion():
    still = textured_frame()[None, None].expand(2, 5, -1, -1, -1)
    flat = torch.full((1, 3, 3, 32, 32), 0.5)
    assert not block_matching_flow(still, 16, 4).any()
    assert not block_matching_flow(flat, 16, 4).any()  # every shift ties: the nearest, (0, 0), wins


def test_flow_source_pools_like_every_source():
    source = FlowSource(patch_size=16)
    assert source.radius == 4
    video = torch.rand(2, 8, 3, 64, 112)
    tokens = source.token_grid(video)
    assert tokens.shape == (2, 7, 4, 7, 2)
    assert pool(tokens, (4, 7)).shape == (2, 3 * 4 * 7 * 2)
    assert torch.isfinite(pool(FlowSource(16).token_grid(video[:, :2]), (2, 2))).all()  # a single frame pair


def without_flow(split: Split) -> Split:
    return Split({k: v for k, v in split.features.items() if k[0].kind != FLOW}, split.targets, split.scenes)


@pytest.mark.slow
def test_flow_is_reported_but_changes_neither_grid_nor_verdict():
    task = make_task("ego-motion")
    rng = np.random.default_rng(3)
    grids = ((1, 1), (2, 2))
    train = planted_split(
        rng, [f"t{i}" for i in range(8)], 12, 3.0, pixel_signal=0.3, flow_signal=5.0, grids=grids
    )
    val = planted_split(
        rng, [f"v{i}" for i in range(6)], 12, 3.0, pixel_signal=0.3, flow_signal=5.0, grids=grids
    )
    with_flow = evaluate_encoders(task, train, val, n_boot=200)
    plain = evaluate_encoders(task, without_flow(train), without_flow(val), n_boot=200)

    flow = with_flow.row(Source.flow())
    assert flow.metrics["balanced_accuracy"] > 0.9 and with_flow.row(Source.flow(), STATIC).drop > 0.3
    assert {row.view for row in with_flow.rows if row.source.kind == FLOW} == {INGESTED, SHUFFLED, STATIC}
    # a reference only: the grid criterion, the conditions and the verdict are those without it
    assert with_flow.pooling == plain.pooling and "flow" not in with_flow.pooling.cv_scores[(1, 1)]
    assert [c.difference for c in with_flow.conditions] == [c.difference for c in plain.conditions]
    assert (with_flow.verdict, with_flow.strength) == (plain.verdict, plain.strength)
    # without the controls it is not reported, like pixels
    quiet = evaluate_encoders(task, train, val, n_boot=200, controls=False)
    assert not [row for row in quiet.rows if row.source.kind == FLOW]
