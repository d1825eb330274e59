"""Ingest speed in frames/s per core: what reading the JPEGs costs vs what the whole ingest costs.

Rates on the same CAM_FRONT frames:
- full-size decode: PIL decodes each 1600x900 JPEG completely (what a naive reader pays);
- reduced-size decode: libjpeg DCT scaling (`Image.draft`) decodes straight to the smallest
  power-of-two reduction not below the target size; no resize, so this is the floor of reading;
- the ingest's frame reader (`mvm.ingest.frames.load_frame`: DCT-scaled decode plus resize);
- whole ingest: `mvm-ingest --workers 1` (start-up, devkit load, validation, decode, resize,
  H.264 encode, tar writing, manifest), frames = every CAM_FRONT frame of the ingested scenes;
- the same ingest without start-up, timed by the staging and finalize lines of its ingest.log;
- a per-frame profile of the ingest's steps in this process (`stage_profile`): DCT-scaled decode,
  crop + resize, RGB -> YUV, H.264 encode, tar packing; each timed alone on the same frames.
Rates are per CPU-second (= per core) where the CPU time is known: the decode loops run in this
process on one thread and the ingest runs one worker, so CPU time is what a core delivers, unlike
wall time on a shared host. The log-timed row is wall time and is compared with wall rates.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.loader import Rate, time_items
from bench.workspace import ChildRun, run_child, venv_script


def cam_front_paths(dataroot: Path, version: str) -> list[Path]:
    """Every CAM_FRONT JPEG of a dataroot (keyframes and sweeps), via the devkit, in table order."""
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    return [
        Path(dataroot) / record["filename"] for record in nusc.sample_data if record["channel"] == "CAM_FRONT"
    ]


def decode_full(path: Path) -> np.ndarray:
    """Full-size decode: uint8 (900, 1600, 3) for a real CAM_FRONT frame."""
    return np.asarray(Image.open(path).convert("RGB"))


def decode_reduced(path: Path, size: tuple[int, int]) -> np.ndarray:
    """DCT-scaled decode to the smallest 1/2^k reduction at least `size` (H, W): uint8 (h, w, 3)."""
    image = Image.open(path)
    image.draft("RGB", (size[1], size[0]))
    return np.asarray(image.convert("RGB"))


def decode_rate(paths: list[Path], decode: Callable[[Path], np.ndarray], min_seconds: float) -> Rate:
    """Frames/s of `decode` over `paths` (restarted as needed), timed by time_items."""
    return time_items(lambda: (decode(path) for path in paths), min_seconds, min_items=len(paths))


def stage_profile(paths: list[Path], size: tuple[int, int], clip_len: int) -> list[dict]:
    """CPU ms per frame of each ingest step on `paths` (one thread), in the order the ingest runs them.

    Steps are timed apart on the same data: the decode is `decode_reduced`, the resize is the
    ingest's reader (`load_frame`) minus that decode, then `rgb_to_i420`, `encode_i420` over clips
    of `clip_len` frames and `tar_bytes` over the encoded clips.
    """
    import time

    from mvm.ingest.frames import load_frame
    from mvm.shards import tar_bytes
    from mvm.video import encode_i420, rgb_to_i420

    def cpu_ms(action: Callable[[], object], frames: int) -> float:
        started = time.process_time()
        action()
        return (time.process_time() - started) * 1000 / frames

    count = len(paths) // clip_len * clip_len
    paths = paths[:count]
    decode = cpu_ms(lambda: [decode_reduced(path, size) for path in paths], count)
    frames = []
    reader = cpu_ms(lambda: frames.extend(load_frame(path, size) for path in paths), count)
    planes = []
    convert = cpu_ms(lambda: planes.extend(rgb_to_i420(frame) for frame in frames), count)
    clips = [np.stack(planes[start : start + clip_len]) for start in range(0, count, clip_len)]
    videos = []
    encode = cpu_ms(lambda: videos.extend(encode_i420(clip) for clip in clips), count)
    pack = cpu_ms(lambda: tar_bytes((f"clip-{i:04d}.mp4", video) for i, video in enumerate(videos)), count)
    steps = [
        ("decode", "JPEG decode, DCT-scaled (reading)", decode),
        ("resize", "centre crop + bicubic resize", max(reader - decode, 0.0)),
        ("rgb_to_yuv", "RGB -> YUV 4:2:0 (integer BT.601)", convert),
        ("encode", "H.264 encode (default settings)", encode),
        ("tar", "tar packing", pack),
    ]
    total = sum(ms for _, _, ms in steps)
    return [
        {"step": step, "label": label, "ms_per_frame": ms, "share": ms / total} for step, label, ms in steps
    ]


@dataclass(frozen=True)
class IngestRun:
    """One measured `mvm-ingest` run and what it produced."""

    out: Path
    """The shard folder it wrote."""
    scenes: int
    """Scenes ingested."""
    frames: int
    """CAM_FRONT frames in those scenes (read and validated by the ingest)."""
    clips: int
    """Clips written."""
    shards: int
    """Shard files written."""
    child: ChildRun
    """Wall, CPU and peak memory of the process."""


def run_ingest(
    dataroot: Path,
    version: str,
    scenes: list[str],
    out: Path,
    size: tuple[int, int],
    shard_clips: int,
    log: Path,
) -> IngestRun:
    """Ingest `scenes` into a fresh `out` with one worker and measure it.

    `out` is emptied first: the ingest would otherwise resume (verify and keep) a finished run.
    """
    shutil.rmtree(out, ignore_errors=True)
    args = [
        venv_script("mvm-ingest"),
        "--dataroot", str(dataroot),
        "--version", version,
        "--scenes", ",".join(scenes),
        "--out", str(out),
        "--size", f"{size[0]}x{size[1]}",
        "--shard-clips", str(shard_clips),
        "--workers", "1",
    ]  # fmt: skip
    child = run_child(args, log).check()
    manifest = json.loads((out / "manifest.json").read_text())
    return IngestRun(
        out=out,
        scenes=len(manifest["scenes"]),
        frames=sum(scene["frames"] for scene in manifest["scenes"]),
        clips=manifest["total_clips"],
        shards=len(manifest["shards"]),
        child=child,
    )


WORK_LINE = re.compile(r"(?:part \S+ done|finalize):.* ([0-9.]+) s$")


def logged_work_seconds(log: Path) -> float | None:
    """Seconds the ingest itself logged for staging and finalizing (None when the log has none)."""
    if not log.exists():
        return None
    seconds = [
        float(match.group(1)) for line in log.read_text().splitlines() if (match := WORK_LINE.search(line))
    ]
    return sum(seconds) or None


def bench_ingest_speed(
    dataroot: Path,
    version: str,
    size: tuple[int, int],
    ingest: IngestRun,
    ingest_reader: Callable[[Path], np.ndarray],
    min_seconds: float,
    clip_len: int = 8,
    smaller: IngestRun | None = None,
) -> dict:
    """Frames/s per core of full-size decode, reduced-size decode, the ingest's frame reader
    (`ingest_reader(path) -> uint8 (H, W, 3)` at `size`: DCT-scaled decode plus resize) and the
    whole ingest run `ingest` (which must cover every frame of the dataroot), its marginal CPU cost
    per frame against a `smaller` run, and the same run timed by its own log: the last two without
    the fixed start-up (interpreter, imports, devkit table load) that dominates small runs and
    vanishes on a real dataset.

    Ratios are against the reduced-size decode (the issue's goal: ingest >= 0.6x of it).
    """
    paths = cam_front_paths(dataroot, version)
    full = decode_rate(paths, decode_full, min_seconds)
    reduced = decode_rate(paths, lambda path: decode_reduced(path, size), min_seconds)
    reader = decode_rate(paths, ingest_reader, min_seconds)
    whole_per_core = ingest.frames / max(ingest.child.cpu_s, 1e-9)
    rows = [
        {"stage": "full_decode", "label": "JPEG decode, full size", "frames_per_core_s": full.per_cpu_s,
         "frames_per_s": full.per_s},
        {"stage": "reduced_decode", "label": "JPEG decode, DCT-scaled (draft)",
         "frames_per_core_s": reduced.per_cpu_s, "frames_per_s": reduced.per_s},
        {"stage": "ingest_reader", "label": "ingest frame reader (draft + resize)",
         "frames_per_core_s": reader.per_cpu_s, "frames_per_s": reader.per_s},
        {"stage": "whole_ingest", "label": "mvm-ingest --workers 1", "frames_per_core_s": whole_per_core,
         "frames_per_s": ingest.frames / ingest.child.wall_s},
    ]  # fmt: skip
    if smaller is not None and smaller.frames < ingest.frames and smaller.child.cpu_s < ingest.child.cpu_s:
        # The fixed start-up cancels in the difference of two runs: CPU per frame of the steady state.
        marginal = (ingest.frames - smaller.frames) / (ingest.child.cpu_s - smaller.child.cpu_s)
        rows.append({"stage": "ingest_marginal", "label": f"mvm-ingest, marginal ({smaller.frames} -> "
                     f"{ingest.frames} frames, CPU)", "frames_per_core_s": marginal, "frames_per_s": None})  # fmt: skip
    in_process_s = logged_work_seconds(ingest.out / "ingest.log")
    if in_process_s:
        rows.append({"stage": "ingest_in_process", "label": "mvm-ingest without start-up (ingest.log, wall)",
                     "frames_per_core_s": None, "frames_per_s": ingest.frames / in_process_s})  # fmt: skip
    for row in rows:
        # Per-core rates compare with per-core; the log's wall rate with the decode's wall rate.
        if row["frames_per_core_s"] is not None:
            row["vs_reduced_decode"] = row["frames_per_core_s"] / reduced.per_cpu_s
        else:
            row["vs_reduced_decode"] = row["frames_per_s"] / reduced.per_s
    return {
        "source_size": list(decode_full(paths[0]).shape[:2]),
        "reduced_decode_size": list(decode_reduced(paths[0], size).shape[:2]),
        "target_size": list(size),
        "frames": ingest.frames,
        "ingest_wall_s": ingest.child.wall_s,
        "ingest_cpu_s": ingest.child.cpu_s,
        "ingest_logged_work_s": in_process_s,
        "rows": rows,
        "profile": stage_profile(paths[: max(clip_len, min(len(paths), 240))], size, clip_len),
    }
