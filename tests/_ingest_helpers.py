"""Shared helpers for the ingest and audit tests: a small synthetic dataroot, running the CLIs
in-process, reading and editing CAM_FRONT chains to plant defects, comparing output folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner, Result

from mvm.ingest.audit_cli import main as audit_main
from mvm.ingest.cli import ingest_main
from mvm.synth import generate

VERSION = "v1.0-mini"
SCENES = 3
FRAMES = 60
WIDTH = 320
SHARD_CLIPS = 5


def make_dataroot(out: Path) -> Path:
    return generate(out, version=VERSION, scenes=SCENES, frames_per_scene=FRAMES, width=WIDTH, seed=0)


def copy_dataroot(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def ingest(dataroot: Path, out: Path, *extra: str, scenes: str = "all") -> Result:
    """Run mvm-ingest in-process with the test defaults; returns click's Result (exit_code, output)."""
    args = ["--dataroot", str(dataroot), "--version", VERSION, "--scenes", scenes, "--out", str(out)]
    args += ["--shard-clips", str(SHARD_CLIPS), *extra]
    return CliRunner().invoke(ingest_main, args, catch_exceptions=False)


def audit(shard_dir: Path, *extra: str) -> Result:
    return CliRunner().invoke(audit_main, [str(shard_dir), *extra], catch_exceptions=False)


def output_files(out: Path) -> dict[str, bytes]:
    """The reproducible outputs of an ingest: shards and manifest, by name."""
    names = sorted(path.name for path in out.glob("shard-*.tar")) + ["manifest.json"]
    return {name: (out / name).read_bytes() for name in names}


def load_table(root: Path, table: str) -> list[dict]:
    return json.loads((root / VERSION / f"{table}.json").read_text())


def save_table(root: Path, table: str, records: list[dict]) -> None:
    (root / VERSION / f"{table}.json").write_text(json.dumps(records))


def cam_front_chains(root: Path) -> dict[str, list[dict]]:
    """scene name -> its CAM_FRONT sample_data records in time order (records of the loaded table)."""
    scenes = {scene["token"]: scene["name"] for scene in load_table(root, "scene")}
    sample_scene = {sample["token"]: scenes[sample["scene_token"]] for sample in load_table(root, "sample")}
    chains: dict[str, list[dict]] = {}
    for record in load_table(root, "sample_data"):
        if "/CAM_FRONT/" in record["filename"]:
            chains.setdefault(sample_scene[record["sample_token"]], []).append(record)
    return {name: sorted(records, key=lambda r: r["timestamp"]) for name, records in sorted(chains.items())}


def edit_cam_front(root: Path, edits: dict[str, dict]) -> None:
    """Overwrite fields of sample_data records by token: {token: {field: value}}."""
    records = load_table(root, "sample_data")
    for record in records:
        record.update(edits.get(record["token"], {}))
    save_table(root, "sample_data", records)
