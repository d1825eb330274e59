"""mvm-audit: passes on good output; fails, naming the failure, on damage and tampering."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _ingest_helpers import audit, ingest

from mvm.shards import iter_samples, sample_members, sha256_file, tar_bytes
from mvm.video import decode_clip, encode_clip


def copy_output(source, target):
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("audit"))
    return target


def failed_checks(report_dir) -> dict[str, list[str]]:
    report = json.loads((report_dir / "audit.json").read_text())
    return {check["name"]: check["failures"] for check in report["checks"] if not check["ok"]}


def rewrite_manifest_entry(out, shard_name):
    """Make the manifest agree with a modified shard, so only content checks can catch the change."""
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"]:
        if shard["name"] == shard_name:
            shard["sha256"], shard["bytes"] = sha256_file(out / shard_name), (out / shard_name).stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_good_output_passes_with_report(good, tmp_path):
    result = audit(good, "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "audit.json").read_text())
    assert report["ok"] and report["stats"]["clips_read"] == report["total_clips"] > 0
    assert report["stats"]["psnr_clips"] == 8 and report["stats"]["psnr_db_mean"] >= 35.0
    assert sum(report["stats"]["ego_motion_labels"].values()) == report["total_clips"]
    for plot in ("intervals_speed.png", "clips_per_scene.png", "rejects.png", "ego_motion.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 1000
    assert "**PASS**" in (tmp_path / "report" / "audit.md").read_text()


def test_flipped_byte_fails_sha256(good, tmp_path):
    out = copy_output(good, tmp_path / "out")
    shard = out / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    result = audit(out, "--psnr-clips", "0")
    assert result.exit_code == 1 and "sha256" in result.output
    assert failed_checks(out / "audit")["sha256"] == [
        "shard-000001.tar sha256 or size differs from the manifest"
    ]


@pytest.mark.slow
def test_deleted_shard_fails(good, tmp_path):
    out = copy_output(good, tmp_path / "out")
    (out / "shard-000002.tar").unlink()
    result = audit(out, "--psnr-clips", "0")
    assert result.exit_code == 1
    assert failed_checks(out / "audit")["shards_present"] == ["shard-000002.tar missing"]


@pytest.mark.slow
def test_tampered_clip_fails_even_with_a_matching_manifest(good, tmp_path):
    out = copy_output(good, tmp_path / "out")
    shard = out / "shard-000000.tar"
    samples = [(sample["key"], sample) for sample in iter_samples(shard)]
    key, first = samples[0]
    meta = json.loads(first["json"])
    meta["timestamps"][3] = meta["timestamps"][2]
    frames = decode_clip(first["mp4"])
    first = {"json": json.dumps(meta).encode(), "mp4": encode_clip(np.ascontiguousarray(frames[:7]))}
    duplicate_key, duplicate = samples[0][0], samples[1][1]
    members = [(f"{key}.{ext}", first[ext]) for ext in ("json", "mp4")]
    members += [(f"{k}.{ext}", s[ext]) for k, s in samples[2:] for ext in ("json", "mp4")]
    members += [(f"{duplicate_key}.{ext}", duplicate[ext]) for ext in ("json", "mp4")]
    shard.write_bytes(tar_bytes(members))
    rewrite_manifest_entry(out, shard.name)
    result = audit(out, "--psnr-clips", "0")
    assert result.exit_code == 1
    failures = failed_checks(out / "audit")
    assert "sha256" not in failures
    assert any("decodes to (7," in line for line in failures["clips"])
    assert any("key" in line for line in failures["keys_unique"])
    assert any("key = " in line for line in failures["clips"])  # the duplicate's json names another key


@pytest.mark.slow
def test_timestamp_tampering_fails_timing(good, tmp_path):
    out = copy_output(good, tmp_path / "out")
    shard = out / "shard-000000.tar"
    members = []
    for index, sample in enumerate(iter_samples(shard)):
        key = sample["key"]
        meta = json.loads(sample["json"])
        if index == 1:
            meta["timestamps"][5] += 400_000  # a gap hidden inside a clip
        members += [
            (name, json.dumps(meta).encode() if name == f"{key}.json" else data)
            for name, data in sample_members(sample)
        ]
    shard.write_bytes(tar_bytes(members))
    rewrite_manifest_entry(out, shard.name)
    assert audit(out, "--psnr-clips", "0").exit_code == 1
    assert list(failed_checks(out / "audit")) == ["timestamps"]


@pytest.mark.slow
def test_scene_leakage_against_other_set(dataroot, tmp_path):
    train, val, overlap = tmp_path / "train", tmp_path / "val", tmp_path / "overlap"
    assert ingest(dataroot, train, scenes="scene-0061,scene-0553").exit_code == 0
    assert ingest(dataroot, val, scenes="scene-0103").exit_code == 0
    assert ingest(dataroot, overlap, scenes="scene-0103,scene-0553").exit_code == 0
    assert audit(train, "--against", str(val), "--psnr-clips", "0").exit_code == 0
    result = audit(train, "--against", str(overlap), "--psnr-clips", "0")
    assert result.exit_code == 1
    assert failed_checks(train / "audit") == {"scene_leakage": ["scene scene-0553 is in both"]}


@pytest.mark.slow
def test_psnr_skipped_without_dataroot_and_missing_manifest(good, tmp_path):
    out = copy_output(good, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["dataroot"] = str(tmp_path / "elsewhere")
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = audit(out)
    assert result.exit_code == 0 and "not reachable" in result.output
    (out / "manifest.json").unlink()
    result = audit(out)
    assert result.exit_code == 1 and "manifest" in result.output
    assert audit(tmp_path / "absent").exit_code == 2
