"""mvm.train.viz: a picture from a tiny model: size, honest reconstruction row, fixed clips, atomic write."""

from __future__ import annotations

import io

import numpy as np
import torch
from _train_helpers import small_model, write_shards
from PIL import Image

from mvm.shards import resolve_shards
from mvm.train.diagnostics import fixed_mask
from mvm.train.masks import draw_mask
from mvm.train.model import build_model
from mvm.train.tokens import unpatchify
from mvm.train.viz import (
    LABEL_WIDTH,
    MAX_FRAMES,
    MIN_FRAME_WIDTH,
    VIRIDIS_STOPS,
    _viridis,
    clips_to_video,
    pick_viz_clips,
    picture_rows,
    png_bytes,
    render,
)

torch.set_num_threads(1)

CFG = small_model(clip_len=8, depth=1, mask_type="tube")
PER_FRAME = 2 * 3


def _clips(tmp_path):
    urls = resolve_shards(str(write_shards(tmp_path / "val", [12, 12], clip_len=8, size=(32, 48))))
    return pick_viz_clips(urls, count=2, decoder="pyav"), urls


def test_pick_viz_clips_is_fixed_and_spans_scenes(tmp_path):
    first, urls = _clips(tmp_path)
    again = pick_viz_clips(urls, count=2, decoder="pyav")
    assert len(first) == 2 and all(a.shape == (8, 32, 48, 3) for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])


def test_reconstruction_row_keeps_visible_input_and_shows_prediction_elsewhere():
    video = torch.rand(2, 8, 3, 32, 48)
    ids_keep, mask = fixed_mask(CFG, 2, seed=0)
    pred = torch.randn(2, 8 * PER_FRAME, 16 * 16 * 3)
    rows = picture_rows(video, mask, pred, 16, norm_pix_loss=True)
    hidden = unpatchify(mask.unsqueeze(-1).expand(-1, -1, 768).float(), 8, (32, 48), 16).bool()
    assert torch.equal(rows["reconstruction"][~hidden], video[~hidden])
    assert torch.equal(rows["upper_bound"][~hidden], video[~hidden])
    assert not torch.equal(rows["reconstruction"][hidden], video[hidden])
    assert torch.equal(rows["masked"][hidden], torch.full_like(video[hidden], 0.5))
    error = rows["error"]  # NaN exactly on visible pixels, finite and >= 0 on masked ones
    assert torch.isnan(error[~hidden[:, :, :1]]).all() and (error[hidden[:, :, :1]] >= 0).all()


def test_raw_pixel_rows_on_two_frame_tokens_show_the_prediction_as_is():
    video = torch.rand(2, 8, 3, 32, 48)
    _, mask = draw_mask(
        small_model(clip_len=8, token_frames=2), 2, torch.Generator().manual_seed(0)
    )  # 4 steps of 2 frames
    pred = torch.rand(2, 4 * PER_FRAME, 2 * 768)
    rows = picture_rows(video, mask, pred, 16, norm_pix_loss=False, token_frames=2)
    assert "upper_bound" not in rows  # nothing to de-normalize: no upper-bound row
    hidden = unpatchify(mask.unsqueeze(-1).expand(-1, -1, 2 * 768).float(), 8, (32, 48), 16, 2).bool()
    expected = unpatchify(pred, 8, (32, 48), 16, 2)
    assert torch.equal(rows["reconstruction"][~hidden], video[~hidden])
    assert torch.equal(rows["reconstruction"][hidden], expected[hidden])
    # a hidden 2-frame token is greyed out in both of its frames in the masked-input row
    greyed = (rows["masked"] == 0.5).all(dim=2)  # (K, T, H, W)
    assert torch.equal(greyed[:, 0::2], greyed[:, 1::2]) and torch.equal(greyed, hidden[:, :, 0])


def test_large_pictures_fall_back_to_a_palette_under_the_size_limit():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8))
    data = png_bytes(noise, limit=500_000)
    assert len(data) < 500_000  # full-colour noise would take ~1.5 MB
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "P" and image.size == (700, 700)


def test_render_writes_a_readable_png_atomically(tmp_path):
    clips, _ = _clips(tmp_path)
    torch.manual_seed(0)
    model = build_model(CFG).train()
    ids_keep, mask = fixed_mask(CFG, len(clips), seed=0)
    out = tmp_path / "run" / "viz" / "step-000010.png"
    out.parent.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out.symlink_to(victim)  # a planted symlink is replaced, never written through
    render(model, clips_to_video(clips), ids_keep, mask, 10, out)
    assert model.training  # eval mode for the picture, training mode restored
    assert victim.read_text() == "keep me" and not out.is_symlink()
    assert [p.name for p in out.parent.iterdir()] == ["step-000010.png"]  # no temporaries left
    assert out.stat().st_size < 1_000_000
    with Image.open(out) as image:
        width, height = image.size
        assert image.format == "PNG"
    frames_drawn = min(MAX_FRAMES, CFG.clip_len)
    assert width >= LABEL_WIDTH + frames_drawn * MIN_FRAME_WIDTH
    assert height >= 2 * 6 * (MIN_FRAME_WIDTH * 32 // 48)  # 2 clips x 6 rows of upscaled frames


def test_error_colour_ramp_hits_its_stops_clips_and_paints_missing_values_white():
    """The built-in viridis ramp (no matplotlib): exact at its stops, clipped outside [0, 1],
    white for NaN, and brighter (sum of RGB) at the top of the scale than at the bottom."""
    stops = np.linspace(0.0, 1.0, len(VIRIDIS_STOPS))
    np.testing.assert_array_equal(_viridis(stops), VIRIDIS_STOPS.astype(np.uint8))
    np.testing.assert_array_equal(_viridis(np.array([-1.0, 2.0])), _viridis(np.array([0.0, 1.0])))
    assert _viridis(np.array([np.nan])).tolist() == [[255, 255, 255]]
    ramp = _viridis(np.linspace(0.0, 1.0, 50)).astype(int).sum(axis=1)
    assert ramp[-1] > ramp[0]
