"""Lidar depth targets in the shards (format version 2): the ingest's projection against the
devkit's own `map_pointcloud_to_image`, per-patch medians against an independent computation,
the time tolerance, missing / empty / corrupt lidar files, version-1 readers, and the audit."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from _ingest_helpers import VERSION, audit, copy_dataroot, ingest, load_table
from nuscenes.nuscenes import NuScenesExplorer

from mvm.ingest.depth import Pose, choose_keyframe, lidar_to_camera, load_points, patch_medians, project
from mvm.ingest.tables import SceneTables, open_nuscenes
from mvm.probe.data import read_metadata
from mvm.shards import (
    DEPTH_MEMBER,
    FORMAT_VERSION,
    ShardError,
    decode_depth,
    iter_samples,
    read_manifest,
    resolve_shards,
    sha256_file,
    tar_bytes,
)
from mvm.train.data import decode_sample

SIZE = (64, 128)
"""Ingest size of these tests: 2:1, so the 16:9 frames are cropped top and bottom."""
PATCH = 16


def planted_points(seed: int) -> np.ndarray:
    """(N, 5) float32 x y z intensity ring in the LIDAR_TOP frame (x right, y forward, z up, ~1.84 m
    above the ground): a jittered ground plane ahead of the car and a wall 20 m ahead."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(-25, 25, 0.3), np.arange(1.5, 60, 0.3))
    ground = np.stack([x.ravel(), y.ravel(), np.full(x.size, -1.84)], axis=1)
    wx, wz = np.meshgrid(np.arange(-8, 8, 0.1), np.arange(-1.8, 2.0, 0.1))
    wall = np.stack([wx.ravel(), np.full(wx.size, 20.0), wz.ravel()], axis=1)
    xyz = np.concatenate([ground, wall]) + rng.normal(0, 0.02, (len(ground) + len(wall), 3))
    extra = np.stack([rng.uniform(0, 100, len(xyz)), rng.integers(0, 32, len(xyz))], axis=1)
    return np.concatenate([xyz, extra], axis=1).astype("<f4")


def keyframe_lidar(root) -> list[dict]:
    """The LIDAR_TOP keyframe sample_data records of a dataroot."""
    return [
        r for r in load_table(root, "sample_data") if r["is_key_frame"] and "/LIDAR_TOP/" in r["filename"]
    ]


@pytest.fixture(scope="module")
def lidar_root(dataroot, tmp_path_factory):
    """The test dataroot with planted points in every keyframe LIDAR_TOP file, except the last
    scene's, which are emptied (a sweep without returns)."""
    root = copy_dataroot(dataroot, tmp_path_factory.mktemp("lidar") / "nuscenes")
    scenes = {s["token"]: s["name"] for s in load_table(root, "scene")}
    last = sorted(scenes.values())[-1]
    sample_scene = {s["token"]: scenes[s["scene_token"]] for s in load_table(root, "sample")}
    for index, record in enumerate(keyframe_lidar(root)):
        (root / record["filename"]).write_bytes(
            planted_points(index).tobytes() if sample_scene[record["sample_token"]] != last else b""
        )
    return root


@pytest.fixture(scope="module")
def lidar_shards(lidar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("lidar-shards") / "shards"
    result = ingest(lidar_root, out, "--size", "{}x{}".format(*SIZE), "--depth-max-offset-ms", "20")
    assert result.exit_code == 0, result.output
    return out


def samples_of(out) -> list[dict]:
    manifest = read_manifest(out)
    return [sample for shard in manifest["shards"] for sample in iter_samples(out / shard["name"])]


def test_projection_equals_the_devkits(lidar_root):
    """Pixels and depths before the crop equal map_pointcloud_to_image's, for keyframe pairs and
    for camera frames 1 and 3 positions later (other ego poses)."""
    nusc = open_nuscenes(lidar_root, VERSION)
    explorer = NuScenesExplorer(nusc)
    tables = SceneTables(nusc)
    job = tables.job(sorted(tables.scenes)[0])
    compared = 0
    for lidar in job.lidar_keyframes[:4]:
        keyframe = nusc.get("sample", nusc.get("sample_data", lidar["token"])["sample_token"])
        position = [f["token"] for f in job.frames].index(keyframe["data"]["CAM_FRONT"])
        for frame in (job.frames[p] for p in (position, position + 1, position + 3) if p < len(job.frames)):
            expected, depths, _image = explorer.map_pointcloud_to_image(lidar["token"], frame["token"])
            camera = job.cameras[frame["calibrated_sensor_token"]]
            in_camera = lidar_to_camera(
                load_points(lidar_root, lidar["filename"]).astype(np.float64),
                lidar["sensor"],
                lidar["ego"],
                Pose(tuple(frame["ego_translation"]), tuple(frame["ego_rotation"])),
                camera["pose"],
            )
            pixels, ours = project(
                in_camera, np.array(camera["intrinsic"]), (frame["width"], frame["height"])
            )
            assert len(ours) == len(depths) > 500
            # The devkit keeps the points float32 through the chain (global coordinates included);
            # ours are float64: they agree to its rounding, ~1e-3 px on this 320-px image.
            np.testing.assert_allclose(pixels, expected[:2].T, atol=1e-2)
            np.testing.assert_allclose(ours, depths, rtol=1e-4)
            compared += 1
    assert compared >= 8


def independent_medians(pixels_uv: np.ndarray, depths: np.ndarray, source_wh: tuple[int, int]) -> np.ndarray:
    """Per-patch medians of devkit pixels at SIZE, written out for this test's 2:1 crop of 16:9 frames."""
    width, height = source_wh
    crop_h = width * SIZE[0] / SIZE[1]  # full width kept, rows cut equally top and bottom
    scale = SIZE[1] / width
    x = pixels_uv[:, 0] * scale
    y = (pixels_uv[:, 1] - (height - crop_h) / 2) * scale
    rows, cols = SIZE[0] // PATCH, SIZE[1] // PATCH
    out = np.full((rows, cols), np.nan)
    for row in range(rows):
        for col in range(cols):
            inside = (
                (x >= col * PATCH) & (x < (col + 1) * PATCH) & (y >= row * PATCH) & (y < (row + 1) * PATCH)
            )
            if inside.sum() >= 3:
                out[row, col] = np.median(depths[inside])
    return out


def test_shard_medians_equal_an_independent_projection(lidar_root, lidar_shards):
    nusc = open_nuscenes(lidar_root, VERSION)
    explorer = NuScenesExplorer(nusc)
    checked = 0
    for sample in samples_of(lidar_shards):
        meta = json.loads(sample["json"])
        values = decode_depth(sample)
        if meta["depth"] is None:
            assert values is None
            continue
        depth = meta["depth"]
        camera = nusc.get("sample_data", meta["sample_data_tokens"][depth["frame"]])
        lidar = nusc.get("sample_data", depth["lidar_token"])
        assert lidar["is_key_frame"] and lidar["channel"] == "LIDAR_TOP"
        assert depth["lidar_timestamp"] == lidar["timestamp"]
        assert depth["offset_us"] == lidar["timestamp"] - camera["timestamp"]
        pixels, depths, _image = explorer.map_pointcloud_to_image(lidar["token"], camera["token"])
        expected = independent_medians(pixels[:2].T, depths, (camera["width"], camera["height"]))
        assert values.dtype == np.float32 and values.shape == (SIZE[0] // PATCH, SIZE[1] // PATCH)
        # A point within the devkit's float32 rounding (~3e-3 px here) of a patch edge may land in the
        # neighbouring patch; on these dense points that moves a median by far less than 0.1 %.
        np.testing.assert_allclose(values, expected, rtol=1e-3)
        assert depth["coverage"] == pytest.approx(np.isfinite(expected).mean())
        assert depth["patch"] == PATCH and 0 < depth["points"] < len(depths)  # the crop cut some
        checked += 1
    assert checked >= 3


def test_keyframe_choice_and_tolerance(lidar_root, lidar_shards):
    """Each clip's target is the nearest (frame, keyframe) pair if within 20 ms, else null with
    `no_keyframe`; the last scene's empty lidar files give null with `no_points`."""
    manifest = read_manifest(lidar_shards)
    missing = {entry["key"]: entry["reason"] for entry in manifest["depth_missing"]}
    scenes = {s["token"]: s["name"] for s in load_table(lidar_root, "scene")}
    sample_scene = {s["token"]: scenes[s["scene_token"]] for s in load_table(lidar_root, "sample")}
    keyframes: dict[str, list[dict]] = {}
    for record in sorted(keyframe_lidar(lidar_root), key=lambda r: r["timestamp"]):
        keyframes.setdefault(sample_scene[record["sample_token"]], []).append(record)
    outcomes = set()
    for sample in samples_of(lidar_shards):
        meta = json.loads(sample["json"])
        lidar = keyframes[meta["scene"]]
        offsets = np.abs(np.subtract.outer(meta["timestamps"], [r["timestamp"] for r in lidar]))
        frame, which = np.unravel_index(np.argmin(offsets), offsets.shape)
        if offsets[frame, which] > 20_000:
            assert meta["depth"] is None and missing[meta["key"]] == "no_keyframe"
            outcomes.add("far")
        elif meta["scene"] == sorted(scenes.values())[-1]:
            assert meta["depth"] is None and missing[meta["key"]] == "no_points"
            outcomes.add("empty")
        else:
            assert (meta["depth"]["frame"], meta["depth"]["lidar_token"]) == (frame, lidar[which]["token"])
            assert DEPTH_MEMBER in sample and meta["key"] not in missing
            outcomes.add("depth")
    assert outcomes == {"far", "empty", "depth"}
    assert manifest["version"] == FORMAT_VERSION == 2
    assert {"depth_patch", "depth_min_points", "depth_max_offset_ms"} <= set(manifest["config"])
    assert (
        "mbtree=0" in manifest["config"]["x264_params"]
        and "rc-lookahead=0" in manifest["config"]["x264_params"]
    )


def test_choose_keyframe_ties_and_limit():
    assert choose_keyframe([100, 300], [0, 200, 400], 100) == (0, 0)  # ties: earliest frame
    assert choose_keyframe([150], [0, 100, 200], 50) == (1, 0)
    assert choose_keyframe([1000], [0, 100], 899) is None
    assert choose_keyframe([], [0], 10) is None


def test_patch_medians_threshold_and_nan():
    pixels = np.array([[1, 1], [2, 2], [3, 3], [17, 1], [18, 1], [5, 17]], float)
    depths = np.array([5.0, 7.0, 6.0, 2.0, 4.0, 9.0])
    values = patch_medians(pixels, depths, (32, 32), 16, 2)
    assert values.dtype == np.float32 and values.shape == (2, 2)
    np.testing.assert_array_equal(values, np.array([[6.0, 3.0], [np.nan, np.nan]], np.float32))


def test_missing_and_corrupt_lidar_files_are_counted(lidar_root, lidar_shards, tmp_path):
    """The lidar files of two clips' targets: one deleted, one cut to 7 bytes; the ingest goes on."""
    root = copy_dataroot(lidar_root, tmp_path / "root")
    chosen = [json.loads(s["json"]) for s in samples_of(lidar_shards) if DEPTH_MEMBER in s][:2]
    files = {r["token"]: root / r["filename"] for r in keyframe_lidar(root)}
    files[chosen[0]["depth"]["lidar_token"]].unlink()
    files[chosen[1]["depth"]["lidar_token"]].write_bytes(b"\0" * 7)  # not a multiple of 5 float32
    out = tmp_path / "shards"
    result = ingest(root, out, "--size", "{}x{}".format(*SIZE), "--depth-max-offset-ms", "20")
    assert result.exit_code == 0, result.output
    reasons = {entry["key"]: entry["reason"] for entry in read_manifest(out)["depth_missing"]}
    assert [reasons[meta["key"]] for meta in chosen] == ["missing_file", "corrupt_file"]
    assert "depth targets" in result.output and "missing_file 1" in result.output


def test_unusable_depth_patch_is_a_usage_error(lidar_root, tmp_path):
    result = ingest(
        lidar_root, tmp_path / "out", "--size", "64x112", "--depth-patch", "32", scenes="scene-0061"
    )
    assert result.exit_code == 2 and "does not divide" in result.output and "16" in result.output


def rewrite_shard(out, name: str, samples: list[dict], version: int | None = None) -> None:
    """Replace shard `name` with these samples and make the manifest agree (version too, if given)."""
    data = tar_bytes(
        (f"{s['key']}.{ext}", value)
        for s in samples
        for ext, value in s.items()
        if ext not in ("key", "url", "index")
    )
    (out / name).write_bytes(data)
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"]:
        if shard["name"] == name:
            shard["sha256"], shard["bytes"] = sha256_file(out / name), len(data)
    if version is not None:
        manifest["version"] = version
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_audit_reports_depth_coverage(lidar_shards, tmp_path):
    result = audit(lidar_shards, "--psnr-clips", "0", "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "report" / "audit.json").read_text())["stats"]["depth"]
    values = [decode_depth(s) for s in samples_of(lidar_shards)]
    with_depth = [v for v in values if v is not None]
    assert stats["clips_with_depth"] == len(with_depth) > 0
    assert stats["clips_without_depth"] == len(values) - len(with_depth) > 0
    assert stats["patch_coverage"] == pytest.approx(np.mean([np.isfinite(v).mean() for v in with_depth]))
    assert sum(stats["histogram_m"]["counts"]) == sum(int(np.isfinite(v).sum()) for v in with_depth)
    assert set(stats["missing_by_reason"]) == {"no_keyframe", "no_points"}
    assert (tmp_path / "report" / "depth.png").stat().st_size > 1000
    assert "lidar depth targets" in (tmp_path / "report" / "audit.md").read_text()


@pytest.mark.parametrize("damage", ["negative", "shape", "dtype"])
def test_audit_fails_a_malformed_depth_member(lidar_shards, tmp_path, damage):
    out = tmp_path / "shards"
    shutil.copytree(lidar_shards, out, ignore=shutil.ignore_patterns("audit"))
    name = read_manifest(out)["shards"][0]["name"]
    samples = list(iter_samples(out / name))
    victim = next(s for s in samples if DEPTH_MEMBER in s)
    values = decode_depth(victim)
    bad = {"negative": -values, "shape": values[:-1], "dtype": values.astype(np.float64)}[damage]
    buffer = io.BytesIO()
    np.save(buffer, bad)
    victim[DEPTH_MEMBER] = buffer.getvalue()
    rewrite_shard(out, name, samples)
    result = audit(out, "--psnr-clips", "0")
    assert result.exit_code == 1
    failures = {
        c["name"]: c["failures"] for c in json.loads((out / "audit" / "audit.json").read_text())["checks"]
    }
    assert len(failures["depth"]) == 1 and victim["key"] in failures["depth"][0]


def test_version_1_shards_are_still_read(lidar_shards, tmp_path):
    """A version-1 folder (no depth field or member) passes the audit and reads without depth."""
    out = tmp_path / "v1"
    shutil.copytree(lidar_shards, out, ignore=shutil.ignore_patterns("audit"))
    for shard in read_manifest(out)["shards"]:
        samples = list(iter_samples(out / shard["name"]))
        for sample in samples:
            sample.pop(DEPTH_MEMBER, None)
            meta = json.loads(sample["json"])
            del meta["depth"]
            meta["version"] = 1
            sample["json"] = json.dumps(meta, sort_keys=True).encode()
        rewrite_shard(out, shard["name"], samples, version=1)
    manifest = read_manifest(out)
    assert manifest["version"] == 1
    assert all(decode_depth(s) is None for s in samples_of(out))
    result = audit(out, "--psnr-clips", "0", "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "report" / "audit.json").read_text())["stats"]["depth"]
    assert stats["clips_with_depth"] == 0 and stats["clips_without_depth"] == manifest["total_clips"]
    urls = resolve_shards(str(out))  # what mvm-train and mvm-probe read through
    assert len(read_metadata(urls)) == manifest["total_clips"]
    frames, meta = decode_sample(next(iter_samples(urls[0])), "pyav", (8, *SIZE, 3))
    assert frames.shape == (8, *SIZE, 3) and meta["version"] == 1


def test_decode_depth_refuses_a_malformed_member():
    with pytest.raises(ShardError, match="not a .npy"):
        decode_depth({"key": "k", "url": "u", DEPTH_MEMBER: b"junk"})
    assert decode_depth({"key": "k", "url": "u"}) is None
