"""One scene -> validated clips -> `staging/<scene>.tar` plus its sidecar `staging/<scene>.json`.

This is the unit of work of a part (and of a worker process). Its output depends only on the
SceneJob and the IngestConfig, never on which part, worker or attempt produced it, so the final
shards are the same for any --part split and any --workers.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mvm.atomic import write_atomic
from mvm.ego_motion import clip_motion
from mvm.ingest.chain import Reject, split_segments
from mvm.ingest.config import IngestConfig
from mvm.ingest.depth import LidarError, clip_depth
from mvm.ingest.frames import FrameError, load_frame
from mvm.ingest.tables import SceneJob
from mvm.sampling import clip_span, clip_starts, scene_rng
from mvm.shards import DEPTH_MEMBER, FORMAT_VERSION, clip_key, dumps, sha256_bytes, sha256_file, tar_bytes
from mvm.video import encode_i420, rgb_to_i420


def staging_paths(staging_dir: Path, scene: str) -> tuple[Path, Path]:
    """(clip tar, sidecar json) of a scene in the staging folder."""
    return staging_dir / f"{scene}.tar", staging_dir / f"{scene}.json"


def reject_record(scene: str, reject: Reject) -> dict:
    """A manifest reject entry: {scene, frame_index, timestamp, reason, detail}."""
    return {"scene": scene, **asdict(reject)}


def clip_metadata(job: SceneJob, config: IngestConfig, positions: list[int], depth: dict | None) -> dict:
    """The `json` member of one clip (fields: shards/README.md); `depth` from ingest/depth.py."""
    frames = [job.frames[position] for position in positions]
    timestamps = [frame["timestamp"] for frame in frames]
    translations = [frame["ego_translation"] for frame in frames]
    rotations = [frame["ego_rotation"] for frame in frames]
    speed_mps, yaw_rate_rps = clip_motion(timestamps, translations, rotations)
    return {
        "version": FORMAT_VERSION,
        "key": clip_key(job.name, positions[0]),
        "scene": job.name,
        "scene_token": job.token,
        "description": job.description,
        "location": job.location,
        "clip_len": config.clip_len,
        "stride": config.stride,
        "size": list(config.size),
        "frame_indices": positions,
        "sample_data_tokens": [frame["token"] for frame in frames],
        "timestamps": timestamps,
        "ego_translation": translations,
        "ego_rotation": rotations,
        "speed_mps": speed_mps,
        "yaw_rate_rps": yaw_rate_rps,
        "depth": depth,
    }


def depth_member(key: str, values: np.ndarray) -> tuple[str, bytes]:
    """The `<key>.depth.npy` tar member: float32 (H/p, W/p) as a .npy file."""
    buffer = io.BytesIO()
    np.save(buffer, values.astype(np.float32), allow_pickle=False)
    return f"{key}.{DEPTH_MEMBER}", buffer.getvalue()


def load_scene_frames(
    job: SceneJob, size: tuple[int, int]
) -> tuple[dict[int, np.ndarray], dict[int, tuple[str, str]]]:
    """Decode every frame of the chain, converted to YUV once (a frame may be in several clips):
    (position -> uint8 (3H/2, W) I420 planes, position -> (reason, detail))."""
    images, bad = {}, {}
    for position, frame in enumerate(job.frames):
        try:
            source_size = (frame["width"], frame["height"])
            images[position] = rgb_to_i420(
                load_frame(Path(job.dataroot) / frame["filename"], size, source_size)
            )
        except FrameError as error:
            bad[position] = (error.reason, frame["filename"])
    return images, bad


def stage_scene(job: SceneJob, config: IngestConfig, staging_dir: Path) -> dict:
    """Validate, sample and encode one scene; write its staging tar, then its sidecar (atomically).

    Returns the sidecar dict plus `seconds` and `frames_read` (timings, not stored).
    """
    started = time.perf_counter()
    images, bad = load_scene_frames(job, config.size)
    timestamps = [frame["timestamp"] for frame in job.frames]
    segments, rejects = split_segments(timestamps, job.breaks, bad, config.max_gap_ms * 1000)
    rejects = list(job.chain_rejects) + rejects
    rng = scene_rng(config.seed, job.name)
    span = clip_span(config.clip_len, config.stride)
    members: list[tuple[str, bytes]] = []
    clips, depth_missing = 0, []
    lidar_cache: dict = {}  # lidar token -> points or LidarError: each keyframe is read once per scene
    for segment in segments:
        if len(segment) < span:
            detail = f"segment of {len(segment)} frames; a clip spans {span}"
            rejects.append(Reject(segment[0], timestamps[segment[0]], "too_short", detail))
            continue
        for start in clip_starts(len(segment), config.clip_len, config.stride, config.hop, rng):
            positions = segment[start : start + span : config.stride]
            key = clip_key(job.name, positions[0])
            try:
                depth, values = clip_depth(
                    [job.frames[p] for p in positions],
                    job.lidar_keyframes,
                    job.cameras,
                    Path(job.dataroot),
                    config,
                    lidar_cache,
                )
            except LidarError as error:
                depth, values = None, None
                depth_missing.append(
                    {"scene": job.name, "key": key, "reason": error.reason, "detail": error.detail}
                )
            metadata = clip_metadata(job, config, positions, depth)
            video = encode_i420(
                np.stack([images[p] for p in positions]), crf=config.crf, preset=config.preset
            )
            members.append((f"{key}.json", json.dumps(metadata, sort_keys=True).encode()))
            members.append((f"{key}.mp4", video))
            if values is not None:
                members.append(depth_member(key, values))
            clips += 1
    if not segments:
        rejects.append(Reject(-1, timestamps[0] if timestamps else 0, "too_short", "no usable frame"))
    rejects.sort(key=lambda reject: (reject.frame_index, reject.reason))
    archive = tar_bytes(members)
    tar_path, sidecar_path = staging_paths(staging_dir, job.name)
    write_atomic(tar_path, archive)
    sidecar = {
        "config_digest": config.digest(),
        "scene": {
            "name": job.name,
            "token": job.token,
            "frames": len(job.frames),
            "segments": len(segments),
            "clips": clips,
            "depth_clips": clips - len(depth_missing),
        },
        "rejects": [reject_record(job.name, reject) for reject in rejects],
        "depth_missing": depth_missing,
        "sha256": sha256_bytes(archive),
        "bytes": len(archive),
    }
    write_atomic(sidecar_path, dumps(sidecar))
    return {**sidecar, "seconds": time.perf_counter() - started, "frames_read": len(job.frames)}


def verified_sidecar(config: IngestConfig, staging_dir: Path, scene: str) -> dict | None:
    """The sidecar of an already staged scene if it belongs to this config and its tar verifies."""
    tar_path, sidecar_path = staging_paths(staging_dir, scene)
    try:
        sidecar = json.loads(sidecar_path.read_text())
        if sidecar["config_digest"] != config.digest() or tar_path.stat().st_size != sidecar["bytes"]:
            return None
        return sidecar if sha256_file(tar_path) == sidecar["sha256"] else None
    except (OSError, ValueError, KeyError):
        return None
