"""RUN/viz/step-NNNNNN.png: what the model reconstructs, on the same validation clips all run long.

    clips = pick_viz_clips(resolve_shards("demo/shards/val"), count=2)        # once per run
    ids_keep, mask = fixed_mask(cfg, len(clips), seed)     # train/diagnostics.py
    render(model, clips_to_video(clips), ids_keep, mask, step, run / "viz" / "step-001000.png")

Per clip, at most 4 frames spread over the clip (nearest-neighbour upscaled to >= 256 px wide),
one labelled row each:
  original | masked input | reconstruction (MAE's drawing: prediction on the masked patches, the
  input on the visible ones) | prediction only (masked patches; visible ones white) | upper bound
  (like reconstruction, but de-normalized per patch with the hidden target's own mean/std) |
  error (per-patch MSE in the loss's target space on masked patches, with its colour scale).

With per-patch normalized targets the prediction has no brightness or contrast of its own. The
honest rows map it back with the mean and std of the clip's VISIBLE pixels (what the model was
given). The upper-bound row uses each hidden target patch's own statistics: information the
model never had, shown only so the gap between the two rows is visible.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mvm.atomic import write_atomic
from mvm.sampling import spread_subset
from mvm.tensors import frames_to_video
from mvm.train.data import ShardError, iter_clips
from mvm.train.masks import hidden_fraction
from mvm.train.model import normalize_patches
from mvm.train.tokens import patchify, unpatchify

MASKED_GREY = 0.5
"""Fill value of hidden patches in the 'masked input' row."""
VISIBLE_WHITE = 1.0
"""Fill value of visible patches in the 'prediction only' row (white, as in the error row)."""
MIN_FRAME_WIDTH = 256
"""Frames are upscaled by an integer factor to at least this many pixels wide."""
MAX_FRAMES = 4
"""Frames drawn per clip, spread over the clip."""
ERROR_MAX = {True: 2.0, False: 0.05}
"""Top of the error colour scale (MSE in target space) by norm_pix_loss: predicting the mean patch
scores ~1 with normalized targets; with raw pixels in [0, 1], 0.05 is an RMS error of 0.22."""
MAX_PNG_BYTES = 1_000_000
"""Pictures above this size as full-colour PNG are written with a 256-colour palette."""
LABEL_WIDTH = 200
ROW_LABELS = {
    "original": "original",
    "masked": "masked input",
    "reconstruction": "reconstruction\n(visible-pixel stats)",
    "prediction": "prediction only\n(visible: white)",
    "upper_bound": "UPPER BOUND:\nhidden target stats",
    "error": "error on masked\npatches (MSE)",
}


def pick_viz_clips(
    urls: list[str], count: int = 2, max_read: int = 64, decoder: str = "decord"
) -> list[np.ndarray]:
    """`count` clips (T, H, W, 3) uint8 from distinct scenes, the same every call for the same shards.

    Reads at most `max_read` clips in shard order, skipping shards that do not decode; scenes are taken in the order of the sha1 of
    their names (the online probe's held-out order, train/online_probe.py), one clip per scene
    from the middle of that scene's clips.
    """
    by_scene: dict[str, list[np.ndarray]] = {}
    read = 0
    for url in urls:
        if read >= max_read:
            break
        try:  # pictures are best effort: a shard that does not decode is skipped, training decides about it
            for _key, frames, meta in iter_clips([url], decoder):
                if read >= max_read:
                    break
                by_scene.setdefault(meta["scene"], []).append(frames)
                read += 1
        except ShardError:
            continue
    scenes = sorted(by_scene, key=lambda name: (hashlib.sha1(name.encode()).hexdigest(), name))
    picked = [by_scene[name][len(by_scene[name]) // 2] for name in scenes[:count]]
    if len(picked) < count:  # fewer scenes than clips wanted: fill from the first scene's clips
        spare = [clip for name in scenes for clip in by_scene[name] if not any(clip is p for p in picked)]
        picked += spare[: count - len(picked)]
    return picked


def clips_to_video(clips: list[np.ndarray]) -> torch.Tensor:
    """list of (T, H, W, 3) uint8 -> (K, T, 3, H, W) float in [0, 1]."""
    return frames_to_video(np.stack(clips))


def picture_rows(
    video: torch.Tensor,
    mask: torch.Tensor,
    pred: torch.Tensor,
    patch_size: int,
    norm_pix_loss: bool,
    token_frames: int = 1,
) -> dict[str, torch.Tensor]:
    """The rows of the picture as videos.

    video (K, T, 3, H, W) in [0, 1]; mask (K, L) bool, True = masked; pred (K, L, P) in target space,
    with L tokens of `token_frames` frames each.
    Returns name -> (K, T, 3, H, W) in [0, 1] for original, masked, reconstruction, prediction,
    upper_bound (normalized targets only: raw-pixel predictions need no de-normalizing), and
    "error" -> (K, T, 1, H, W): per-patch MSE in target space (NaN on visible patches).
    """
    frames, size = video.shape[1], tuple(video.shape[-2:])
    patches = patchify(video, patch_size, token_frames)  # (K, L, P)
    pred = pred.float()
    hidden = mask.unsqueeze(-1)  # (K, L, 1)
    rows = {}
    if norm_pix_loss:
        weight = (~hidden).float()
        count = weight.sum(dim=(1, 2), keepdim=True).clamp(min=1) * patches.shape[-1]
        mean = (patches * weight).sum(dim=(1, 2), keepdim=True) / count
        std = ((((patches - mean) ** 2) * weight).sum(dim=(1, 2), keepdim=True) / count).sqrt()
        honest = pred * std + mean
        own_mean, own_var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
        upper = pred * (own_var + 1e-6).sqrt() + own_mean
        rows["upper_bound"] = torch.where(hidden, upper.clamp(0, 1), patches)
        target = normalize_patches(patches)
    else:  # raw-pixel targets: the prediction is shown as it is, nothing to de-normalize
        honest, target = pred, patches
    grey = torch.full_like(patches, MASKED_GREY)
    error = ((pred - target) ** 2).mean(dim=-1, keepdim=True).expand_as(patches)
    error = torch.where(hidden, error, torch.full_like(error, float("nan")))
    rows |= {
        "original": patches,
        "masked": torch.where(hidden, grey, patches),
        "reconstruction": torch.where(hidden, honest.clamp(0, 1), patches),
        "prediction": torch.where(hidden, honest.clamp(0, 1), torch.full_like(patches, VISIBLE_WHITE)),
        "error": error,
    }
    out = {name: unpatchify(value, frames, size, patch_size, token_frames) for name, value in rows.items()}
    out["error"] = out["error"][:, :, :1]
    return out


VIRIDIS_STOPS = np.array(
    [[68, 1, 84], [71, 45, 123], [59, 82, 139], [44, 114, 142], [33, 145, 140], [40, 174, 128],
     [94, 201, 98], [173, 220, 48], [253, 231, 37]],
    dtype=np.float64,
)  # fmt: skip
"""matplotlib's viridis at 0, 1/8, ..., 1 (rounded to 8 bits); the error maps interpolate between them, so the
pictures need no matplotlib (a bare GPU image may lack it; loss.png then is skipped, these are not)."""


def _viridis(values: np.ndarray) -> np.ndarray:
    """values in [0, 1] (NaN = white) -> uint8 RGB (..., 3) on the viridis ramp."""
    clean = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(VIRIDIS_STOPS))
    rgb = np.stack([np.interp(clean, stops, VIRIDIS_STOPS[:, c]) for c in range(3)], axis=-1)
    rgb = rgb.round().astype(np.uint8)
    rgb[np.isnan(values)] = 255
    return rgb


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def compose(rows: dict[str, torch.Tensor], title: str, caption: str, error_max: float) -> Image.Image:
    """Lay the rows out: per clip one block of labelled rows, MAX_FRAMES columns, an error colour bar
    from 0 to `error_max`."""
    labels = {name: label for name, label in ROW_LABELS.items() if name in rows}
    if "upper_bound" not in rows:  # raw-pixel targets: the prediction is shown as it is
        labels["reconstruction"] = "reconstruction"
    clips, frames, _, height, width = rows["original"].shape
    scale = -(-MIN_FRAME_WIDTH // width)  # ceil: integer nearest-neighbour upscale factor
    columns = spread_subset(frames, MAX_FRAMES).tolist()
    cell_h, cell_w, gap = height * scale, width * scale, 4
    header, footer = 64, 56
    block_h = len(labels) * (cell_h + gap) + 24
    canvas_w = LABEL_WIDTH + len(columns) * (cell_w + gap)
    canvas = Image.new("RGB", (canvas_w, header + clips * block_h + footer), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill="black", font=_font(18))
    draw.text((6, 30), caption, fill="black", font=_font(13))
    for clip in range(clips):
        top = header + clip * block_h
        draw.text((6, top), f"clip {clip + 1}", fill="black", font=_font(15))
        for column, frame in enumerate(columns):
            draw.text(
                (LABEL_WIDTH + column * (cell_w + gap), top), f"frame {frame}", fill="black", font=_font(13)
            )
        for row_index, name in enumerate(labels):
            y = top + 20 + row_index * (cell_h + gap)
            draw.multiline_text((6, y + 4), labels[name], fill="black", font=_font(14))
            for column, frame in enumerate(columns):
                image = rows[name][clip, frame]
                if name == "error":
                    pixels = _viridis(
                        np.clip(image[0].numpy() / error_max, 0, 1)
                    )  # NaN (visible) stays white
                else:
                    pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                big = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
                canvas.paste(Image.fromarray(big), (LABEL_WIDTH + column * (cell_w + gap), y))
    # colour bar of the error rows
    bar_top, bar_w = header + clips * block_h + 8, min(400, canvas_w - LABEL_WIDTH - 60)
    ramp = _viridis(np.tile(np.linspace(0, 1, bar_w), (14, 1)))
    canvas.paste(Image.fromarray(ramp), (LABEL_WIDTH, bar_top))
    draw.text((6, bar_top), "error scale (MSE)", fill="black", font=_font(13))
    draw.text((LABEL_WIDTH, bar_top + 18), "0", fill="black", font=_font(13))
    draw.text((LABEL_WIDTH + bar_w - 40, bar_top + 18), f">= {error_max:g}", fill="black", font=_font(13))
    draw.text(
        (LABEL_WIDTH + bar_w + 10, bar_top), "white = visible patch (no error: not predicted)", fill="black",
        font=_font(13),
    )  # fmt: skip
    return canvas


def fixed_viz_inputs(config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(video (K, T, 3, H, W), ids_keep (K, L_vis), mask (K, L)): the clips and masks drawn all run long.

    Clips come from config.viz_shards, else config.probe_shards, else the training shards; masks
    are the run's fixed masks (train/diagnostics.py fixed_mask), so pictures compare over training.
    """
    from mvm.shards import resolve_shards
    from mvm.train.diagnostics import fixed_mask

    spec = config.viz_shards or config.probe_shards or config.data.shards
    clips = pick_viz_clips(resolve_shards(spec), config.viz_clips, decoder=config.data.decoder)
    if not clips:
        raise ShardError(f"no readable clips for the RUN/viz pictures in {spec}")
    ids_keep, mask = fixed_mask(config.model, len(clips), config.seed)
    return clips_to_video(clips), ids_keep, mask


@torch.no_grad()
def render(
    model: torch.nn.Module,
    video: torch.Tensor,
    ids_keep: torch.Tensor,
    mask: torch.Tensor,
    step: int,
    out: Path,
) -> Path:
    """Run `model` in eval mode on the fixed clips and write the picture atomically; returns `out`.

    video (K, T, 3, H, W) in [0, 1] (any device); ids_keep (K, L_vis), mask (K, L) the run's fixed masks.
    The model's train/eval mode is restored afterwards.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        pred = model(video.to(device), ids_keep.to(device), mask.to(device))["pred"]
    finally:
        model.train(was_training)
    rows = picture_rows(
        video.float().cpu(),
        mask.cpu(),
        pred.float().cpu(),
        cfg.patch_size,
        cfg.norm_pix_loss,
        cfg.token_frames,
    )
    masking = f"{cfg.mask_type} mask hiding {hidden_fraction(cfg):.0%} of the tokens."
    if cfg.norm_pix_loss:
        caption = (
            "targets normalized per patch; rows 3-4 de-normalized with the mean/std of the clip's VISIBLE pixels "
            "(what the model sees).\nRow 5 uses each hidden patch's own mean/std: an upper bound that uses "
            f"hidden information. Fixed validation clips and masks, eval mode; {masking}"
        )
    elif cfg.prediction == "camera-motion":
        caption = (
            "the hidden last frames predicted as the last visible frame moved by a camera motion read from the "
            f"visible tokens (train/motion.py);\nraw pixels, shown as is. Fixed validation clips, eval mode; {masking}"
        )
    elif cfg.prediction == "hybrid":
        caption = (
            "tube-masked patches reconstructed by the pixel decoder, the hidden last frames as the last visible "
            "frame moved by a camera motion (train/hybrid_decoder.py);\nraw pixels, shown as is. Fixed "
            f"validation clips and masks, eval mode; {masking}"
        )
    else:
        caption = f"raw pixel targets, prediction shown as is. Fixed validation clips and masks, eval mode; {masking}"
    image = compose(rows, f"step {step}: masked-video reconstruction", caption, ERROR_MAX[cfg.norm_pix_loss])
    write_atomic(out, png_bytes(image))
    return Path(out)


def png_bytes(image: Image.Image, limit: int = MAX_PNG_BYTES) -> bytes:
    """PNG of `image`; when the full-colour PNG exceeds `limit` bytes (large photographic frames),
    a 256-colour adaptive palette version instead (about 3x smaller, still readable)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    if buffer.tell() > limit:
        buffer = io.BytesIO()
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
