"""Clip <-> H.264/MP4 bytes, deterministically.

`encode_clip` must give the same bytes for the same frames on any machine, CPU count or SIMD
level: shard sha256s are part of the contract (shards/README.md). Hence:
- RGB -> YUV 4:2:0 is done here in integer numpy (BT.601, limited range) instead of by swscale,
  whose SIMD paths may round differently on different CPUs;
- x264 runs single-threaded with `cpu-independent`, fixed GOP (one per clip, keyint = T), no
  B-frames, no scene-cut detection;
- the muxer runs `bitexact` (no `Lavf` encoder tag) and timestamps come from the frame index with a
  fixed nominal rate (real capture times live in the clip metadata, never in the container).
The bytes still depend on the x264/FFmpeg build, which is why `av` is pinned exactly.
"""

from __future__ import annotations

import functools
import io
import warnings
from fractions import Fraction

import av
import numpy as np

DEFAULT_CRF = 14
"""x264 constant rate factor; chosen for mean RGB PSNR >= 35 dB on natural frames (shards/README.md)."""
DEFAULT_PRESET = "faster"
"""x264 speed/size trade-off: ~1.6x the speed of `medium` at the same PSNR (shards/README.md)."""
NOMINAL_FPS = 12
"""Container frame rate (CAM_FRONT runs at ~12 Hz); frame times in the MP4 are index / NOMINAL_FPS."""


def rgb_to_yuv420(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 limited-range YUV 4:2:0 in integer arithmetic.

    frame: uint8 (H, W, 3) RGB, H and W even -> Y uint8 (H, W), U and V uint8 (H/2, W/2).
    Chroma is the rounded mean of each 2x2 block (centred siting, as JPEG and most decoders assume).
    """
    rgb = frame.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128

    def subsample(plane: np.ndarray) -> np.ndarray:
        blocks = plane[0::2, 0::2] + plane[1::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 1::2]
        return (blocks + 2) >> 2

    return (
        np.clip(y, 0, 255).astype(np.uint8),
        np.clip(subsample(u), 0, 255).astype(np.uint8),
        np.clip(subsample(v), 0, 255).astype(np.uint8),
    )


def _x264_params(clip_len: int) -> str:
    params = {
        "keyint": clip_len,
        "min-keyint": clip_len,
        "scenecut": 0,
        "bframes": 0,
        "threads": 1,
        "lookahead-threads": 1,
        "sliced-threads": 0,
        "cpu-independent": 1,
        "colorprim": "smpte170m",
        "transfer": "smpte170m",
        "colormatrix": "smpte170m",
    }
    return ":".join(f"{name}={value}" for name, value in params.items())


def encode_clip(frames: np.ndarray, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET) -> bytes:
    """Encode a clip as H.264 (yuv420p) in MP4; same frames and options -> same bytes.

    frames: uint8 (T, H, W, 3) RGB with H and W even -> MP4 bytes holding exactly T frames.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    clip_len, height, width, _ = frames.shape
    if clip_len < 1 or height % 2 or width % 2:
        raise ValueError(f"need T >= 1 and even H, W for yuv420p, got T={clip_len} H={height} W={width}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=NOMINAL_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # The muxer replaces stream.time_base when it writes the header; frames keep this one.
        frame_time_base = Fraction(1, NOMINAL_FPS)
        stream.time_base = frame_time_base
        stream.codec_context.color_range = av.video.reformatter.ColorRange.MPEG
        stream.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": _x264_params(clip_len)}
        for index, rgb in enumerate(frames):
            y, u, v = rgb_to_yuv420(rgb)
            frame = av.VideoFrame.from_ndarray(
                np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(height * 3 // 2, width),
                format="yuv420p",
            )
            frame.pts = index
            frame.time_base = frame_time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _decode_pyav(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def _decode_decord(mp4: bytes) -> np.ndarray:
    import decord

    reader = decord.VideoReader(io.BytesIO(mp4), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def decord_available() -> bool:
    """True when decord imports (it ships wheels for x86-64 Linux only)."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _warn_no_decord() -> None:
    warnings.warn(
        "decord is not installed (it ships wheels for x86-64 Linux only); decoding with PyAV instead",
        RuntimeWarning,
        stacklevel=3,
    )


def decode_clip(mp4: bytes, backend: str = "decord") -> np.ndarray:
    """Decode MP4 bytes to frames: uint8 (T, H, W, 3) RGB.

    backend: "decord" (fast, default) or "pyav". When decord is not installed (e.g. aarch64) the
    PyAV decoder is used instead; it is slower but decodes the same stream.
    """
    if backend == "decord":
        if decord_available():
            return _decode_decord(mp4)
        _warn_no_decord()
        backend = "pyav"
    if backend == "pyav":
        return _decode_pyav(mp4)
    raise ValueError(f"unknown video backend {backend!r}; use 'decord' or 'pyav'")


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over whole arrays of uint8 (any equal shapes); inf if equal."""
    error = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10.0 * np.log10(255.0**2 / error))
