"""mvm.video: H.264/MP4 round trip, fidelity, byte determinism, decoders and the I420 path."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import av
import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from mvm.video import (
    DECODERS,
    available_decoders,
    decode_clip,
    decode_i420,
    decoder_problem,
    decord_available,
    encode_clip,
    h264_samples,
    psnr,
    rgb_to_i420,
    rgb_to_yuv420,
)


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
        "import sys, numpy as np; from mvm.video import encode_clip; "
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
    with pytest.raises(ValueError, match="unknown video decoder 'opencv'"):
        decode_clip(b"", backend="opencv")


def test_yuv_conversion_known_values():
    colours = np.array([[[0, 0, 0], [255, 255, 255]], [[255, 0, 0], [0, 0, 255]]], np.uint8)
    y, u, v = rgb_to_yuv420(colours)
    assert y.tolist() == [[16, 235], [82, 41]]  # BT.601 limited range
    assert u.shape == v.shape == (1, 1)
    flat = np.full((2, 2, 3), 128, np.uint8)
    assert [plane.flatten()[0] for plane in rgb_to_yuv420(flat)] == [126, 128, 128]


def yuv420_int32(frame: np.ndarray) -> list[np.ndarray]:
    """The BT.601 limited-range formula in plain int32 (the definition rgb_to_yuv420 must match)."""
    rgb = frame.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    quad = lambda p: (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2] + 2) >> 2  # noqa: E731
    return [y, quad(u), quad(v)]


def test_uint16_conversion_equals_int32_formula_and_i420_layout():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    frame[:2, :2], frame[2:4, :2], frame[4:6, :2] = (255, 0, 0), (0, 0, 255), (255, 255, 255)
    planes = rgb_to_yuv420(frame)
    assert all(np.array_equal(ours, ref) for ours, ref in zip(planes, yuv420_int32(frame), strict=True))
    packed = rgb_to_i420(frame)
    assert packed.shape == (45, 40) and packed.dtype == np.uint8
    assert np.array_equal(packed.reshape(-1), np.concatenate([plane.reshape(-1) for plane in planes]))


def test_sample_table_reader_gives_the_container_decode(natural_clip):
    """decode_i420 reads the MP4 sample table itself; PyAV's demuxer must see the same planes."""
    for clip in (natural_clip, np.zeros((1, 30, 40, 3), np.uint8), natural_clip[:3, :30, :40]):
        mp4 = encode_clip(np.ascontiguousarray(clip))
        with av.open(io.BytesIO(mp4)) as container:
            reference = np.stack([frame.to_ndarray() for frame in container.decode(video=0)])
        assert np.array_equal(decode_i420(mp4), reference)
        assert len(h264_samples(mp4)[1]) == len(clip)
    with pytest.raises(ValueError, match="moov"):
        h264_samples(b"\x00\x00\x00\x08free")


def test_fast_decode_flags_reach_the_stream(natural_clip):
    fast, plain = encode_clip(natural_clip), encode_clip(natural_clip, fast_decode=False)
    # x264 writes its options into an SEI message of the stream.
    assert b"cabac=0" in fast and b"deblock=0:" in fast and b"weightp=0" in fast
    assert b"cabac=1" in plain and b"deblock=1:" in plain


def test_every_installed_decoder_agrees_and_missing_ones_fall_back(natural_clip):
    mp4 = encode_clip(natural_clip)
    reference = decode_clip(mp4, "pyav").astype(int)
    for name in available_decoders():
        assert np.abs(decode_clip(mp4, name).astype(int) - reference).max() <= 2, name
    missing = [name for name in DECODERS if decoder_problem(name) is not None]
    if not missing:
        pytest.skip("every decoder is installed here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert np.array_equal(decode_clip(mp4, missing[0]), reference)
    assert any("decoding with PyAV instead" in str(warning.message) for warning in caught)
