"""Clip <-> H.264/MP4 bytes, deterministically; decoding to RGB or to I420 planes.

`encode_clip` must give the same bytes for the same frames on any machine, CPU count or SIMD
level: shard sha256s are part of the contract (shards/README.md). Hence:
- RGB -> YUV 4:2:0 is done here in integer numpy (BT.601, limited range) instead of by swscale,
  whose SIMD paths may round differently on different CPUs;
- x264 runs single-threaded with `cpu-independent`, fixed GOP (one per clip, keyint = T), no
  B-frames, no scene-cut detection;
- the muxer runs `bitexact` (no `Lavf` encoder tag) and timestamps come from the frame index with a
  fixed nominal rate (real capture times live in the clip metadata, never in the container).
The bytes still depend on the x264/FFmpeg build, which is why `av` is pinned exactly.
Decoding (shards/README.md, "Decoding"): `decode_i420` for the trainer, `decode_clip` (RGB, any of
DECODERS) for everything else; both read the MP4 sample table directly (`h264_samples`).
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np

DEFAULT_CRF = 14
"""x264 constant rate factor: the largest that keeps >= 35 dB (the audit's floor) on a natural
photograph; ~40 dB on the 1600x900 bench data (shards/README.md, "Codec settings")."""
DEFAULT_PRESET = "superfast"
"""x264 preset: ~1.2x the encode speed of
`veryfast` for ~12% more bytes and the same decode time (shards/README.md, "Codec settings")."""
FAST_DECODE_PARAMS = {"cabac": 0, "no-deblock": 1, "weightp": 0}
"""x264's `tune=fastdecode` without its B-frame part (there are none): CAVLC entropy coding, no
deblocking filter, no weighted prediction. Decoding is what the shards pay for on every epoch."""
LOOKAHEAD_PARAMS = {"mbtree": 0, "rc-lookahead": 0}
"""No macroblock-tree rate control and no lookahead: each frame is quantized from itself and the
frames before it, so the hidden last frames of a clip (future prediction) cannot change how its
visible frames are coded. Costs bytes, not PSNR (shards/README.md, "Codec settings")."""
NOMINAL_FPS = 12
"""Container frame rate (CAM_FRONT runs at ~12 Hz); frame times in the MP4 are index / NOMINAL_FPS."""
DECODERS = ("pyav", "decord", "torchcodec")
"""Decoders `decode_clip` knows. PyAV is always installed; decord and torchcodec are optional."""
DECODER_CHOICES = ("auto", "pyav-i420", "nvdec", *DECODERS)
"""The --decoder values of every stage (mvm-train, mvm-probe, the online probe): "auto" (see AUTO;
the trainer takes "pyav-i420" when CUDA is available), "pyav-i420" (PyAV; the trainer's workers
hand over I420 planes, train/data.py; RGB readers decode with PyAV), "nvdec" (the trainer decodes
I420 planes on the GPU, mvm/nvdec.py; elsewhere, or where it cannot run, PyAV) or one of DECODERS."""
AUTO = "pyav"
"""The decoder `"auto"` means: PyAV fed by h264_samples decodes fastest here (bench/results.md:
PyAV RGB 1.5x decord's clips per CPU-second; torchcodec's PyPI wheel did not load on this CPU-only
torch). It is also the only decoder with the I420 path and a wheel on every platform."""


def rgb_to_yuv420(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 limited-range YUV 4:2:0 in integer arithmetic.

    frame: uint8 (H, W, 3) RGB, H and W even -> Y uint8 (H, W), U and V uint8 (H/2, W/2).
    Chroma is the rounded mean of each 2x2 block (centred siting, as JPEG and most decoders assume).
    Computed in uint16 with wrap-around: every result lies in [0, 65535], so the modular sums are
    exact (U and V carry a +128*256 offset instead of a signed intermediate); half the memory
    traffic of int32.
    """
    r, g, b = (frame[..., channel].astype(np.uint16) for channel in range(3))
    with np.errstate(over="ignore"):
        y = (r * 66 + g * 129 + b * 25 + 128) >> 8  # 16 is added on the uint8 result below
        u = (b * 112 - r * 38 - g * 74 + (128 + 128 * 256)) >> 8
        v = (r * 112 - g * 94 - b * 18 + (128 + 128 * 256)) >> 8

    def subsample(plane: np.ndarray) -> np.ndarray:
        blocks = plane[0::2, 0::2] + plane[1::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 1::2]
        return ((blocks + 2) >> 2).astype(np.uint8)

    return (y + 16).astype(np.uint8), subsample(u), subsample(v)


def rgb_to_i420(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (3H/2, W): the Y, U, V planes of rgb_to_yuv420 one after the other
    (I420, as PyAV lays out yuv420p: the rows of width W are a view of the concatenated planes)."""
    height, width, _ = frame.shape
    return np.concatenate([plane.reshape(-1) for plane in rgb_to_yuv420(frame)]).reshape(
        height * 3 // 2, width
    )


def x264_params(clip_len: int, fast_decode: bool = True) -> str:
    """The `x264-params` string every clip of `clip_len` frames is encoded with (recorded in the
    shard manifest's config as `x264_params`)."""
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
        **LOOKAHEAD_PARAMS,
        **(FAST_DECODE_PARAMS if fast_decode else {}),
    }
    return ":".join(f"{name}={value}" for name, value in params.items())


def encode_i420(
    planes: np.ndarray, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET, fast_decode: bool = True
) -> bytes:
    """Encode a clip given as I420 planes as H.264 (yuv420p) in MP4; same input and options -> same bytes.

    planes: uint8 (T, 3H/2, W) as rgb_to_i420 makes them, H and W even -> MP4 bytes of T frames.
    """
    if planes.dtype != np.uint8 or planes.ndim != 3 or planes.shape[1] % 3:
        raise ValueError(f"planes must be uint8 (T, 3H/2, W), got {planes.dtype} {planes.shape}")
    clip_len, rows, width = planes.shape
    height = rows * 2 // 3
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
        stream.options = {
            "crf": str(crf),
            "preset": preset,
            "x264-params": x264_params(clip_len, fast_decode),
        }
        for index, plane in enumerate(planes):
            frame = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            frame.pts = index
            frame.time_base = frame_time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode_clip(
    frames: np.ndarray, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET, fast_decode: bool = True
) -> bytes:
    """Encode RGB frames: uint8 (T, H, W, 3), H and W even -> MP4 bytes (rgb_to_i420, then encode_i420)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    clip_len, height, width, _ = frames.shape
    if clip_len < 1 or height % 2 or width % 2:
        raise ValueError(f"need T >= 1 and even H, W for yuv420p, got T={clip_len} H={height} W={width}")
    return encode_i420(np.stack([rgb_to_i420(frame) for frame in frames]), crf, preset, fast_decode)


def _boxes(data: bytes, start: int, end: int):
    """(type, payload start, payload end) of the ISO-BMFF boxes in data[start:end]."""
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, start + 8)
            header = 16
        elif size == 0:
            size = end - start
        if size < header or start + size > end:
            raise ValueError(f"MP4 box {kind!r} at byte {start} overruns its parent")
        yield kind.decode("latin-1"), start + header, start + size
        start += size


def _child(data: bytes, start: int, end: int, path: str) -> tuple[int, int]:
    """Payload span of the box at slash-separated `path` below data[start:end]; ValueError if absent."""
    for name in path.split("/"):
        start, end = next(((s, e) for kind, s, e in _boxes(data, start, end) if kind == name), (None, None))
        if start is None:
            raise ValueError(f"MP4 has no {path} box (not an mvm shard clip)")
    return start, end


def h264_samples(mp4: bytes) -> tuple[bytes, list[bytes]]:
    """(avcC decoder configuration, the T H.264 access units in decode order) of a one-track MP4.

    Reads the sample tables (stsz, stsc, stco/co64) directly: a PyAV container open costs more than
    decoding the 8 frames of a small clip (~0.6 of ~1.4 ms, measured), and the shards' MP4s are one
    video track written by encode_i420.
    """
    stbl = _child(mp4, 0, len(mp4), "moov/trak/mdia/minf/stbl")
    stsd_start, stsd_end = _child(mp4, *stbl, "stsd")
    # stsd: version/flags, entry count, then the avc1 entry: 78 bytes of fields before its child boxes.
    avc1_start, avc1_end = _child(mp4, stsd_start + 8, stsd_end, "avc1")
    avcc_start, avcc_end = _child(mp4, avc1_start + 78, avc1_end, "avcC")
    stsz_start, _ = _child(mp4, *stbl, "stsz")
    fixed_size, count = struct.unpack_from(">II", mp4, stsz_start + 4)
    sizes = (
        [fixed_size] * count if fixed_size else list(struct.unpack_from(f">{count}I", mp4, stsz_start + 12))
    )
    stsc_start, _ = _child(mp4, *stbl, "stsc")
    (runs,) = struct.unpack_from(">I", mp4, stsc_start + 4)
    run_table = [struct.unpack_from(">II", mp4, stsc_start + 8 + 12 * i) for i in range(runs)]
    kinds = {kind: (s, e) for kind, s, e in _boxes(mp4, *stbl)}
    table = "stco" if "stco" in kinds else "co64"
    if table not in kinds:
        raise ValueError("MP4 has no chunk offset table (not an mvm shard clip)")
    (chunks,) = struct.unpack_from(">I", mp4, kinds[table][0] + 4)
    offsets = struct.unpack_from(f">{chunks}{'I' if table == 'stco' else 'Q'}", mp4, kinds[table][0] + 8)
    samples: list[bytes] = []
    for chunk, offset in enumerate(offsets, start=1):
        per_chunk = next(n for first, n in reversed(run_table) if first <= chunk)
        for _ in range(min(per_chunk, count - len(samples))):
            size = sizes[len(samples)]
            if offset + size > len(mp4):
                raise ValueError("MP4 sample table points past the end of the file")
            samples.append(mp4[offset : offset + size])
            offset += size
    if len(samples) != count:
        raise ValueError(f"MP4 sample table lists {count} samples, chunks hold {len(samples)}")
    return mp4[avcc_start:avcc_end], samples


def _pyav_frames(mp4: bytes) -> Iterator[av.VideoFrame]:
    """Decoded frames of a shard clip: its H.264 samples fed to a single-threaded PyAV decoder."""
    config, samples = h264_samples(mp4)
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = config
    decoder.thread_count = 1
    for sample in samples:
        yield from decoder.decode(av.Packet(sample))
    yield from decoder.decode(None)


def _decode_pyav(mp4: bytes) -> np.ndarray:
    return np.stack([frame.to_ndarray(format="rgb24") for frame in _pyav_frames(mp4)])


def decode_i420(mp4: bytes) -> np.ndarray:
    """Decode MP4 bytes without colour conversion: uint8 (T, 3H/2, W) I420 planes (Y, then U, then V).

    PyAV hands over the decoder's own planes; convert with mvm.tensors.i420_to_rgb on the batch.
    """
    frames = []
    for frame in _pyav_frames(mp4):
        if frame.format.name != "yuv420p":
            raise ValueError(f"stream is {frame.format.name}, the shards hold yuv420p")
        frames.append(frame.to_ndarray())
    return np.stack(frames)


def _decode_decord(mp4: bytes) -> np.ndarray:
    import decord

    reader = decord.VideoReader(io.BytesIO(mp4), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def _decode_torchcodec(mp4: bytes) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(mp4, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="approximate")
    return decoder.get_frames_in_range(0, decoder.metadata.num_frames).data.numpy()


_DECODE = {"pyav": _decode_pyav, "decord": _decode_decord, "torchcodec": _decode_torchcodec}


@functools.cache
def decoder_problem(name: str) -> str | None:
    """Why decoder `name` cannot run here (None when it can): not installed, or its libraries do not load.

    torchcodec needs the system's FFmpeg shared libraries (majors 4-9) and a wheel built for the
    installed torch; decord ships wheels for x86-64 Linux only.
    """
    if name not in DECODERS:
        raise ValueError(f"unknown video decoder {name!r}; use auto, {', '.join(DECODERS)}")
    if name == "pyav":
        return None
    try:
        if name == "decord":
            import decord  # noqa: F401
        else:
            from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as error:  # ImportError, or OSError/RuntimeError from a shared library
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def available_decoders() -> list[str]:
    """The decoders that run here, in DECODERS order."""
    return [name for name in DECODERS if decoder_problem(name) is None]


def decord_available() -> bool:
    """True when decord imports (it ships wheels for x86-64 Linux only)."""
    return decoder_problem("decord") is None


@functools.cache
def warn_fallback(name: str, problem: str) -> None:
    """One RuntimeWarning per process and reason: decoder `name` cannot run, PyAV decodes instead."""
    warnings.warn(
        f"video decoder {name} cannot run here ({problem}); decoding with PyAV instead",
        RuntimeWarning,
        stacklevel=4,
    )


def resolve_decoder(name: str) -> str:
    """The decoder that will run for `name`: "auto" -> AUTO; a named decoder that cannot run falls
    back to PyAV with one RuntimeWarning. ValueError if unknown."""
    if name == "auto":
        return AUTO
    problem = decoder_problem(name)
    if problem is None:
        return name
    warn_fallback(name, problem)
    return "pyav"


def decode_clip(mp4: bytes, backend: str = "auto") -> np.ndarray:
    """Decode MP4 bytes to frames: uint8 (T, H, W, 3) RGB.

    backend: "auto", "pyav", "decord" or "torchcodec" (resolve_decoder: a missing one falls back to PyAV).
    """
    return _DECODE[resolve_decoder(backend)](mp4)


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over whole arrays of uint8 (any equal shapes); inf if equal."""
    error = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10.0 * np.log10(255.0**2 / error))
