"""Pure parts of the ingest: chain walking, segmenting, sampling, scene specs, tars, frames, parts."""

from __future__ import annotations

import io
import json
import re
import tarfile

import click
import numpy as np
import pytest
from PIL import Image

from mvm.atomic import write_atomic
from mvm.ingest.chain import split_segments, walk_chain
from mvm.ingest.cli import parse_size
from mvm.ingest.frames import FrameError, crop_box, load_frame
from mvm.ingest.plan import part_scenes
from mvm.ingest.scenes import SceneSpecError, resolve_scenes
from mvm.sampling import clip_span, clip_starts, scene_rng
from mvm.shards import ShardError, iter_samples, read_manifest, sample_members, tar_bytes


def chain_records(count: int, step_us: int = 100_000) -> dict[str, dict]:
    tokens = [f"t{index}" for index in range(count)]
    return {
        token: {
            "token": token,
            "timestamp": index * step_us,
            "prev": tokens[index - 1] if index else "",
            "next": tokens[index + 1] if index + 1 < count else "",
        }
        for index, token in enumerate(tokens)
    }


def walk(records: dict[str, dict], keyframes: list[str]):
    return walk_chain(records.get, keyframes, lambda record: True)


def test_walk_goes_back_to_chain_start_then_forward():
    records = chain_records(10)
    walked = walk(records, ["t3", "t7"])
    assert [r["token"] for r in walked.records] == [f"t{i}" for i in range(10)]
    assert not walked.breaks and not walked.rejects


def test_walk_resumes_after_missing_next_at_next_keyframe():
    records = chain_records(12)
    records["t4"] = {**records["t4"], "next": "missing"}
    walked = walk(records, ["t0", "t6", "t9"])
    assert [r["token"] for r in walked.records] == [f"t{i}" for i in range(12)]
    assert walked.breaks == {5}
    assert [(r.reason, r.frame_index) for r in walked.rejects] == [("broken_chain", 4)]


def test_walk_detects_prev_mismatch_and_loops():
    records = chain_records(8)
    records["t5"] = {**records["t5"], "prev": "t1"}
    walked = walk(records, ["t0"])
    assert [r["token"] for r in walked.records] == [f"t{i}" for i in range(5)]
    assert walked.rejects[0].reason == "broken_chain"
    looping = chain_records(5)
    looping["t4"] = {**looping["t4"], "next": "t2"}
    walked = walk(looping, ["t0"])
    assert len(walked.records) == 5 and walked.rejects[0].reason == "broken_chain"


def test_walk_stops_at_records_of_other_scenes():
    records = chain_records(6)
    walked = walk_chain(records.get, ["t0"], lambda record: record["timestamp"] < 300_000)
    assert [r["token"] for r in walked.records] == ["t0", "t1", "t2"]


def test_split_segments_reasons_and_splits():
    timestamps = [0, 100, 200, 350, 450, 450, 550, 500, 650, 750, 850, 950]
    timestamps = [t * 1000 for t in timestamps]
    segments, rejects = split_segments(timestamps, {10}, {8: ("missing_file", "x.jpg")}, 125_000)
    assert segments == [[0, 1, 2], [3, 4], [6], [9], [10, 11]]
    assert [(r.frame_index, r.reason) for r in rejects] == [
        (3, "gap"),
        (5, "duplicate_timestamp"),
        (7, "non_monotonic"),
        (8, "missing_file"),
    ]


def test_split_segments_accepts_50_and_100_ms_but_not_150():
    timestamps = [0, 50_000, 150_000, 200_000, 300_000]
    assert split_segments(timestamps, set(), {}, 125_000)[0] == [[0, 1, 2, 3, 4]]
    segments, rejects = split_segments([0, 100_000, 250_000], set(), {}, 125_000)
    assert segments == [[0, 1], [2]] and rejects[0].detail.startswith("150 ms")


def test_clip_starts_keep_every_clip_and_stay_inside():
    for segment_len in range(0, 60):
        for clip_len, stride, hop in [(8, 1, 8), (8, 2, 16), (4, 1, 2), (8, 1, 12)]:
            starts = clip_starts(segment_len, clip_len, stride, hop, scene_rng(0, "scene-0001"))
            span = clip_span(clip_len, stride)
            most = 0 if segment_len < span else (segment_len - span) // hop + 1
            assert len(starts) == most
            assert all(b - a == hop for a, b in zip(starts, starts[1:], strict=False))
            assert all(start >= 0 and start + span <= segment_len for start in starts)


def test_clip_offsets_seeded_by_seed_and_scene():
    def offsets(seed, scene):
        rng = scene_rng(seed, scene)
        return [clip_starts(100, 8, 1, 8, rng)[0] for _ in range(20)]

    assert offsets(0, "scene-0061") == offsets(0, "scene-0061")
    assert offsets(0, "scene-0061") != offsets(0, "scene-0103")
    assert offsets(0, "scene-0061") != offsets(1, "scene-0061")
    assert len(set(offsets(0, "scene-0061"))) > 1


def test_resolve_scenes_forms():
    available = {"scene-0061", "scene-0103", "scene-0553", "scene-1077"}
    assert resolve_scenes("all", available).names == sorted(available)
    mini_val = resolve_scenes("mini_val", available)
    assert mini_val.names == ["scene-0103"] and mini_val.absent_from_split == ["scene-0916"]
    assert resolve_scenes("scene-0553, scene-0061", available).names == ["scene-0061", "scene-0553"]


def test_resolve_scenes_file_and_errors(tmp_path):
    available = {"scene-0061", "scene-0103"}
    listing = tmp_path / "scenes.txt"
    listing.write_text("# val\nscene-0103\n\nscene-0061  # train\n")
    assert resolve_scenes(f"@{listing}", available).names == ["scene-0061", "scene-0103"]
    with pytest.raises(SceneSpecError, match="scene-0061"):
        resolve_scenes("scene-0062", available)
    with pytest.raises(SceneSpecError, match="mini_train"):
        resolve_scenes("mini_trian", available)
    with pytest.raises(SceneSpecError, match="does not exist"):
        resolve_scenes(f"@{tmp_path / 'nope.txt'}", available)
    with pytest.raises(SceneSpecError, match="no scene in this dataroot"):
        resolve_scenes("test", available)


def test_tar_headers_fixed_and_atomic_write(tmp_path):
    data = tar_bytes([("a-0000.json", b"{}"), ("a-0000.mp4", b"\x00" * 700)])
    assert data == tar_bytes([("a-0000.json", b"{}"), ("a-0000.mp4", b"\x00" * 700)])
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == ["a-0000.json", "a-0000.mp4"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    write_atomic(tmp_path / "x.tar", data)
    assert (tmp_path / "x.tar").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tar"]


def test_parse_size_rules():
    assert parse_size("144x256") == (144, 256)
    for bad in ("145x256", "144x255", "144", "axb", "0x16"):
        with pytest.raises(click.BadParameter):
            parse_size(bad)
    assert parse_size("72x128") == (72, 128)  # even but not a multiple of 16: warning only


def test_load_frame_sizes_crops_and_errors(tmp_path):
    gradient = np.linspace(0, 255, 1600, dtype=np.uint8)[None, :, None].repeat(900, 0).repeat(3, 2)
    Image.fromarray(gradient).save(tmp_path / "frame.jpg", quality=95)
    frame = load_frame(tmp_path / "frame.jpg", (144, 256))
    assert frame.shape == (144, 256, 3) and frame.dtype == np.uint8
    assert abs(int(frame[72, 128, 0]) - 128) < 6  # centre stays centre
    square = load_frame(tmp_path / "frame.jpg", (64, 64))  # centre crop, not a squeeze
    assert square.shape == (64, 64, 3) and abs(square[:, 0, 0].mean() - 350 / 1600 * 255) < 4
    assert crop_box((1600, 900), (900, 1600)) == (0.0, 0.0, 1600.0, 900.0)
    with pytest.raises(FrameError) as missing:
        load_frame(tmp_path / "absent.jpg", (144, 256))
    assert missing.value.reason == "missing_file"
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "frame.jpg").read_bytes()[:2000])
    with pytest.raises(FrameError) as corrupt:
        load_frame(tmp_path / "cut.jpg", (144, 256))
    assert corrupt.value.reason == "corrupt_file"


def test_parts_cover_the_plan_once():
    scenes = [f"scene-{index:04d}" for index in range(11)]
    for parts in (1, 2, 3, 11, 13):
        covered = [name for part in range(parts) for name in part_scenes(scenes, part, parts)]
        assert sorted(covered) == scenes


def _tar_with(tmp_path, name: str, members: list[tuple[str, bytes]]):
    path = tmp_path / name
    path.write_bytes(tar_bytes(members))
    return path


def test_sample_iterator_groups_round_trips_and_names_bad_members(tmp_path):
    members = [("a-0000.json", b"{}"), ("a-0000.mp4", b"v1"), ("b-0008.json", b"{}"), ("b-0008.mp4", b"v2")]
    path = _tar_with(tmp_path, "shard-000000.tar", members)
    samples = list(iter_samples(path))
    assert [(s["key"], s["index"], s["mp4"]) for s in samples] == [("a-0000", 0, b"v1"), ("b-0008", 1, b"v2")]
    assert tar_bytes(m for s in samples for m in sample_members(s)) == path.read_bytes()
    for bad, why in (
        ([("x/a-0000.json", b"{}")], "is not named <key>.<ext>"),
        ([("a-0000", b"{}")], "is not named <key>.<ext>"),
        ([("a-0000.key", b"{}")], "is not named <key>.<ext>"),
        ([("a-0000.json", b"{}"), ("a-0000.json", b"{}")], "appears twice"),
    ):
        with pytest.raises(ShardError, match=rf"shard-000001.tar, sample \S*a-0000: .*{re.escape(why)}"):
            list(iter_samples(_tar_with(tmp_path, "shard-000001.tar", bad)))
    (tmp_path / "shard-000002.tar").write_bytes(path.read_bytes()[:700])
    with pytest.raises(ShardError, match="shard-000002.tar is corrupt or truncated after sample"):
        list(iter_samples(tmp_path / "shard-000002.tar"))


def test_read_manifest_refuses_malformed_entries(tmp_path):
    good = {"name": "shard-000000.tar", "clips": 2, "bytes": 10, "sha256": "0" * 64}
    base = {"format": "mvm-shards", "version": 1, "config": {}, "total_clips": 2}
    for shards, total, why in (
        ([good, good], 4, "listed twice"),
        ([good], 3, "total_clips"),
        ([{**good, "sha256": "xyz"}], 2, "invalid clips, bytes or sha256"),
        ([{**good, "clips": "2"}], 2, "no valid 'clips'"),
        ([{**good, "name": "shard-000000.tar/../x"}], 2, "not of the form"),
    ):
        (tmp_path / "manifest.json").write_text(json.dumps({**base, "shards": shards, "total_clips": total}))
        with pytest.raises(ShardError, match=re.escape(why)):
            read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**base, "format": "other", "shards": [good]}))
    with pytest.raises(ShardError, match="expected 'mvm-shards' v1"):
        read_manifest(tmp_path)
