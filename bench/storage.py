"""Storage per clip (shards vs source JPEGs vs pre-resized JPEGs) and fidelity (PSNR) of the shards.

Bytes per clip: shards = shard file bytes (tar headers and metadata included) / clips; source =
the T full-size CAM_FRONT JPEGs a clip is made of; pre-resized = the same T frames in the (d)
folder of the loader bench. PSNR compares each decoded clip with its source frames resized by the
ingest's own resize (passed in, never re-implemented here), over all pixels of the clip.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.loader import ClipRef, resized_frame_path, shard_paths
from mvm.shards import iter_verified, listed_shards, read_manifest


def shard_bytes_per_clip(shard_dir: Path) -> float:
    """Total shard file bytes over total clips, from the manifest's shard list."""
    manifest = read_manifest(shard_dir)
    total = sum(path.stat().st_size for path in listed_shards(shard_dir, manifest))
    return total / manifest["total_clips"]


def frame_bytes_per_clip(clips: list[ClipRef], frame_path: Callable[[ClipRef, int], Path]) -> float:
    """Mean over clips of the summed file size of their T frames; frame_path(clip, t) -> file."""
    return statistics.fmean(
        sum(frame_path(clip, t).stat().st_size for t in range(len(clip.frame_indices))) for clip in clips
    )


def decoded_clips(shard_dir: Path) -> dict[str, np.ndarray]:
    """key -> decoded frames uint8 (T, H, W, 3) of every clip, via mvm.video.decode_clip."""
    from mvm.video import decode_clip

    clips = {}
    for path in shard_paths(shard_dir):
        for sample in iter_verified(path):
            clips[sample["key"]] = decode_clip(sample["mp4"])
    return clips


def mean_psnr(
    shard_dir: Path,
    clips: list[ClipRef],
    source_path: Callable[[str], Path],
    resize: Callable[[Path], np.ndarray],
    max_clips: int,
) -> float:
    """Mean over up to max_clips clips of the PSNR (dB) of the decoded clip vs its resized source frames."""
    from mvm.video import psnr

    decoded = decoded_clips(shard_dir)
    values = []
    for clip in clips[:max_clips]:
        reference = np.stack([resize(source_path(token)) for token in clip.sample_data_tokens])
        values.append(psnr(reference, decoded[clip.key]))
    return statistics.fmean(values)


def bench_storage(
    shard_dir: Path,
    clips: list[ClipRef],
    source_path: Callable[[str], Path],
    resized_dir: Path,
    resize: Callable[[Path], np.ndarray],
    psnr_clips: int,
) -> dict:
    """Bytes per clip of the three formats (ratios to the source JPEGs) and the shards' mean PSNR."""
    source = frame_bytes_per_clip(clips, lambda clip, t: source_path(clip.sample_data_tokens[t]))
    resized = frame_bytes_per_clip(
        clips, lambda clip, t: resized_frame_path(resized_dir, clip.scene, clip.frame_indices[t])
    )
    shards = shard_bytes_per_clip(shard_dir)
    rows = [
        {"format": "source_jpeg", "label": "source JPEGs (full size)", "bytes_per_clip": source},
        {"format": "resized_jpeg", "label": "pre-resized JPEG folder", "bytes_per_clip": resized},
        {"format": "shards", "label": "mvm shards (H.264 + json + tar)", "bytes_per_clip": shards},
    ]
    for row in rows:
        row["vs_source"] = row["bytes_per_clip"] / source
    return {
        "clips": len(clips),
        "rows": rows,
        "psnr_clips": min(psnr_clips, len(clips)),
        "mean_psnr_db": mean_psnr(shard_dir, clips, source_path, resize, psnr_clips),
    }
