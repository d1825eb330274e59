"""mvm.train.model: patchify inverse, masking invariants, no leak of masked pixels, loss on masked patches
only, position codes, input standardization, the decoder chosen once, older checkpoints' keys."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _train_helpers import small_model

from mvm.train.config import PRESETS, ModelConfig, OptimConfig, from_dict, tiny, to_dict
from mvm.train.engine import build_optimizer, load_optimizer_state, train_step
from mvm.train.masks import MASK_TYPES, draw_mask, future_steps
from mvm.train.model import PIXEL_MEAN, PIXEL_STD, build_model, masked_mse
from mvm.train.motion import CameraMotionDecoder
from mvm.train.pixel_decoder import PixelDecoder
from mvm.train.tokens import patchify, sincos_3d, unpatchify

torch.set_num_threads(1)

CFG = small_model()


def mask_config(frames: int, kind: str, ratio: float = 0.75, size=(64, 112), **fields) -> ModelConfig:
    """A model config whose masks cover `frames` token steps of (size / 16) patches: 4 x 7 = 28 at 64x112."""
    return ModelConfig(clip_len=frames, image_size=size, mask_type=kind, mask_ratio=ratio, **fields)


def test_patchify_unpatchify_are_exact_inverses():
    video = torch.rand(2, 4, 3, 32, 48)
    patches = patchify(video, 16)
    assert patches.shape == (2, 4 * 6, 16 * 16 * 3)
    assert torch.equal(unpatchify(patches, 4, (32, 48), 16), video)
    # token l = t * N + n holds frame t's patch n (row-major): check one by hand
    t, row, col = 2, 1, 2
    expected = (
        video[0, t, :, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16].permute(1, 2, 0).reshape(-1)
    )
    assert torch.equal(patches[0, t * 6 + row * 3 + col], expected)
    random_patches = torch.rand(2, 24, 768)
    assert torch.equal(patchify(unpatchify(random_patches, 4, (32, 48), 16), 16), random_patches)


def test_two_frame_tokens_patchify_inverse_and_layout():
    video = torch.rand(2, 4, 3, 32, 48)
    tokens = patchify(video, 16, token_frames=2)
    assert tokens.shape == (2, 2 * 6, 2 * 16 * 16 * 3)
    assert torch.equal(unpatchify(tokens, 4, (32, 48), 16, token_frames=2), video)
    # token l = s * N + n holds frames 2s and 2s+1 of patch n, frame by frame
    step, row, col = 1, 0, 2
    by_hand = video[1, 2 * step : 2 * step + 2, :, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16]
    assert torch.equal(tokens[1, step * 6 + row * 3 + col], by_hand.permute(0, 2, 3, 1).reshape(-1))


@pytest.mark.parametrize("kind", MASK_TYPES)
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_mask_invariants(kind, ratio):
    ends = {"future_steps": 1} if kind == "future-tube" else {}
    frames, per_frame, cfg = 4, 28, mask_config(4, kind, ratio, **ends)
    ids_keep, mask = draw_mask(cfg, 3, torch.Generator().manual_seed(0))
    tokens = frames * per_frame
    assert mask.shape == (3, tokens) and mask.dtype == torch.bool
    for clip in range(3):
        kept = ids_keep[clip]
        assert torch.equal(kept, kept.sort().values) and len(set(kept.tolist())) == len(kept)
        assert torch.equal(~mask[clip], torch.zeros(tokens, dtype=torch.bool).index_fill(0, kept, True))
    masked_share = mask.float().mean().item()
    per_frame_masks = mask.reshape(3, frames, per_frame)
    if kind == "future":  # whole last steps, the same in every clip, no randomness
        hidden = future_steps(frames, ratio)
        assert masked_share == hidden / frames and 1 <= hidden < frames
        assert per_frame_masks[:, -hidden:].all() and not per_frame_masks[:, :-hidden].any()
        return
    if kind == "future-tube":  # the last step whole, then tubes through the 3 visible steps
        assert per_frame_masks[:, -1].all() and (~mask).sum(1).eq(3 * round(per_frame * (1 - ratio))).all()
        assert torch.equal(per_frame_masks[:, :-1], per_frame_masks[:, :1].expand(-1, 3, -1))
        return
    assert abs(masked_share - ratio) < 0.05
    if kind == "tube":
        assert torch.equal(per_frame_masks, per_frame_masks[:, :1].expand_as(per_frame_masks))
    if kind == "tubelet":  # frames 2k and 2k+1 share their mask; consecutive tubelets differ
        assert torch.equal(per_frame_masks[:, 0::2], per_frame_masks[:, 1::2])
        assert not torch.equal(per_frame_masks[:, 0], per_frame_masks[:, 2])
    again, _ = draw_mask(cfg, 3, torch.Generator().manual_seed(0))
    other, _ = draw_mask(cfg, 3, torch.Generator().manual_seed(1))
    assert torch.equal(again, ids_keep) and not torch.equal(other, ids_keep)


def test_random_masks_differ_across_frames():
    _, mask = draw_mask(mask_config(8, "random"), 2, torch.Generator().manual_seed(0))
    per_frame = mask.reshape(2, 8, 28)
    assert not torch.equal(per_frame, per_frame[:, :1].expand_as(per_frame))


LEAK_CASES = [(1, "learned"), (2, "sincos")]
"""(token_frames, pos_embed) pairs the leak test runs with every mask type."""


def test_presets_use_only_settings_the_leak_test_covers():
    models = [factory().model for factory in PRESETS.values()]
    assert {m.mask_type for m in models} <= set(MASK_TYPES)
    assert {(m.token_frames, m.pos_embed) for m in models} <= set(LEAK_CASES)


@pytest.mark.parametrize("kind", MASK_TYPES)
@pytest.mark.parametrize(("token_frames", "pos_embed"), LEAK_CASES)
def test_encoder_output_has_exactly_zero_gradient_wrt_masked_pixels(kind, token_frames, pos_embed):
    torch.manual_seed(0)
    ends = int(kind == "future-tube")  # future_steps: the hidden end step future-tube needs
    cfg = dataclasses.replace(
        CFG, token_frames=token_frames, pos_embed=pos_embed, mask_type=kind, future_steps=ends
    )
    model = build_model(cfg)
    video = torch.rand(2, 4, 3, 32, 48, requires_grad=True)
    size = token_frames * 768
    ids_keep, mask = draw_mask(cfg, 2, torch.Generator().manual_seed(3))
    latent = model.encode(patchify(video, 16, token_frames), ids_keep)
    (latent * torch.randn_like(latent)).sum().backward()
    hidden = mask.unsqueeze(-1).expand(-1, -1, size).float()
    pixel_masked = unpatchify(hidden, 4, (32, 48), 16, token_frames).bool()
    grad = video.grad
    assert grad[pixel_masked].abs().max().item() == 0.0
    assert grad[~pixel_masked].abs().max().item() > 0.0  # visible pixels do reach the encoder


def test_loss_depends_only_on_masked_targets():
    torch.manual_seed(0)
    model = build_model(CFG)
    pred = torch.rand(2, 24, 768)
    target = torch.rand(2, 24, 768)
    _, mask = draw_mask(CFG, 2, torch.Generator().manual_seed(0))
    changed = torch.where(mask.unsqueeze(-1), target, torch.rand_like(target) * 100)
    assert masked_mse(pred, target, mask).item() == masked_mse(pred, changed, mask).item()
    assert masked_mse(
        pred, torch.where(mask.unsqueeze(-1), target + 1, target), mask
    ).item() != pytest.approx(masked_mse(pred, target, mask).item())
    # End to end: changing the *pixels* of visible patches changes the input, so instead feed the
    # model a video whose masked patches change: the loss must change (they are the targets),
    # while the encoder output stays identical (they are hidden).
    video = torch.rand(2, 4, 3, 32, 48)
    ids_keep, mask = draw_mask(CFG, 2, torch.Generator().manual_seed(1))
    pixel_masked = unpatchify(mask.unsqueeze(-1).expand(-1, -1, 768).float(), 4, (32, 48), 16).bool()
    altered = torch.where(pixel_masked, torch.rand_like(video), video)
    with torch.no_grad():
        first, second = model(video, ids_keep, mask), model(altered, ids_keep, mask)
    assert torch.equal(first["pooled"], second["pooled"]) and torch.equal(first["pred"], second["pred"])
    assert first["loss"].item() != second["loss"].item()


def test_pooled_features_shape_and_motion_sensitivity():
    from mvm.features import pool

    torch.manual_seed(0)
    model = build_model(CFG).eval()
    video = torch.rand(3, 4, 3, 32, 48)
    features = pool(model.token_grid(video), (1, 1))
    assert features.shape == (3, 3 * 32) and torch.isfinite(features).all()
    reversed_time = pool(model.token_grid(video.flip(1)), (1, 1))
    # same frames, other order: the time-mean part is (nearly) unchanged, the change part flips sign
    assert not torch.allclose(features[:, 32:64], reversed_time[:, 32:64], atol=1e-4)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="not divisible"):
        build_model(ModelConfig(clip_len=4, image_size=(30, 48), patch_size=16))
    with pytest.raises(ValueError, match="unknown mask type"):
        draw_mask(mask_config(2, "blocks", 0.5), 1, torch.Generator())
    with pytest.raises(ValueError, match="not divisible by the tubelet"):
        draw_mask(mask_config(5, "tubelet", 0.5, mask_tubelet=2), 1, torch.Generator())
    with pytest.raises(ValueError, match="not divisible by token_frames"):
        build_model(dataclasses.replace(CFG, clip_len=5, token_frames=2))


def test_sincos_codes_share_place_across_frames_and_are_not_saved():
    codes = sincos_3d(32, 4, 2, 3)  # (T, N, d)
    assert codes.shape == (4, 6, 32)
    flat = codes.reshape(-1, 32)
    assert len({tuple(row.tolist()) for row in flat}) == 24  # every (frame, place) has its own code
    time_part = 2 * (32 // 8)
    # the same place in two frames differs only in the frame channels, two places only in the others
    assert torch.equal(codes[0, :, time_part:], codes[3, :, time_part:])
    assert torch.equal(codes[:, 0, :time_part], codes[:, 5, :time_part])
    model = build_model(dataclasses.replace(CFG, pos_embed="sincos"))
    assert not any("pos" in name for name in model.state_dict())  # fixed codes: nothing to save or load


def test_stem_standardizes_inputs_and_old_configs_keep_raw_inputs():
    torch.manual_seed(0)
    standardized = build_model(CFG).eval()
    raw = build_model(dataclasses.replace(CFG, input_norm=False)).eval()
    raw.load_state_dict(standardized.state_dict())
    video = torch.rand(2, 4, 3, 32, 48)
    expected = raw.token_grid((video - PIXEL_MEAN) / PIXEL_STD)
    assert torch.allclose(standardized.token_grid(video), expected, atol=1e-5)
    saved = to_dict(tiny())
    del saved["model"]["input_norm"]  # a config.json written before the field existed
    assert from_dict(saved).model.input_norm is False and tiny().model.input_norm is True


def test_draw_mask_is_the_seeded_unit_draw_the_trainer_always_made():
    """draw_mask's tube mask, recomputed by hand from the one torch.rand it consumes."""
    cfg = mask_config(4, "tube", 0.5, size=(32, 48))  # 6 units (positions), 3 kept
    ids_keep, mask = draw_mask(cfg, 2, torch.Generator().manual_seed(7))
    kept = torch.rand(2, 6, generator=torch.Generator().manual_seed(7)).argsort(dim=1)[:, :3]  # (B, K)
    by_hand = (kept.unsqueeze(-1) + torch.arange(4) * 6).reshape(2, -1).sort(dim=1).values
    assert torch.equal(ids_keep, by_hand) and mask.sum().item() == 2 * 12


@pytest.mark.parametrize(
    ("fields", "decoder", "old_keys"),
    [
        ({}, PixelDecoder, {"mask_token", "decoder_space_pos", "decoder_time_pos", "decoder_embed.weight",
                            "decoder.layers.0.linear1.weight", "decoder_norm.weight", "head.bias"}),
        ({"prediction": "camera-motion", "mask_type": "future", "mask_ratio": 0.25, "norm_pix_loss": False},
         CameraMotionDecoder, {"motion_head.linear.weight", "motion_head.linear.bias"}),
    ],
)  # fmt: skip
def test_decoder_is_chosen_once_and_older_checkpoint_keys_load(fields, decoder, old_keys):
    """The decoder of cfg.prediction is built once; a state dict with the keys saved before the decoders
    had their own modules (top-level decoder_*, mask_token, head, motion_head) loads unchanged."""
    cfg = dataclasses.replace(CFG, **fields)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model.decoder) is decoder
    old_names = {  # new key -> the key the same tensor had in older checkpoints
        "decoder.mask_token": "mask_token", "decoder.space_pos": "decoder_space_pos",
        "decoder.time_pos": "decoder_time_pos", "decoder.embed.": "decoder_embed.",
        "decoder.blocks.layers.": "decoder.layers.", "decoder.norm.": "decoder_norm.",
        "decoder.head.": "motion_head." if fields else "head.",
    }  # fmt: skip
    old_state = {}
    for key, value in model.state_dict().items():
        new = next((prefix for prefix in old_names if key.startswith(prefix)), None)
        old_state[key if new is None else old_names[new] + key[len(new) :]] = value + 1
    assert old_keys <= set(old_state)
    torch.manual_seed(1)
    fresh = build_model(cfg)
    fresh.load_state_dict(old_state)  # strict: every key found
    assert all(torch.equal(fresh.state_dict()[key], value + 1) for key, value in model.state_dict().items())


def test_optimizer_moments_follow_their_parameters_from_an_older_parameter_order():
    """A checkpoint of the order before the decoders had modules (mask token and decoder positions
    first) resumes with every parameter's Adam moments on that parameter."""
    cfg = dataclasses.replace(CFG, pos_embed="learned")
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(model, OptimConfig())
    ids_keep, mask = draw_mask(cfg, 2, torch.Generator().manual_seed(0))
    train_step(
        model, optimizer, torch.rand(2, 4, 3, 32, 48), ids_keep, mask, lr=1e-3, grad_clip=1.0, bf16=False
    )
    names = [name for name, _ in model.named_parameters()]
    moved = ("decoder.mask_token", "decoder.space_pos", "decoder.time_pos")
    saved_names = [*moved, *(name for name in names if name not in moved)]
    assert saved_names != names
    # number each group's parameters in the saved order, as the older optimizer did
    current, param_of = optimizer.state_dict(), dict(model.named_parameters())
    old_state, first, param_groups = {}, 0, []
    for group, saved_group in zip(optimizer.param_groups, current["param_groups"], strict=True):
        group_names = [name for name in names if any(param_of[name] is p for p in group["params"])]
        by_name = dict(zip(group_names, saved_group["params"], strict=True))
        in_saved_order = sorted(group_names, key=saved_names.index)
        for offset, name in enumerate(in_saved_order):
            old_state[first + offset] = current["state"][by_name[name]]
        param_groups.append({**saved_group, "params": list(range(first, first + len(group_names)))})
        first += len(group_names)
    torch.manual_seed(1)
    fresh = build_model(cfg)
    fresh_optimizer = build_optimizer(fresh, OptimConfig())
    load_optimizer_state(
        fresh_optimizer, fresh, {"state": old_state, "param_groups": param_groups}, saved_names
    )
    fresh_params = dict(fresh.named_parameters())
    for name in names:
        expected = optimizer.state[param_of[name]]["exp_avg_sq"]
        assert torch.equal(fresh_optimizer.state[fresh_params[name]]["exp_avg_sq"], expected), name


def test_token_layers_are_every_layer_of_one_forward_pass():
    """stem (no position codes), each block, and `last` = token_grid, all laid out as (B, T', R, C, d)."""
    torch.manual_seed(0)
    model = build_model(small_model()).eval()
    video = torch.rand(2, 4, 3, 32, 48)
    layers = model.token_layers(video)
    assert list(layers) == ["stem", "block1", "last"]
    assert all(value.shape == (2, 4, 2, 3, 32) for value in layers.values())
    assert torch.allclose(layers["last"], model.token_grid(video), atol=1e-5)
    patches = patchify(video, 16, 1)
    assert torch.allclose(layers["stem"].reshape(2, -1, 32), model.stem(patches), atol=1e-6)
    with torch.no_grad():
        last = model.encoder_norm(model.encoder.layers[1](layers["block1"].reshape(2, -1, 32)))
    assert torch.allclose(last.reshape(layers["last"].shape), layers["last"], atol=1e-5)
