"""The hybrid objective: `future_steps`, the future-tube mask and the hybrid decoder (MAE's pixel
decoder on the tube-masked tokens, the camera-motion warp on the hidden future steps).

Exact hidden counts for several clip lengths (the hidden horizon stays future_steps token steps),
tube positions shared by the visible steps, determinism, the legacy meaning of future_steps 0,
one-line refusals of impossible combinations, the decoder's output, loss and gradients, and a
short mvm-train run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from _train_helpers import run_train, small_model, tiny_config, write_shards
from click.testing import CliRunner

from mvm.train.config import TrainConfig, from_dict, to_dict, validate
from mvm.train.masks import draw_mask, future_steps, hidden_fraction, hidden_steps
from mvm.train.model import build_model, masked_mse
from mvm.train.tokens import patchify, unpatchify

torch.set_num_threads(1)

N = 28
"""Patches per frame at 64x112 (4 x 7)."""


def mask_cfg(steps: int, kind: str, **fields):
    """2-frame tokens over `steps` token steps of 64x112 frames (N = 28 positions)."""
    return dataclasses.replace(
        small_model(clip_len=2 * steps, image_size=(64, 112), token_frames=2, mask_type=kind), **fields
    )


HYBRID = small_model(
    clip_len=8, image_size=(32, 64), token_frames=2, mask_type="future-tube", mask_ratio=0.75, future_steps=1,
    prediction="hybrid", norm_pix_loss=False, pos_embed="sincos",
)  # fmt: skip
"""4 token steps of 2 x 4 = 8 positions: 2 positions kept through the first 3 steps, 6 of 32 tokens visible."""


@pytest.mark.parametrize("steps", [2, 4, 6])
def test_future_steps_hide_the_same_horizon_whatever_the_clip_length(steps):
    future = mask_cfg(steps, "future", mask_ratio=0.75, future_steps=1)
    ids_keep, mask = draw_mask(future, 3, torch.Generator().manual_seed(0))
    assert ids_keep.shape == (3, (steps - 1) * N) and mask.shape == (3, steps * N)
    assert torch.equal(ids_keep[0], torch.arange((steps - 1) * N)) and mask.sum(1).eq(N).all()
    frames = unpatchify(mask[:, :, None].float().expand(-1, -1, 2 * 16 * 16 * 3), 2 * steps, (64, 112), 16, 2)
    hidden_frames = frames.bool().all(dim=(2, 3, 4))  # (B, T): a frame hidden everywhere
    assert hidden_frames[:, -2:].all() and not frames[:, :-2].bool().any()  # the last 2 frames, whatever T

    tube = mask_cfg(steps, "future-tube", mask_ratio=0.75, future_steps=1)
    ids_keep, mask = draw_mask(tube, 3, torch.Generator().manual_seed(0))
    kept = round(N * 0.25)  # 7 positions
    assert ids_keep.shape == (3, (steps - 1) * kept) and ids_keep.dtype == torch.int64
    assert torch.equal(ids_keep, ids_keep.sort(dim=1).values)
    assert mask.shape == (3, steps * N) and mask.sum(1).eq(steps * N - (steps - 1) * kept).all()
    assert torch.equal(~mask, torch.zeros_like(mask).scatter(1, ids_keep, True))
    assert hidden_fraction(tube) == pytest.approx(1 - (steps - 1) * kept / (steps * N))
    assert hidden_fraction(future) == pytest.approx(1 / steps)


def test_the_scaling_sweeps_clip_lengths_and_the_reported_fractions():
    fractions = {steps: round(hidden_fraction(mask_cfg(steps, "future-tube", mask_ratio=0.75, future_steps=1)), 2)
                 for steps in (2, 4, 6)}  # fmt: skip
    assert fractions == {2: 0.88, 4: 0.81, 6: 0.79}
    assert hidden_fraction(mask_cfg(4, "future-tube", mask_ratio=0.9, future_steps=1)) == pytest.approx(
        1 - 9 / 112
    )
    # all positions kept (a tiny ratio): only the end step is hidden; none kept is impossible
    assert hidden_fraction(mask_cfg(4, "future-tube", mask_ratio=0.01, future_steps=1)) == 0.25
    assert hidden_fraction(mask_cfg(4, "future-tube", mask_ratio=1.0, future_steps=2)) == pytest.approx(
        1 - 2 / 112
    )


def test_tube_positions_are_shared_by_the_visible_steps_and_drawn_per_clip_and_seed():
    cfg = mask_cfg(4, "future-tube", mask_ratio=0.75, future_steps=1)
    ids_keep, mask = draw_mask(cfg, 4, torch.Generator().manual_seed(5))
    grid = mask.reshape(4, 4, N)
    assert grid[:, 3].all()
    assert torch.equal(grid[:, :3], grid[:, :1].expand(-1, 3, -1))
    assert len({tuple(row.tolist()) for row in grid[:, 0]}) > 1  # clips differ
    again, _ = draw_mask(cfg, 4, torch.Generator().manual_seed(5))
    other, _ = draw_mask(cfg, 4, torch.Generator().manual_seed(6))
    assert torch.equal(again, ids_keep) and not torch.equal(other, ids_keep)


def test_future_steps_zero_keeps_the_legacy_rule_and_old_configs_load():
    for steps, ratio in [(4, 0.25), (4, 0.5), (8, 0.25), (5, 0.5)]:
        cfg = mask_cfg(steps, "future", mask_ratio=ratio)
        assert cfg.future_steps == 0 and hidden_steps(cfg) == future_steps(steps, ratio)
        assert draw_mask(cfg, 1, torch.Generator())[1].sum().item() == future_steps(steps, ratio) * N
    saved = to_dict(TrainConfig())
    del saved["model"]["future_steps"]  # a config.json / checkpoint written before the field existed
    assert from_dict(saved).model.future_steps == 0


def full_config(**model) -> TrainConfig:
    cfg = dataclasses.replace(
        TrainConfig(), model=mask_cfg(4, "future-tube", mask_ratio=0.75, future_steps=1, prediction="hybrid",
                                      norm_pix_loss=False)
    )  # fmt: skip
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"future_steps": 0}, "future-tube needs model.future_steps >= 1"),
        ({"future_steps": 4}, "model.future_steps 4 must be below the clip's 4 token time steps"),
        ({"mask_type": "tube"}, "future_steps 1 applies to mask_type future and future-tube only, not tube"),
        ({"mask_type": "future"}, "hybrid needs model.mask_type future-tube and model.norm_pix_loss off "
                                  "(for mask_type future use --prediction camera-motion)"),
        ({"norm_pix_loss": True}, "use --no-norm-pix-loss"),
        ({"prediction": "camera-motion"}, "camera-motion needs model.mask_type future and model.norm_pix_loss off "
                                          "(for mask_type future-tube use --prediction hybrid)"),
    ],
)  # fmt: skip
def test_impossible_combinations_are_refused(model, message):
    validate(full_config())
    with pytest.raises(ValueError, match=None) as error:
        validate(full_config(**model))
    assert message in str(error.value)


def test_a_valid_pixel_objective_on_future_tube_and_future_with_future_steps():
    validate(full_config(prediction="pixels", norm_pix_loss=True))
    validate(full_config(mask_type="future", prediction="camera-motion", future_steps=2))


def test_cli_refuses_an_impossible_combination_in_one_line(tmp_path):
    from mvm.train.cli import main

    shards = write_shards(tmp_path / "s", [2], clip_len=8)
    result = CliRunner().invoke(
        main,
        ["--shards", str(shards), "--out", str(tmp_path / "r"), "--model", "tiny", "--prediction", "hybrid"],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "hybrid needs model.mask_type future-tube" in result.output and not (tmp_path / "r").exists()


def hybrid_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(HYBRID)
    video = torch.rand(2, 8, 3, 32, 64)
    ids_keep, mask = draw_mask(HYBRID, 2, torch.Generator().manual_seed(seed))
    return model, video, ids_keep, mask


def test_an_untrained_hybrid_copies_the_last_visible_frame_on_the_future_steps():
    model, video, ids_keep, mask = hybrid_batch()
    out = model(video, ids_keep, mask)
    assert out["pred"].shape == (2, 4 * 8, 2 * 16 * 16 * 3) and out["pred"].dtype == torch.float32
    copied = patchify(video[:, 5:6].expand(-1, 2, -1, -1, -1), 16, 2)  # frame 5 = last of the 3 visible steps
    assert torch.allclose(out["pred"][:, 24:], copied, atol=1e-6)
    # the visible steps: the pixel decoder's output, not the input
    assert not torch.allclose(out["pred"][:, :24], patchify(video, 16, 2)[:, :24], atol=0.1)


def test_the_loss_covers_exactly_the_hidden_patches():
    model, video, ids_keep, mask = hybrid_batch()
    out = model(video, ids_keep, mask)
    error = ((out["pred"] - patchify(video, 16, 2)) ** 2).mean(dim=-1)  # (B, L) raw pixels
    assert mask.sum().item() == 2 * (32 - 6)
    assert out["loss"].item() == pytest.approx(error[mask].mean().item(), rel=1e-5)
    # visible tokens' predictions are outside the loss: replacing them changes nothing
    replaced = torch.where(mask.unsqueeze(-1), out["pred"], torch.rand_like(out["pred"]))
    assert masked_mse(replaced, patchify(video, 16, 2), mask).item() == pytest.approx(
        out["loss"].item(), rel=1e-6
    )


def test_what_the_encoder_and_the_decoder_see():
    """Hidden pixels of the earlier visible frames and of the future never change the prediction;
    the tube-hidden pixels of the last visible frame change only the warped future (the warp source is
    the input frame, which the decoder reads whole), never the encoder's tokens."""
    model, video, ids_keep, mask = hybrid_batch()
    torch.nn.init.normal_(model.decoder.head.linear.weight, std=0.01)  # a head that moves the frame
    hidden = unpatchify(mask[:, :, None].float().expand(-1, -1, 1536), 8, (32, 64), 16, 2).bool()
    noise = torch.rand_like(video)
    with torch.no_grad():
        first = model(video, ids_keep, mask)
        earlier = video.clone()
        earlier[:, :5] = torch.where(hidden[:, :5], noise[:, :5], video[:, :5])
        earlier[:, 6:] = noise[:, 6:]
        second = model(earlier, ids_keep, mask)
        last = video.clone()
        last[:, 5] = torch.where(hidden[:, 5], noise[:, 5], video[:, 5])
        third = model(last, ids_keep, mask)
    assert torch.equal(first["pred"], second["pred"]) and torch.equal(first["pooled"], second["pooled"])
    assert torch.equal(first["pooled"], third["pooled"])
    assert torch.equal(first["pred"][:, :24], third["pred"][:, :24])
    assert not torch.equal(first["pred"][:, 24:], third["pred"][:, 24:])


def test_both_halves_of_the_loss_reach_the_encoder_and_every_parameter_trains():
    model, video, ids_keep, mask = hybrid_batch()
    model(video, ids_keep, mask)["loss"].backward()
    assert not [name for name, param in model.named_parameters() if param.grad is None]  # DDP needs all
    assert model.encoder.layers[0].linear1.weight.grad.abs().sum() > 0
    assert model.decoder.head.linear.weight.grad.abs().sum() > 0  # the zero head starts learning

    model.zero_grad()
    torch.nn.init.normal_(model.decoder.head.linear.weight, std=0.01)
    future_only = torch.zeros_like(mask)
    future_only[:, 24:] = True
    out = model(video, ids_keep, mask)
    masked_mse(out["pred"], patchify(video, 16, 2), future_only).backward()  # the warp's half alone
    assert model.stem.conv1.weight.grad.abs().sum() > 0
    pixel_head = model.decoder.pixels.head.weight.grad
    assert pixel_head is None or pixel_head.abs().sum() == 0


def test_the_motion_head_reads_the_visible_tokens_in_place():
    """Each position keeps its own weights whichever positions the mask kept: the same tokens at
    other positions give another motion."""
    from mvm.train.hybrid_decoder import visible_grid

    latent = torch.rand(1, 6, 32)
    at = torch.tensor([[0, 3, 8, 11, 16, 19]])  # positions 0 and 3 through 3 steps of 8
    grid = visible_grid(latent, at, 3, 2, 4)
    assert grid.shape == (1, 3, 2, 4, 32) and torch.equal(grid[0, 1, 0, 3], latent[0, 3])
    assert grid[0, :, 0, 1:3].abs().sum() == 0 and grid[0, :, 1].abs().sum() == 0
    model, *_ = hybrid_batch()
    head = model.decoder.head
    torch.nn.init.normal_(head.linear.weight)
    moved = visible_grid(latent, at + 4, 3, 2, 4)  # the same tokens one row down
    assert not torch.allclose(head(grid), head(moved))


def test_mvm_train_runs_the_hybrid_objective(tmp_path):
    shards = write_shards(tmp_path / "s", [6, 6], clip_len=8)
    config = tiny_config(tmp_path / "c.json")
    run = tmp_path / "r"
    result = run_train(
        ["--shards", str(shards), "--out", str(run), "--model", "tiny", "--config", str(config), "--steps", "20",
         "--device", "cpu", "--prediction", "hybrid", "--mask-type", "future-tube", "--mask-ratio", "0.75",
         "--future-steps", "1"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "future-tube mask hiding 0.81 of the tokens, hybrid prediction" in result.stderr + result.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "event" not in r]
    assert len(losses) == 20 and all(0 < loss < 1 for loss in losses)
    saved = json.loads((run / "config.json").read_text())["model"]
    assert (saved["prediction"], saved["mask_type"], saved["future_steps"]) == ("hybrid", "future-tube", 1)
    assert (run / "checkpoints" / "step-000020").is_dir()


def test_the_hybrid_decoder_refuses_other_masks():
    from mvm.train.hybrid_decoder import HybridDecoder

    with pytest.raises(ValueError, match="hybrid needs model.mask_type future-tube"):
        HybridDecoder(dataclasses.replace(HYBRID, mask_type="future", prediction="pixels"))
    model, video, ids_keep, mask = hybrid_batch()
    ids_keep, mask = draw_mask(
        dataclasses.replace(HYBRID, mask_type="future", future_steps=1), 2, torch.Generator()
    )
    with pytest.raises(ValueError, match="future-tube mask's 6 visible tokens, got 24"):
        model(video, ids_keep, mask)
