"""Checks of a shard folder against its manifest and the format contract (shards/README.md).

`audit_shards` reads every shard once, decodes every clip, and returns a report: a list of named
checks (each ok or failed with the reasons) and the statistics the report plots. Nothing here
trusts the manifest's sha256 alone: decoding, shapes, timestamps, keys and counts are checked
from the samples themselves, so a tampered clip whose manifest entry was updated still fails.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvm.atomic import PARTIAL_SUFFIX
from mvm.ego_motion import ego_motion_label
from mvm.ingest.audit_depth import DepthStats, depth_problems
from mvm.ingest.frames import FrameError, load_frame
from mvm.sampling import spread_subset
from mvm.shards import (
    DEPTH_MEMBER,
    RESERVED,
    ShardError,
    iter_samples,
    read_manifest,
    sha256_file,
    shard_path,
)
from mvm.video import decode_clip, psnr

WRITER_CONFIG = ("dataroot", "version", "clip_len", "stride", "size", "max_gap_ms")
"""Config fields of the manifest that the audit checks clips against."""
DEPTH_CONFIG = ("depth_patch", "depth_max_offset_ms")
"""Config fields of a version-2 manifest that the depth check reads."""
MAX_LISTED = 20
"""Failures listed per check in the report (the count is always complete)."""
STRAY_SUBFOLDERS = ("staging", "parts", "audit")
"""Subfolders whose leftover temporaries the folder check names (mvm-ingest's, mvm-audit's default)."""


@dataclass
class Check:
    """One named check: ok when no failure was recorded."""

    name: str
    """Short identifier, e.g. `sha256`."""
    description: str
    """What the check verifies."""
    failures: list[str] = field(default_factory=list)
    """One line per violation."""
    note: str = ""
    """Extra context (e.g. why a check was skipped)."""

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "ok": self.ok,
            "failures": self.failures[:MAX_LISTED],
            "failure_count": len(self.failures),
            "note": self.note,
        }


@dataclass
class Stats:
    """What the audit measured, for the report and plots."""

    intervals_ms: list[float] = field(default_factory=list)
    clips_per_scene: Counter = field(default_factory=Counter)
    speeds_mps: list[float] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    clips_read: int = 0
    psnr_db: list[float] = field(default_factory=list)
    depth: DepthStats = field(default_factory=DepthStats)


def scene_records_ok(manifest: dict) -> bool:
    """Whether the manifest's `scenes` is a list of {name, token, clips} records."""
    scenes = manifest.get("scenes")
    return isinstance(scenes, list) and all(
        isinstance(scene, dict) and {"name", "token", "clips"} <= scene.keys() for scene in scenes
    )


def stray_files(shard_dir: Path, manifest: dict) -> list[str]:
    """Files in the shard folder that a reader could mistake for data: unlisted `shard-*` or
    `*.tar` files and leftover temporaries (`.*.partial`, also in the ingest's and the audit's
    subfolders: a killed run's), by name."""
    listed = {shard["name"] for shard in manifest["shards"]}
    stray = []
    for path in sorted(shard_dir.iterdir()):
        name = path.name
        if name in listed and path.is_file() and not path.is_symlink():
            continue
        if name in listed:
            stray.append(f"{name} is listed but is not a regular file (a symlink or a folder)")
        elif name.startswith("shard-") or name.endswith(".tar"):
            stray.append(f"{name} is not listed in the manifest")
        elif name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
            stray.append(f"{name} is a leftover temporary file")
    for folder in STRAY_SUBFOLDERS:
        if (shard_dir / folder).is_dir() and not (shard_dir / folder).is_symlink():
            stray += [
                f"{folder}/{path.name} is a leftover temporary file"
                for path in sorted((shard_dir / folder).iterdir())
                if path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)
            ]
    return stray


def check_clip(
    key: str, sample: dict, config: dict, version: int, where: str
) -> tuple[list[str], dict | None, np.ndarray | None]:
    """Contract violations of one sample of a format-`version` folder (depth aside: audit_depth),
    its metadata and its decoded frames (T, H, W, 3)."""
    problems = []
    members = sorted(set(sample) - set(RESERVED) - {DEPTH_MEMBER})
    if members != ["json", "mp4"]:
        problems.append(
            f"{where}: members {members} != ['json', 'mp4'] (and {DEPTH_MEMBER} where there is depth)"
        )
    try:
        meta = json.loads(sample["json"])
    except (KeyError, ValueError) as error:
        return [*problems, f"{where}: unreadable json ({error})"], None, None
    if not isinstance(meta, dict):
        return [*problems, f"{where}: json is not an object"], None, None
    for name, kind in (("scene", str), ("speed_mps", int | float), ("yaw_rate_rps", int | float)):
        if not isinstance(meta.get(name), kind):
            problems.append(f"{where}: {name} is missing or of the wrong type")
    clip_len, size = config["clip_len"], config["size"]
    expected = {
        "version": version,
        "key": key,
        "clip_len": clip_len,
        "size": size,
        "stride": config["stride"],
    }
    problems += [
        f"{where}: {name} = {meta.get(name)!r}, expected {value!r}"
        for name, value in expected.items()
        if meta.get(name) != value
    ]
    shapes = {
        "timestamps": (clip_len,),
        "sample_data_tokens": (clip_len,),
        "frame_indices": (clip_len,),
        "ego_translation": (clip_len, 3),
        "ego_rotation": (clip_len, 4),
    }
    for name, shape in shapes.items():
        value = meta.get(name)
        if np.shape(value) != shape:
            problems.append(f"{where}: {name} has shape {np.shape(value)}, expected {shape}")
        elif name != "sample_data_tokens" and np.asarray(value).dtype.kind not in "iuf":
            problems.append(f"{where}: {name} holds values that are not numbers")
    try:
        frames = decode_clip(sample["mp4"])
    except Exception as error:  # any decoder failure is a finding, not a crash
        return [*problems, f"{where}: mp4 does not decode ({type(error).__name__}: {error})"], meta, None
    if frames.shape != (clip_len, size[0], size[1], 3):
        problems.append(f"{where}: decodes to {frames.shape}, expected {(clip_len, size[0], size[1], 3)}")
    return problems, meta, frames


def timing_problems(meta: dict, config: dict, where: str) -> list[str]:
    """Strictly increasing timestamps, frame indices `stride` apart, every interval within the max gap."""
    timestamps, indices = (
        np.asarray(meta["timestamps"], np.int64),
        np.asarray(meta["frame_indices"], np.int64),
    )
    intervals = np.diff(timestamps)
    problems = []
    if np.any(intervals <= 0):
        problems.append(f"{where}: timestamps not strictly increasing")
    if np.any(np.diff(indices) != config["stride"]):
        problems.append(f"{where}: frame_indices {indices.tolist()} not {config['stride']} apart")
    # With stride s each clip interval spans s chain intervals, each at most the max gap.
    limit_us = config["max_gap_ms"] * 1000 * config["stride"]
    if np.any(intervals > limit_us):
        problems.append(f"{where}: interval {intervals.max() / 1000:g} ms > {limit_us / 1000:g} ms")
    return problems


def audit_shards(
    shard_dir: Path, against: Path | None = None, psnr_clips: int = 8, min_psnr: float = 35.0
) -> tuple[list[Check], Stats, dict | None]:
    """Run every check on `shard_dir`; returns (checks, stats, manifest or None)."""
    stats = Stats()
    manifest_check = Check("manifest", "manifest.json present, readable, this format; shard names valid")
    try:
        manifest = read_manifest(shard_dir)
    except ShardError as error:
        manifest_check.failures.append(str(error))
        return [manifest_check], stats, None
    config, version = manifest["config"], manifest["version"]
    missing = [name for name in WRITER_CONFIG + (DEPTH_CONFIG if version >= 2 else ()) if name not in config]
    missing += [] if scene_records_ok(manifest) else ["scenes [{name, token, clips}]"]
    rejects = manifest.get("rejects")
    if not isinstance(rejects, list) or not all(isinstance(r, dict) and "reason" in r for r in rejects):
        missing.append("rejects [{reason, ...}]")
    if missing:
        manifest_check.failures.append(f"manifest lacks what mvm-ingest writes: {', '.join(missing)}")
        return [manifest_check], stats, None
    folder = Check(
        "folder", "no unlisted shard-* or *.tar file, no leftover temporary in the folder or its subfolders"
    )
    folder.failures += stray_files(shard_dir, manifest)
    present = Check("shards_present", "every shard the manifest lists exists")
    hashes = Check("sha256", "every shard's size and sha256 match the manifest")
    clips = Check("clips", "every sample has json+mp4 and decodes to exactly T frames of the declared size")
    timing = Check("timestamps", "timestamps strictly increasing, every interval within the max gap")
    keys = Check("keys_unique", "clip keys are unique across all shards")
    counts = Check("counts", "at least one clip; clips per shard, per scene and in total match the manifest")
    depth = Check(
        "depth",
        "depth targets as the format says: field and member together, (H/p, W/p) float32, values NaN or > 0",
    )
    if manifest["total_clips"] == 0:
        counts.failures.append("the manifest lists 0 clips (an empty ingest is not a shard set)")
    seen_keys: set[str] = set()
    for shard in manifest["shards"]:
        path = shard_path(shard_dir, shard["name"])
        if not path.is_file():
            present.failures.append(f"{shard['name']} missing")
            continue
        if path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
            hashes.failures.append(f"{shard['name']} sha256 or size differs from the manifest")
        shard_clips = 0
        try:
            for sample in iter_samples(path):
                key = sample["key"]
                where = f"{shard['name']}:{key}"
                shard_clips += 1
                if key in seen_keys:
                    keys.failures.append(f"{where}: duplicate key")
                seen_keys.add(key)
                problems, meta, _frames = check_clip(key, sample, config, version, where)
                clips.failures += problems
                if meta is None or problems:
                    continue
                problems, values = depth_problems(sample, meta, config, version, where)
                depth.failures += problems
                if problems:
                    continue
                stats.depth.add(values)
                timing.failures += timing_problems(meta, config, where)
                stats.clips_read += 1
                stats.clips_per_scene[meta["scene"]] += 1
                stats.intervals_ms += (np.diff(meta["timestamps"]) / 1000).tolist()
                stats.speeds_mps.append(meta["speed_mps"])
                stats.labels[ego_motion_label(meta["speed_mps"], meta["yaw_rate_rps"])] += 1
        except ShardError as error:
            clips.failures.append(str(error))
        if shard_clips != shard["clips"]:
            counts.failures.append(f"{shard['name']}: {shard_clips} clips, manifest says {shard['clips']}")
    if present.ok and hashes.ok and clips.ok:
        for scene in manifest["scenes"]:
            if stats.clips_per_scene[scene["name"]] != scene["clips"]:
                counts.failures.append(
                    f"{scene['name']}: {stats.clips_per_scene[scene['name']]} clips read, manifest says {scene['clips']}"
                )
    missing_depth = len(manifest.get("depth_missing", []))
    if (
        version >= 2
        and present.ok
        and hashes.ok
        and clips.ok
        and depth.ok
        and missing_depth != stats.depth.clips_without
    ):
        depth.failures.append(
            f"{stats.depth.clips_without} clips without depth, the manifest's depth_missing lists {missing_depth}"
        )
    checks = [manifest_check, folder, present, hashes, clips, timing, keys, counts, depth]
    if against is not None:
        checks.append(leakage_check(manifest, against))
    checks.append(psnr_check(manifest, shard_dir, psnr_clips, min_psnr, stats))
    return checks, stats, manifest


def leakage_check(manifest: dict, against: Path) -> Check:
    """No scene appears in both shard sets (e.g. train and val)."""
    check = Check("scene_leakage", f"no scene shared with {against}")
    try:
        other = read_manifest(against)
    except ShardError as error:
        check.failures.append(str(error))
        return check
    if not scene_records_ok(other):
        check.failures.append(f"{against}: the manifest's scenes are not {{name, token, clips}} records")
        return check
    shared = sorted({s["name"] for s in manifest["scenes"]} & {s["name"] for s in other["scenes"]})
    shared_tokens = sorted({s["token"] for s in manifest["scenes"]} & {s["token"] for s in other["scenes"]})
    check.failures += [f"scene {name} is in both" for name in shared]
    if shared_tokens and not shared:
        check.failures.append(f"{len(shared_tokens)} scene tokens shared under different names")
    return check


def psnr_check(manifest: dict, shard_dir: Path, psnr_clips: int, min_psnr: float, stats: Stats) -> Check:
    """Mean PSNR of evenly spaced clips against their source frames read as the ingest reads them."""
    check = Check("psnr", f"mean PSNR of {psnr_clips} clips vs resized source frames >= {min_psnr:g} dB")
    config = manifest["config"]
    dataroot = Path(config["dataroot"])
    if psnr_clips <= 0 or not (dataroot / config["version"]).is_dir():
        check.note = "skipped: " + (
            "--psnr-clips 0" if psnr_clips <= 0 else f"dataroot {dataroot} not reachable"
        )
        return check
    from mvm.ingest.tables import open_nuscenes  # the devkit load is only needed here

    nusc = open_nuscenes(dataroot, config["version"])
    total = manifest["total_clips"]
    wanted = spread_subset(total, psnr_clips).tolist()
    index = 0
    for shard in manifest["shards"]:
        if not wanted:
            break
        path = shard_path(shard_dir, shard["name"])
        if index + shard["clips"] <= wanted[0] or not path.is_file():
            index += shard["clips"]
            continue
        try:
            for sample in iter_samples(path):
                if wanted and index == wanted[0]:
                    wanted.pop(0)
                    meta = json.loads(sample["json"])
                    sources = [
                        load_frame(dataroot / nusc.get("sample_data", t)["filename"], tuple(config["size"]))
                        for t in meta["sample_data_tokens"]
                    ]
                    stats.psnr_db.append(psnr(np.stack(sources), decode_clip(sample["mp4"])))
                index += 1
        except (ShardError, OSError, ValueError, KeyError, FrameError) as error:
            check.failures.append(f"{shard['name']}: cannot compare ({error})")
    if stats.psnr_db:
        mean = float(np.mean(stats.psnr_db))
        check.note = f"mean {mean:.2f} dB over {len(stats.psnr_db)} clips (min {min(stats.psnr_db):.2f})"
        if mean < min_psnr:
            check.failures.append(f"mean PSNR {mean:.2f} dB < {min_psnr:g} dB")
    return check
