"""Codec settings: encode and decode cost, size and fidelity of x264 presets, CRFs and fast-decode flags.

The shards are encoded once and decoded on every epoch, so the defaults (mvm/video.py) are the
settings with the cheapest decode that keeps PSNR >= 38 dB on this data. For each setting, the same
clips (the bench shards' clips: their source frames read by the ingest's own reader) are encoded in
memory, then every decoder path decodes them: RGB from each installed decoder, and PyAV's I420
planes without colour conversion (the trainer's path; the conversion runs on the batch, on the
training device). PSNR is over RGB pixels of the PyAV RGB decode vs the resized source frames.
Times are per clip on one thread of this process (CPU time, robust to other load on the host).
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.loader import ClipRef, time_items


@dataclass(frozen=True)
class CodecSetting:
    """One x264 configuration."""

    crf: int
    """Constant rate factor."""
    preset: str
    """x264 preset."""
    fast_decode: bool
    """CAVLC, no deblocking, no weighted prediction (mvm.video.FAST_DECODE_PARAMS)."""

    @property
    def label(self) -> str:
        """e.g. `crf 18, veryfast, fast-decode`."""
        return f"crf {self.crf}, {self.preset}" + (", fast-decode" if self.fast_decode else "")


OLD_DEFAULT = CodecSetting(14, "faster", False)
"""The ingest's settings before fast-decode (issue 13's starting point)."""
FULL_GRID = tuple(
    [OLD_DEFAULT, CodecSetting(14, "superfast", False)]
    + [
        CodecSetting(crf, preset, True)
        for crf in (14, 18, 22, 26)
        for preset in ("ultrafast", "superfast", "veryfast", "faster")
    ]
)
"""Settings of the full bench: the old default, the new one without fast-decode, and CRF x preset
with fast-decode. Every setting uses the clip-long macroblock-tree lookahead of mvm.video."""
QUICK_GRID = (OLD_DEFAULT, CodecSetting(14, "superfast", True))
"""Settings of the quick bench: the old default and the new one."""


def decoder_paths() -> dict[str, Callable[[bytes], np.ndarray]]:
    """name -> decode function for every decoder path that runs here (RGB per decoder, PyAV I420)."""
    from mvm.video import available_decoders, decode_clip, decode_i420

    paths = {f"{name}_rgb": functools.partial(decode_clip, backend=name) for name in available_decoders()}
    paths["pyav_i420"] = decode_i420
    return paths


def source_clips(
    clips: list[ClipRef], source_path: Callable[[str], Path], resize: Callable[[Path], np.ndarray]
) -> list[np.ndarray]:
    """uint8 (T, H, W, 3) reference frames of each clip, read as the ingest reads them."""
    return [np.stack([resize(source_path(token)) for token in clip.sample_data_tokens]) for clip in clips]


def measure_setting(
    setting: CodecSetting, references: list[np.ndarray], decoders: dict, min_seconds: float
) -> dict:
    """Encode ms/clip, decode ms/clip per decoder path, KiB/clip and mean PSNR of one setting."""
    from mvm.video import decode_clip, encode_clip, psnr

    def encode():
        return (encode_clip(clip, setting.crf, setting.preset, setting.fast_decode) for clip in references)

    encode_rate = time_items(encode, min_seconds, min_items=len(references), warmup=0)
    videos = list(encode())
    row = {
        "setting": setting.label,
        "crf": setting.crf,
        "preset": setting.preset,
        "fast_decode": setting.fast_decode,
        "encode_ms": 1000 / encode_rate.per_cpu_s,
        "kib_per_clip": statistics.fmean(len(video) for video in videos) / 1024,
        "psnr_db": statistics.fmean(
            psnr(reference, decode_clip(video, "pyav"))
            for reference, video in zip(references, videos, strict=True)
        ),
    }
    for name, decode in decoders.items():
        rate = time_items(lambda decode=decode: (decode(video) for video in videos), min_seconds, len(videos))
        row[f"decode_ms_{name}"] = 1000 / rate.per_cpu_s
    return row


def bench_codecs(
    clips: list[ClipRef],
    source_path: Callable[[str], Path],
    resize: Callable[[Path], np.ndarray],
    grid: tuple[CodecSetting, ...],
    max_clips: int,
    min_seconds: float,
) -> dict:
    """One row per setting in `grid`, on up to max_clips clips spread evenly over `clips`."""
    import torch

    from mvm.sampling import spread_subset
    from mvm.video import DEFAULT_CRF, DEFAULT_PRESET

    torch.set_num_threads(1)
    chosen = [clips[index] for index in spread_subset(len(clips), max_clips)]
    references = source_clips(chosen, source_path, resize)
    decoders = decoder_paths()
    rows = [measure_setting(setting, references, decoders, min_seconds) for setting in grid]
    return {
        "clips": len(chosen),
        "clip_shape": list(references[0].shape),
        "decoders": list(decoders),
        "default": CodecSetting(DEFAULT_CRF, DEFAULT_PRESET, True).label,
        "rows": rows,
    }
