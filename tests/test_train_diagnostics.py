"""mvm.train.diagnostics: copy_loss on clips where copying is exact or impossible; the collapse detector
fires on constant and position-only encoders and stays quiet on a (briefly) trained one."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import small_model

from mvm.train.config import OptimConfig, TrainConfig
from mvm.train.diagnostics import (
    collapse_reasons,
    collapse_signals,
    copy_loss,
    copy_predictions,
    effective_rank,
    fixed_mask,
)
from mvm.train.engine import build_optimizer, train_step
from mvm.train.masks import draw_mask
from mvm.train.model import build_model, masked_mse, normalize_patches
from mvm.train.tokens import patchify

torch.set_num_threads(1)

CFG = small_model()
PER_FRAME = 6
DEFAULTS = TrainConfig()


def test_copy_predictions_take_the_nearest_visible_frame_earlier_on_ties():
    # one clip, T=5, N=1, P=1: token value = its frame index; visible at t=1 and t=3 only
    target = torch.arange(5.0).view(1, 5, 1, 1)
    mask = torch.tensor([[True, False, True, False, True]]).view(1, 5, 1)
    pred = copy_predictions(target, mask).view(-1).tolist()
    assert pred == [1.0, 1.0, 1.0, 3.0, 3.0]  # t=2 is 1 away from both: the earlier frame wins


def test_a_position_with_no_visible_token_gets_the_mean_visible_patch():
    target = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[2.0, 4.0], [9.0, 9.0]]]])  # (1, T=2, N=2, P=2)
    mask = torch.tensor([[[False, True], [False, True]]])  # position 1 never visible
    pred = copy_predictions(target, mask)
    assert torch.equal(pred[0, :, 1], torch.tensor([[1.5, 3.5], [1.5, 3.5]]))
    assert torch.equal(pred[0, :, 0], target[0, :, 0])


def test_copy_loss_is_zero_on_a_static_clip_under_random_masking():
    frame = torch.rand(2, 1, 3, 32, 48)
    static = frame.expand(2, 4, 3, 32, 48).contiguous()
    # a random-style mask, 75% hidden, that leaves each position visible in exactly one frame
    frame_of_position = torch.arange(PER_FRAME) % 4
    mask = (torch.arange(4).view(4, 1) != frame_of_position.view(1, -1)).reshape(1, -1).expand(2, -1)
    assert copy_loss(static, mask, 16, norm_pix_loss=True) == pytest.approx(0.0, abs=1e-6)
    assert copy_loss(torch.rand(2, 4, 3, 32, 48), mask, 16, norm_pix_loss=True) > 0.5  # noise: no copying


def test_copy_loss_on_two_frame_tokens_copies_the_nearest_visible_frame():
    # T=4 in 2-frame tokens: 2 token steps; each position visible in exactly one of them
    still = torch.rand(2, 1, 3, 32, 48).expand(2, 4, 3, 32, 48).contiguous()
    visible_step = torch.arange(PER_FRAME) % 2
    mask = (torch.arange(2).view(2, 1) != visible_step.view(1, -1)).reshape(1, -1).expand(2, -1)
    assert copy_loss(still, mask, 16, norm_pix_loss=False, token_frames=2) == pytest.approx(0.0, abs=1e-9)
    moving = still.clone()
    moving[:, 2:] = torch.rand(2, 2, 3, 32, 48)  # frames 2-3 (token step 1) differ from 0-1
    raw = copy_loss(moving, mask, 16, norm_pix_loss=False, token_frames=2)
    assert raw == pytest.approx(2 * torch.var(torch.rand(100000)).item(), rel=0.1)  # E(a - b)^2 = 2 var
    # the future mask hides token step 1 (frames 2-3): both copy frame 1, the last visible frame,
    # not frames 0-1 of the last visible token (what a zero-motion prediction does)
    _, future = draw_mask(
        small_model(token_frames=2, mask_type="future", mask_ratio=0.5), 2, torch.Generator()
    )
    held = torch.rand(2, 4, 3, 32, 48)
    held[:, 2:] = held[:, 1:2]
    assert copy_loss(held, future, 16, norm_pix_loss=False, token_frames=2) == pytest.approx(0.0, abs=1e-9)


def test_tube_masking_leaves_nothing_to_copy():
    video = torch.rand(2, 4, 3, 32, 48)
    _, mask = draw_mask(small_model(mask_type="tube", mask_ratio=0.5), 2, torch.Generator().manual_seed(0))
    target = normalize_patches(patchify(video, 16))
    visible = (~mask).unsqueeze(-1).float()
    mean_patch = (target * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True)
    expected = masked_mse(mean_patch.expand_as(target), target, mask).item()
    assert copy_loss(video, mask, 16, norm_pix_loss=True) == pytest.approx(expected, rel=1e-5)


def test_effective_rank_of_known_spectra():
    assert effective_rank(torch.ones(8, 5)) == 0.0  # identical rows
    for dims in (1, 2, 3):  # rows +-e_i, i < dims: centred, `dims` equal singular values
        rows = torch.cat([torch.eye(5)[:dims], -torch.eye(5)[:dims]]) + 7.0
        assert effective_rank(rows) == pytest.approx(float(dims), rel=1e-6)


def _video(batch: int = 8) -> torch.Tensor:
    return torch.rand(batch, 4, 3, 32, 48, generator=torch.Generator().manual_seed(1))


def _reasons(model) -> list[str]:
    ids_keep = fixed_mask(CFG, 1, seed=0)[0][0]
    signals = collapse_signals(model, _video(), ids_keep)
    return collapse_reasons(signals, DEFAULTS.collapse_rankme, DEFAULTS.collapse_time_spread)


def _zero_stem(model) -> None:
    for param in model.stem.conv2.parameters():  # the stem now outputs 0 whatever the pixels
        param.data.zero_()


def test_detector_fires_on_a_constant_encoder():
    torch.manual_seed(0)
    model = build_model(CFG)
    _zero_stem(model)
    model.space_pos.data.zero_()
    model.time_pos.data.zero_()
    reasons = _reasons(model)
    assert any("effective rank" in r for r in reasons) and any("over time" in r for r in reasons)


def test_detector_fires_on_a_position_only_encoder():
    torch.manual_seed(0)
    model = build_model(CFG)
    _zero_stem(model)  # tokens are stem(patch) + position: only position is left
    signals = collapse_signals(model, _video(), fixed_mask(CFG, 1, seed=0)[0][0])
    assert signals["rankme"] == 0.0 and signals["time_spread"] < 1e-5
    assert len(_reasons(model)) == 2


def test_detector_stays_quiet_on_a_trained_encoder():
    torch.manual_seed(0)
    model = build_model(CFG)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
    for step in range(15):
        video = torch.rand(8, 4, 3, 32, 48, generator=torch.Generator().manual_seed(100 + step))
        ids_keep, mask = draw_mask(small_model(mask_type="tube"), 8, torch.Generator().manual_seed(step))
        train_step(model, optimizer, video, ids_keep, mask, lr=1e-3, grad_clip=1.0, bf16=False)
    assert model.training
    assert _reasons(model) == []
    assert model.training  # the signals ran in eval mode and restored the mode
