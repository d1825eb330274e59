"""mvm-ingest end to end on a small synthetic dataroot: determinism for any part split, resume,
refusals, planted defects, and that plain webdataset and tar read the shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import webdataset
from _ingest_helpers import (
    SHARD_CLIPS,
    cam_front_chains,
    copy_dataroot,
    edit_cam_front,
    ingest,
    output_files,
)


def test_output_layout_and_manifest(good):
    manifest = json.loads((good / "manifest.json").read_text())
    names = [shard["name"] for shard in manifest["shards"]]
    assert names == sorted(path.name for path in good.glob("shard-*.tar"))
    assert manifest["total_clips"] == sum(shard["clips"] for shard in manifest["shards"]) > SHARD_CLIPS
    assert all(shard["clips"] == SHARD_CLIPS for shard in manifest["shards"][:-1])
    assert manifest["config"]["size"] == [144, 256] and manifest["config"]["hop"] == 8
    assert {"av", "nuscenes-devkit", "libx264"} <= set(manifest["software"])
    assert not (good / "staging").exists()
    assert (good / "ingest.log").read_text().count(" s\n") >= 1


def test_plain_webdataset_and_tar_read_the_shards(good):
    urls = sorted(str(path) for path in good.glob("shard-*.tar"))
    samples = list(webdataset.WebDataset(urls, shardshuffle=False))
    manifest = json.loads((good / "manifest.json").read_text())
    assert len(samples) == manifest["total_clips"]
    keys = [sample["__key__"] for sample in samples]
    assert len(set(keys)) == len(keys) and all("." not in key for key in keys)
    meta = json.loads(samples[0]["json"])
    assert meta["key"] == keys[0] and len(meta["timestamps"]) == meta["clip_len"] == 8
    assert len(meta["ego_rotation"]) == 8 and len(meta["ego_rotation"][0]) == 4
    listing = subprocess.run(
        ["tar", "-tf", urls[0]], check=True, capture_output=True, text=True
    ).stdout.split()
    assert listing[:2] == [f"{keys[0]}.json", f"{keys[0]}.mp4"]


@pytest.mark.slow
def test_same_bytes_across_runs_parts_and_workers(dataroot, good, tmp_path):
    again = tmp_path / "again"
    assert ingest(dataroot, again).exit_code == 0
    assert output_files(again) == output_files(good)
    parted = tmp_path / "parted"
    for part in ("0/3", "1/3", "2/3"):
        extra = ("--workers", "2") if part == "1/3" else ()
        result = ingest(dataroot, parted, "--part", part, *extra)
        assert result.exit_code == 0, result.output
        assert not (parted / "manifest.json").exists()
    assert sorted(p.name for p in (parted / "parts").iterdir()) == [
        f"part-000{i}-of-0003.json" for i in range(3)
    ]
    result = ingest(dataroot, parted, "--finalize")
    assert result.exit_code == 0, result.output
    assert output_files(parted) == output_files(good)


def test_finalize_names_missing_parts(dataroot, tmp_path):
    out = tmp_path / "out"
    assert ingest(dataroot, out, "--part", "0/3").exit_code == 0
    assert ingest(dataroot, out, "--part", "2/3").exit_code == 0
    result = ingest(dataroot, out, "--finalize")
    assert result.exit_code == 1 and "1/3" in result.output
    assert "0/3" not in result.output and "2/3" not in result.output
    assert not (out / "manifest.json").exists() and not list(out.glob("shard-*.tar"))


@pytest.mark.slow
def test_resume_after_kill_gives_same_bytes(dataroot, good, tmp_path):
    out = tmp_path / "out"
    for part in ("0/2", "1/2"):
        assert ingest(dataroot, out, "--part", part).exit_code == 0
    staged = sorted((out / "staging").glob("*.tar"))
    assert len(staged) == 3
    # A kill mid-write: a truncated staging tar, a scene without its sidecar, a half shard.
    staged[0].write_bytes(staged[0].read_bytes()[:1000])
    staged[1].with_suffix(".json").unlink()
    (out / "shard-000000.tar").write_bytes(b"partial")
    result = ingest(dataroot, out, "--part", "0/2")
    assert result.exit_code == 0 and "1 reused" in (out / "ingest.log").read_text().splitlines()[-1]
    assert ingest(dataroot, out, "--part", "1/2").exit_code == 0
    assert ingest(dataroot, out, "--finalize").exit_code == 0
    assert output_files(out) == output_files(good)
    # Killed between the shards and the manifest: the next run keeps verified shards, same bytes.
    (out / "manifest.json").unlink()
    os.utime(out / "shard-000001.tar", ns=(0, 0))
    (out / "shard-000002.tar").write_bytes(b"x" * 100)
    result = ingest(dataroot, out)
    assert result.exit_code == 0
    assert output_files(out) == output_files(good)
    assert (out / "shard-000001.tar").stat().st_mtime_ns == 0


def test_existing_output_same_or_different_options(dataroot, good, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(good, out)
    result = ingest(dataroot, out)
    assert result.exit_code == 0 and "nothing to do" in result.output
    before = output_files(out)
    result = ingest(dataroot, out, "--clip-len", "4")
    assert result.exit_code == 2 and "--overwrite" in result.output and "clip_len" in result.output
    assert output_files(out) == before
    result = ingest(dataroot, out, "--clip-len", "4", "--overwrite")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["clip_len"] == 4 and manifest["config"]["hop"] == 4
    (out / manifest["shards"][0]["name"]).write_bytes(b"damaged")
    result = ingest(dataroot, out, "--clip-len", "4")
    assert result.exit_code == 1 and "damaged" in result.output


@pytest.mark.parametrize(
    ("change", "exit_code", "message"),
    [
        ("no_dataroot", 2, "does not exist"),
        ("no_version", 2, "version folder"),
        ("unknown_scene", 2, "close matches"),
        ("odd_size", 2, "even"),
        ("part_and_finalize", 2, "separate steps"),
    ],
)
def test_usage_errors(dataroot, tmp_path, change, exit_code, message):
    out = tmp_path / "out"
    extra, scenes, root = [], "all", dataroot
    if change == "no_dataroot":
        root = tmp_path / "nowhere"
    elif change == "no_version":
        root = copy_dataroot(dataroot, tmp_path / "root")
        shutil.rmtree(root / "v1.0-mini")
    elif change == "unknown_scene":
        scenes = "scene-0062"
    elif change == "odd_size":
        extra = ["--size", "143x256"]
    else:
        extra = ["--part", "0/2", "--finalize"]
    result = ingest(root, out, *extra, scenes=scenes)
    assert result.exit_code == exit_code and message in result.output, result.output
    assert not list(out.glob("shard-*.tar")) and not (out / "manifest.json").exists()


def test_size_not_multiple_of_16_warns_and_works(dataroot, tmp_path):
    # The depth patch must tile the frame: 6 divides 72 and 126 (the default 16 is a usage error).
    result = ingest(dataroot, tmp_path / "out", "--size", "72x126", "--depth-patch", "6", scenes="scene-0061")
    assert result.exit_code == 0, result.output
    assert "width 126" in result.output and "16" in result.output and "patch" in result.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]["size"] == [72, 126]


@pytest.fixture(scope="module")
def planted(dataroot, tmp_path_factory):
    """A copy of the dataroot with one defect of each kind, ingested; returns (chains, manifest, clips)."""
    root = copy_dataroot(dataroot, tmp_path_factory.mktemp("planted") / "nuscenes")
    chains = cam_front_chains(root)
    first, second, third = (chains[name] for name in sorted(chains))
    (root / first[20]["filename"]).unlink()
    corrupt = root / first[40]["filename"]
    corrupt.write_bytes(corrupt.read_bytes()[:600])
    edits = {
        second[15]["token"]: {"timestamp": second[14]["timestamp"]},
        second[30]["token"]: {"timestamp": second[25]["timestamp"] + 1},
        second[45]["token"]: {"next": "0" * 32},
    }
    edit_cam_front(root, edits)
    for record in third[::5]:  # never 8 good frames in a row: the scene is too short everywhere
        (root / record["filename"]).unlink()
    out = tmp_path_factory.mktemp("planted-out") / "shards"
    result = ingest(root, out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    clips = [
        json.loads(s["json"])
        for s in webdataset.WebDataset(sorted(map(str, out.glob("*.tar"))), shardshuffle=False)
    ]
    return (first, second, third), manifest, clips, out


def test_planted_defects_are_rejected_with_reasons(planted):
    (first, second, third), manifest, clips, _ = planted
    rejects = {(r["scene"], r["timestamp"], r["reason"]) for r in manifest["rejects"]}
    a, b, c = (scene["name"] for scene in manifest["scenes"])  # both sorted by name
    assert (a, first[20]["timestamp"], "missing_file") in rejects
    assert (a, first[40]["timestamp"], "corrupt_file") in rejects
    assert (b, second[14]["timestamp"], "duplicate_timestamp") in rejects
    assert (b, second[25]["timestamp"] + 1, "non_monotonic") in rejects
    assert (b, second[45]["timestamp"], "broken_chain") in rejects
    assert {r["reason"] for r in manifest["rejects"] if r["scene"] == c} == {"missing_file", "too_short"}
    per_scene = {scene["name"]: scene["clips"] for scene in manifest["scenes"]}
    assert per_scene[c] == 0 and per_scene[a] > 0 and per_scene[b] > 0


def test_planted_defects_never_reach_a_clip(planted):
    (first, second, third), manifest, clips, _ = planted
    bad_tokens = {first[20]["token"], first[40]["token"], second[15]["token"], second[30]["token"]}
    bad_tokens |= {record["token"] for record in third[::5]}
    broken_after = second[45]["timestamp"]
    for clip in clips:
        assert not bad_tokens & set(clip["sample_data_tokens"])
        intervals = [b - a for a, b in zip(clip["timestamps"], clip["timestamps"][1:], strict=False)]
        assert all(0 < interval <= 125_000 for interval in intervals)
        if clip["scene"] == manifest["scenes"][1]["name"]:
            assert not clip["timestamps"][0] <= broken_after < clip["timestamps"][-1]


def test_frames_past_a_broken_chain_are_recovered(planted):
    (_, second, _), manifest, clips, _ = planted
    scene = manifest["scenes"][1]
    assert scene["frames"] == len(second) and scene["segments"] >= 4
    assert any(
        clip["timestamps"][0] > second[45]["timestamp"] for clip in clips if clip["scene"] == scene["name"]
    )
