"""The deterministic plan: which part stages which scenes, part ledgers, and finalize (shards + manifest).

Part I of N stages the scenes at positions i of the sorted scene list with i % N == I and then
writes its ledger `parts/part-IIII-of-NNNN.json`. Finalize packs every staged clip, in (scene,
clip) order, into shards of `shard_clips` clips, so the shards do not depend on N.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from importlib.metadata import version as package_version
from pathlib import Path

import av
import numpy as np
from PIL import features

from mvm.atomic import ensure_dir, write_atomic
from mvm.ingest.config import IngestConfig
from mvm.ingest.stage import staging_paths
from mvm.shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SHARD_PATTERN,
    ShardError,
    dumps,
    iter_samples,
    sample_members,
    sha256_bytes,
    sha256_file,
    shard_name,
    shard_path,
    tar_bytes,
    write_manifest,
)
from mvm.video import encode_clip

LEDGER_PATTERN = re.compile(r"part-(\d{4})-of-(\d{4})\.json")


class FinalizeError(RuntimeError):
    """Finalize cannot proceed: a part ledger is missing, disagrees, or a staged file fails to verify."""


def part_scenes(scenes: list[str], part: int, parts: int) -> list[str]:
    """The scenes part `part` of `parts` stages: every parts-th one of the sorted plan, from `part`."""
    return [name for index, name in enumerate(scenes) if index % parts == part]


def ledger_path(out: Path, part: int, parts: int) -> Path:
    return out / "parts" / f"part-{part:04d}-of-{parts:04d}.json"


@functools.cache
def software_versions() -> dict[str, str]:
    """Versions of everything that shapes the shard bytes (the encoder's own banner included)."""
    banner = encode_clip(np.zeros((1, 16, 16, 3), np.uint8))
    match = re.search(rb"x264 - core (\d+)( r\d+)?", banner)
    return {
        "av": av.__version__,
        "libavcodec": ".".join(str(part) for part in av.library_versions["libavcodec"]),
        "libx264": match.group(0).decode() if match else "unknown",
        "nuscenes-devkit": package_version("nuscenes-devkit"),
        "pillow": package_version("pillow"),
        "libjpeg-turbo": str(features.version("libjpeg_turbo")),
    }


def write_ledger(out: Path, config: IngestConfig, part: int, parts: int, sidecars: list[dict]) -> Path:
    """Record a finished part: its config, software and every staged scene's sidecar, sorted by name."""
    path = ledger_path(out, part, parts)
    ensure_dir(path.parent)
    ledger = {
        "config": config.to_json(),
        "config_digest": config.digest(),
        "part": part,
        "parts": parts,
        "software": software_versions(),
        "scenes": sorted(sidecars, key=lambda sidecar: sidecar["scene"]["name"]),
    }
    write_atomic(path, dumps(ledger))
    return path


def ledger_files(out: Path) -> list[tuple[int, int, Path]]:
    """(part, parts, path) of every ledger under DIR/parts, by name."""
    found = []
    for path in sorted((out / "parts").glob("part-*-of-*.json")):
        match = LEDGER_PATTERN.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return found


def discover_parts(out: Path, config: IngestConfig) -> int:
    """N of the part ledgers under DIR/parts: the one N whose ledgers of these options are all present.

    Ledgers written with other options are not counted (--overwrite removes them). Raises
    FinalizeError naming the missing parts when no N is complete.
    """
    found: dict[int, set[int]] = {}
    other = []
    for part, parts, path in ledger_files(out):
        if read_ledger(path)["config_digest"] == config.digest():
            found.setdefault(parts, set()).add(part)
        else:
            other.append(f"{part}/{parts}")
    ignored = f" (ledgers of other options not counted: {', '.join(other)})" if other else ""
    if not found:
        raise FinalizeError(
            f"no part ledgers of these options under {out / 'parts'}: run the --part I/N steps first{ignored}"
        )
    for parts in sorted(found):
        if found[parts] == set(range(parts)):
            return parts
    missing = "; ".join(
        f"of {parts}: {', '.join(f'{part}/{parts}' for part in sorted(set(range(parts)) - present))}"
        for parts, present in sorted(found.items())
    )
    raise FinalizeError(f"parts not finished (no ledger under {out / 'parts'}) {missing}{ignored}")


def remove_other_ledgers(out: Path, config: IngestConfig) -> list[Path]:
    """--overwrite: remove the part ledgers (and damaged ones) not written with these options.

    Safe while parts of this config run in parallel: their ledgers carry this config's digest.
    """
    removed = []
    for _part, _parts, path in ledger_files(out):
        try:
            stale = read_ledger(path)["config_digest"] != config.digest()
        except FinalizeError:
            stale = True
        if stale:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def read_ledger(path: Path) -> dict:
    """A part ledger as written by write_ledger; FinalizeError naming the file if it is not."""
    try:
        ledger = json.loads(path.read_text())
        fields_present = {"config", "config_digest", "software", "scenes"} <= set(ledger)
        if fields_present and all(
            {"scene", "sha256", "rejects", "depth_missing"} <= set(s) for s in ledger["scenes"]
        ):
            return ledger
        problem = "fields missing"
    except (OSError, ValueError, TypeError) as error:
        problem = str(error)
    raise FinalizeError(f"part ledger {path} is unreadable or damaged ({problem}); re-run its part")


def read_ledgers(out: Path, config: IngestConfig, scenes: list[str], parts: int) -> list[dict]:
    """Every part's sidecars, in plan order, after checking all ledgers exist and agree."""
    missing = [part for part in range(parts) if not ledger_path(out, part, parts).is_file()]
    if missing:
        names = ", ".join(f"{part}/{parts}" for part in missing)
        raise FinalizeError(f"parts not finished (no ledger under {out / 'parts'}): {names}")
    software = software_versions()
    by_scene: dict[str, dict] = {}
    for part in range(parts):
        ledger = read_ledger(ledger_path(out, part, parts))
        if ledger["config_digest"] != config.digest():
            raise FinalizeError(f"part {part}/{parts} ran with other options: {ledger['config']}")
        if ledger["software"] != software:
            raise FinalizeError(
                f"part {part}/{parts} ran with other software: {ledger['software']} != {software}"
            )
        for sidecar in ledger["scenes"]:
            by_scene[sidecar["scene"]["name"]] = sidecar
    if sorted(by_scene) != scenes:
        absent, extra = sorted(set(scenes) - set(by_scene)), sorted(set(by_scene) - set(scenes))
        raise FinalizeError(f"ledgers do not match the plan: missing {absent}, unexpected {extra}")
    return [by_scene[name] for name in scenes]


def no_clip_reasons(sidecars: list[dict]) -> str:
    """Why each scene gave no clip, from its rejects: one `scene: reason (detail)` line per scene."""
    lines = []
    for sidecar in sidecars:
        rejects = sidecar["rejects"]
        shown = ", ".join(f"{r['reason']} ({r['detail']})" for r in rejects[:2]) or "no reject recorded"
        more = f" and {len(rejects) - 2} more rejects" if len(rejects) > 2 else ""
        lines.append(f"{sidecar['scene']['name']}: {shown}{more}")
    return "".join(f"\n  {line}" for line in lines)


def finalize(out: Path, config: IngestConfig, scenes: list[str], parts: int) -> dict:
    """Pack staged clips into shards (keeping ones that already verify), write the manifest last.

    Returns the manifest. Removes the staging folder once the manifest is in place.
    """
    staging_dir = out / "staging"
    sidecars = read_ledgers(out, config, scenes, parts)
    tar_paths = []
    for sidecar in sidecars:
        tar_path, _ = staging_paths(staging_dir, sidecar["scene"]["name"])
        if not tar_path.is_file() or sha256_file(tar_path) != sidecar["sha256"]:
            raise FinalizeError(f"staged {tar_path} is missing or damaged; re-run its part")
        tar_paths.append(tar_path)

    shards: list[dict] = []
    batch: list[list[tuple[str, bytes]]] = []

    def flush() -> None:
        name = shard_name(len(shards))
        archive = tar_bytes(member for sample in batch for member in sample)
        digest = sha256_bytes(archive)
        path = out / name
        if path.is_symlink() or not (
            path.is_file() and path.stat().st_size == len(archive) and sha256_file(path) == digest
        ):
            write_atomic(path, archive)
        shards.append({"name": name, "clips": len(batch), "sha256": digest, "bytes": len(archive)})
        batch.clear()

    try:
        for tar_path in tar_paths:
            for sample in iter_samples(tar_path):
                batch.append(sample_members(sample))
                if len(batch) == config.shard_clips:
                    flush()
    except ShardError as error:
        raise FinalizeError(f"staged {error}; re-run its part") from None
    if batch:
        flush()
    if not shards:
        raise FinalizeError("no clip was written (no manifest); per scene:" + no_clip_reasons(sidecars))
    planned = {shard["name"] for shard in shards}
    for stale in out.iterdir():  # shards of an earlier, larger plan (the caller holds the folder)
        if SHARD_PATTERN.fullmatch(stale.name) and stale.name not in planned:
            stale.unlink()

    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": config.to_json(),
        "software": software_versions(),
        "shards": shards,
        "total_clips": sum(shard["clips"] for shard in shards),
        "scenes": [sidecar["scene"] for sidecar in sidecars],
        "rejects": [reject for sidecar in sidecars for reject in sidecar["rejects"]],
        "depth_missing": [missing for sidecar in sidecars for missing in sidecar["depth_missing"]],
    }
    write_manifest(out, manifest)
    shutil.rmtree(staging_dir, ignore_errors=True)
    return manifest


def verify_complete(out: Path, manifest: dict) -> list[str]:
    """Problems with the shards a manifest lists (missing, wrong size or sha256); empty if none."""
    problems = []
    for shard in manifest["shards"]:
        path = shard_path(out, shard["name"])
        if not path.is_file():
            problems.append(f"{shard['name']} is missing")
        elif path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
            problems.append(f"{shard['name']} does not match its sha256")
    return problems
