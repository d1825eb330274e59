"""ingest.video: H.264/MP4 round trip, fidelity and byte determinism."""

from __future__ import annotations

import subprocess
import sys

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from ingest.video import decode_clip, decord_available, encode_clip, psnr, rgb_to_yuv420


@pytest.fixture(scope="module")
def natural_clip() -> np.ndarray:
    """uint8 (8, 144, 256, 3): a slow pan over a real photograph (fine texture, saturated colour)."""
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    frames = []
    for index in range(8):
        box = (10 + 3 * index, 60 + 2 * index, 490 + 3 * index, 330 + 2 * index)
        frames.append(np.asarray(photo.crop(box).resize((256, 144), Image.BICUBIC)))
    return np.stack(frames)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_round_trip_shape_and_psnr(natural_clip, backend):
    if backend == "decord" and not decord_available():
        pytest.skip("decord not installed on this platform")
    decoded = decode_clip(encode_clip(natural_clip), backend=backend)
    assert decoded.shape == natural_clip.shape and decoded.dtype == np.uint8
    assert psnr(natural_clip, decoded) >= 35.0


def test_backends_agree(natural_clip):
    if not decord_available():
        pytest.skip("decord not installed on this platform")
    mp4 = encode_clip(natural_clip)
    difference = np.abs(decode_clip(mp4, "decord").astype(int) - decode_clip(mp4, "pyav").astype(int))
    assert difference.max() <= 2


def test_encoding_is_deterministic_within_and_across_processes(natural_clip, tmp_path):
    first = encode_clip(natural_clip)
    assert encode_clip(natural_clip) == first
    np.save(tmp_path / "clip.npy", natural_clip)
    script = (
        "import sys, numpy as np; from ingest.video import encode_clip; "
        f"sys.stdout.buffer.write(encode_clip(np.load({str(tmp_path / 'clip.npy')!r})))"
    )
    other = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True).stdout
    assert other == first
    assert b"Lavf" not in first  # no muxer version tag (bitexact)


def test_options_change_bytes(natural_clip):
    assert encode_clip(natural_clip, crf=30) != encode_clip(natural_clip)
    assert len(encode_clip(natural_clip, crf=30)) < len(encode_clip(natural_clip))


def test_lengths_and_odd_sizes():
    rng = np.random.default_rng(0)
    for clip_len in (1, 2, 16):
        clip = rng.integers(0, 256, (clip_len, 32, 48, 3), dtype=np.uint8)
        assert decode_clip(encode_clip(clip), "pyav").shape == clip.shape
    with pytest.raises(ValueError, match="even"):
        encode_clip(np.zeros((4, 33, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        encode_clip(np.zeros((4, 32, 48, 3), np.float32))
    with pytest.raises(ValueError, match="backend"):
        decode_clip(b"", backend="opencv")


def test_yuv_conversion_known_values():
    colours = np.array([[[0, 0, 0], [255, 255, 255]], [[255, 0, 0], [0, 0, 255]]], np.uint8)
    y, u, v = rgb_to_yuv420(colours)
    assert y.tolist() == [[16, 235], [82, 41]]  # BT.601 limited range
    assert u.shape == v.shape == (1, 1)
    flat = np.full((2, 2, 3), 128, np.uint8)
    assert [plane.flatten()[0] for plane in rgb_to_yuv420(flat)] == [126, 128, 128]
