"""mvm.train.motion: the camera-motion decoder. Warping is exact where it should be, zero motion is
copying the last visible frame, hidden frames never reach the encoder, and the motion is learnable
(a model trained on sliding textures beats copying and reads the direction of motion)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _train_helpers import moving_clip, small_model

from mvm.features import temporal_pool
from mvm.train.config import OptimConfig, tiny
from mvm.train.engine import build_optimizer
from mvm.train.masks import draw_mask
from mvm.train.model import build_model, masked_mse
from mvm.train.motion import CameraMotionHead, camera_flow, warp
from mvm.train.tokens import patchify

torch.set_num_threads(1)

CFG = small_model(
    clip_len=8, image_size=(32, 48), token_frames=2, mask_type="future", mask_ratio=0.25,
    prediction="camera-motion", norm_pix_loss=False, pos_embed="sincos",
)  # fmt: skip


def test_zero_flow_returns_the_source_and_an_integer_shift_moves_it():
    source = torch.rand(2, 3, 16, 24)
    assert torch.allclose(warp(source, torch.zeros(2, 1, 2, 16, 24)), source.unsqueeze(1), atol=1e-6)
    flow = torch.zeros(2, 1, 2, 16, 24)
    flow[:, :, 0], flow[:, :, 1] = 2.0, -1.0  # frame at (y, x) = source at (y - 1, x + 2)
    moved = warp(source, flow)[:, 0]
    assert torch.allclose(moved[:, :, 1:, :-2], source[:, :, :-1, 2:], atol=1e-5)


def test_a_non_finite_flow_gives_nan_frames_without_crashing():
    flow = torch.zeros(2, 2, 2, 16, 24)
    flow[0, 1, 0, 3, 4] = float("nan")
    flow[1, 0, 1] = float("inf")
    moved = warp(torch.rand(2, 3, 16, 24), flow)
    assert moved[0, 1].isnan().all() and moved[1, 0].isnan().all()
    assert moved[0, 0].isfinite().all() and moved[1, 1].isfinite().all()


def test_camera_flow_is_a_translation_plus_an_expansion_about_the_centre():
    params = torch.tensor([[[1.5, -0.5, 0.0], [0.0, 0.0, 2.0]]])  # (B=1, F=2, 3)
    flow = camera_flow(params, (8, 12), patch_size=4)  # (1, 2, 2, 8, 12)
    assert torch.allclose(flow[0, 0, 0], torch.full((8, 12), 1.5)) and torch.allclose(
        flow[0, 0, 1], torch.full((8, 12), -0.5)
    )
    # expansion: pixel centre x = 11.5 is 5.5 px right of the centre (6): 2 * 5.5 / 4
    assert flow[0, 1, 0, 0, 11].item() == pytest.approx(2 * 5.5 / 4)
    assert flow[0, 1, 1, 0, 0].item() == pytest.approx(2 * -3.5 / 4)
    assert torch.allclose(flow[0, 1, 0].sum(dim=1), torch.zeros(8), atol=1e-5)  # symmetric about the centre


def test_an_untrained_head_predicts_copying_the_last_visible_frame():
    torch.manual_seed(0)
    model = build_model(CFG)
    video = torch.rand(2, 8, 3, 32, 48)
    ids_keep, mask = draw_mask(CFG, 2, torch.Generator())
    out = model(video, ids_keep, mask)
    copied = torch.cat([video[:, :6], video[:, 5:6].expand(-1, 2, -1, -1, -1)], dim=1)
    assert torch.allclose(out["pred"], patchify(copied, 16, 2), atol=1e-6)
    assert out["loss"].item() == pytest.approx(
        masked_mse(patchify(copied, 16, 2), patchify(video, 16, 2), mask).item(), rel=1e-5
    )


def test_hidden_frames_change_the_loss_but_never_the_prediction():
    torch.manual_seed(0)
    model = build_model(CFG)
    torch.nn.init.normal_(model.decoder.head.linear.weight, std=0.01)  # a head that moves the frame
    video = torch.rand(2, 8, 3, 32, 48)
    altered = video.clone()
    altered[:, 6:] = torch.rand(2, 2, 3, 32, 48)
    ids_keep, mask = draw_mask(CFG, 2, torch.Generator())
    with torch.no_grad():
        first, second = model(video, ids_keep, mask), model(altered, ids_keep, mask)
    assert torch.equal(first["pred"], second["pred"]) and torch.equal(first["pooled"], second["pooled"])
    assert first["loss"].item() != second["loss"].item()
    assert not torch.equal(first["pred"][:, -6:], patchify(video, 16, 2)[:, 12:18])  # it did move


def test_the_head_reads_each_token_s_change_over_time():
    head = CameraMotionHead(embed_dim=4, rows=1, cols=2, hidden_frames=3)
    tokens = torch.rand(5, 3, 1, 2, 4)
    assert torch.equal(head(tokens), torch.zeros(5, 3, 3))  # zero at initialisation: copying
    torch.nn.init.normal_(head.linear.weight)
    # the same tokens in another order keep their mean but not their change over time
    assert not torch.allclose(head(tokens), head(tokens.flip(1)))
    assert torch.allclose(
        head(tokens)[:, :, :], head.linear(temporal_pool(tokens.reshape(5, 3, -1))).reshape(5, 3, 3)
    )


@pytest.mark.slow
def test_camera_motion_is_learnable_on_sliding_textures():
    """Textures sliding by -3..3 px per frame: after 150 steps the loss is well below copying, and
    the predicted horizontal translation has the direction of the motion (an untrained head: 0)."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(CFG, embed_dim=32, depth=1))
    optimizer = build_optimizer(model, OptimConfig(lr=2e-3, weight_decay=0.0))
    rng = np.random.default_rng(0)

    def batch(n):
        clips, speeds = zip(*(moving_clip(rng, 8, (32, 48)) for _ in range(n)), strict=True)
        return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 255, torch.tensor(speeds)

    ids_keep, mask = draw_mask(CFG, 16, torch.Generator())
    for _ in range(150):
        video, _ = batch(16)
        loss = model(video, ids_keep, mask)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    video, speeds = batch(16)
    with torch.no_grad():
        trained = model(video, ids_keep, mask)["loss"].item()
        latent = model.encode(patchify(video, 16, 2), ids_keep)
        tx = model.decoder.head(latent.reshape(16, 3, 2, 3, -1))[:, 0, 0]  # first hidden frame's tx
    copy = masked_mse(patchify(torch.cat([video[:, :6], video[:, 5:6].expand(-1, 2, -1, -1, -1)], 1), 16, 2),
                      patchify(video, 16, 2), mask).item()  # fmt: skip
    assert trained < 0.5 * copy
    moving = speeds != 0
    # moving_clip's frame t shows the texture from x + v t: frame t+1 at x is frame t at x + v, so tx = +v
    assert (torch.sign(tx[moving]) == torch.sign(speeds[moving])).float().mean().item() >= 0.9


def test_every_parameter_of_the_tiny_preset_gets_a_gradient():
    """DDP (no find_unused_parameters) needs every parameter in the loss; camera-motion builds no pixel decoder."""
    cfg = dataclasses.replace(tiny().model, clip_len=8, image_size=(32, 48))
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.nn.init.normal_(model.decoder.head.linear.weight, std=0.01)
    ids_keep, mask = draw_mask(cfg, 2, torch.Generator())
    model(torch.rand(2, 8, 3, 32, 48), ids_keep, mask)["loss"].backward()
    unused = [name for name, param in model.named_parameters() if param.grad is None]
    assert not unused and not hasattr(model.decoder, "mask_token")


def test_a_mask_other_than_future_is_refused():
    torch.manual_seed(0)
    model = build_model(CFG)
    ids_keep, mask = draw_mask(
        dataclasses.replace(CFG, mask_type="random", mask_ratio=0.75), 2, torch.Generator()
    )
    with pytest.raises(ValueError, match="future mask"):
        model(torch.rand(2, 8, 3, 32, 48), ids_keep, mask)
    with pytest.raises(ValueError, match="camera-motion prediction needs mask_type future"):
        build_model(dataclasses.replace(CFG, mask_type="tube"))
