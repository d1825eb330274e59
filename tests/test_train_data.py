"""mvm.train.data: shard resolution, the real DataLoader stream (order, resume, disjoint ranks), bad shards,
the I420 hand-over and its conversion on the batch, repeated sampling."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import write_shards

from mvm.shards import ShardError, resolve_shards, shard_clip_counts, write_shard_folder
from mvm.shards import clip_shape_of as clip_shape
from mvm.tensors import i420_to_rgb, to_video
from mvm.train.config import DataConfig, preset, validate
from mvm.train.data import batches, epoch_samples, iter_clips
from mvm.train.split import plan_epoch

torch.set_num_threads(1)
SHAPE = (8, 32, 64, 3)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "train", [6, 4, 5, 3])


def keys_of(stream) -> list[str]:
    return [sample["key"] for sample in stream]


def test_resolve_shards_forms_and_errors(shard_dir, tmp_path):
    from_folder = resolve_shards(str(shard_dir))
    assert [p.rsplit("/", 1)[1] for p in from_folder] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert resolve_shards(f"{shard_dir}/shard-{{000000..000003}}.tar") == from_folder
    assert resolve_shards(f"{from_folder[0]},{shard_dir}/shard-00000[2-3].tar") == [
        from_folder[0],
        *from_folder[2:],
    ]
    assert shard_clip_counts(from_folder) == [6, 4, 5, 3]
    assert clip_shape(from_folder) == (8, (32, 64))
    with pytest.raises(ShardError, match=r"2 of 6 shards missing: .*shard-000004.tar"):
        resolve_shards(f"{shard_dir}/shard-{{000000..000004}}.tar,{tmp_path}/nope.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no manifest.json"):
        resolve_shards(str(tmp_path / "empty"))


def test_iter_clips_is_deterministic_file_order(shard_dir):
    urls = resolve_shards(str(shard_dir))
    clips = list(iter_clips(urls, decoder="pyav"))
    assert len(clips) == 18
    key, frames, meta = clips[0]
    assert frames.shape == SHAPE and frames.dtype == np.uint8 and meta["key"] == key
    assert [c[0] for c in clips] == [c[0] for c in iter_clips(urls)]


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_stream_resume_continues_exactly_and_ranks_are_disjoint(shard_dir, workers):
    urls = resolve_shards(str(shard_dir))
    counts = shard_clip_counts(urls)
    cfg = DataConfig(workers=workers, shuffle_buffer=4, batch_size=2)
    plan = plan_epoch(counts, 2, workers, seed=3, epoch=1)
    per_rank = []
    for rank in range(2):
        full = keys_of(epoch_samples(urls, plan[rank], 0, cfg, 3, 1, rank, SHAPE))
        assert len(full) == sum(slot.clips for slot in plan[rank])
        for consumed in (1, 3, len(full) - 1):
            assert (
                keys_of(epoch_samples(urls, plan[rank], consumed, cfg, 3, 1, rank, SHAPE)) == full[consumed:]
            )
        per_rank.append(full)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 18


def test_shuffle_depends_on_seed_and_batches_stack(shard_dir):
    urls = resolve_shards(str(shard_dir))
    plan = plan_epoch(shard_clip_counts(urls), 1, 0, seed=0, epoch=0)
    cfg = DataConfig(workers=0, shuffle_buffer=8)
    first = keys_of(epoch_samples(urls, plan[0], 0, cfg, 0, 0, 0, SHAPE))
    other = keys_of(epoch_samples(urls, plan[0], 0, cfg, 1, 0, 0, SHAPE))
    assert sorted(first) == sorted(other) and first != other
    keys, frames, used = next(batches(epoch_samples(urls, plan[0], 0, cfg, 0, 0, 0, SHAPE), 4))
    assert keys == first[:4] and frames.shape == (4, *SHAPE) and used == 4


def corrupt_copy(shard_dir, tmp_path):
    """A copy of the shards with shard 1 truncated mid-member."""
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    for path in shard_dir.iterdir():
        (bad_dir / path.name).write_bytes(path.read_bytes())
    data = (bad_dir / "shard-000001.tar").read_bytes()
    (bad_dir / "shard-000001.tar").write_bytes(data[: len(data) // 2 + 100])
    return bad_dir


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_shard_error_names_it_or_is_skipped(shard_dir, tmp_path, workers):
    bad_dir = corrupt_copy(shard_dir, tmp_path)
    urls = resolve_shards(str(bad_dir))
    plan = plan_epoch(shard_clip_counts(urls), 1, workers, seed=0, epoch=0)
    with pytest.raises(ShardError, match="shard-000001.tar"):
        keys_of(epoch_samples(urls, plan[0], 0, DataConfig(workers=workers), 0, 0, 0, SHAPE))
    cfg = DataConfig(workers=workers, on_bad_sample="skip")
    samples = list(epoch_samples(urls, plan[0], 0, cfg, 0, 0, 0, SHAPE))
    bad = [s for s in samples if "bad" in s]
    assert len(bad) == 1 and "shard-000001.tar" in bad[0]["bad"]
    assert 14 <= len(samples) - 1 < 18  # the other shards and the intact head of shard 1


def test_undecodable_sample_is_named(shard_dir, tmp_path):
    write_shard_folder(
        tmp_path, [[[("scene-0009-0000.mp4", b"not a video"), ("scene-0009-0000.json", b"{}")]]], {}
    )
    path = tmp_path / "shard-000000.tar"
    with pytest.raises(ShardError, match=r"shard-000000.tar, sample scene-0009-0000: cannot decode"):
        list(iter_clips([str(path)]))


def test_i420_conversion_inverts_the_ingest_and_matches_the_rgb_decode():
    """i420_to_rgb on PyAV's planes vs FFmpeg's own RGB conversion of the same stream.

    FFmpeg's yuv2rgb rounds low by about one level (mean signed difference ~+1 here), so the exact
    inverse sits within 3 levels of it, within 2 for all but a few pixels, and closer to the source.
    """
    import matplotlib.cbook
    from PIL import Image

    from mvm.video import decode_clip, decode_i420, encode_clip, psnr, rgb_to_i420

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    source = np.stack(
        [np.asarray(photo.crop((8 * t, 40, 480 + 8 * t, 310)).resize((256, 144))) for t in range(4)]
    )
    mp4 = encode_clip(source)
    ours = i420_to_rgb(torch.from_numpy(decode_i420(mp4))).permute(0, 2, 3, 1).numpy() * 255  # (T, H, W, 3)
    ffmpeg = decode_clip(mp4, "pyav")
    difference = np.abs(ours - ffmpeg)
    assert difference.max() <= 3.5 and (difference > 2.5).mean() < 0.01
    assert psnr(source, ours.round().astype(np.uint8)) >= psnr(source, ffmpeg)
    # Without the codec, only the 4:2:0 chroma subsampling and 8-bit rounding remain.
    planes = torch.from_numpy(np.stack([rgb_to_i420(frame) for frame in source]))
    assert psnr(source, (i420_to_rgb(planes).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)) > 36
    grey = torch.from_numpy(rgb_to_i420(np.full((2, 2, 3), 128, np.uint8)))
    assert torch.allclose(i420_to_rgb(grey) * 255, torch.full((3, 2, 2), 128.0), atol=1.0)


def test_i420_stream_has_half_the_bytes_and_the_same_video(shard_dir):
    urls = resolve_shards(str(shard_dir))
    plan = plan_epoch(shard_clip_counts(urls), 1, 0, seed=0, epoch=0)
    rgb_cfg, i420_cfg = DataConfig(workers=0, decoder="pyav"), DataConfig(workers=0, decoder="pyav-i420")
    rgb = next(batches(epoch_samples(urls, plan[0], 0, rgb_cfg, 0, 0, 0, SHAPE), 2))
    i420 = next(batches(epoch_samples(urls, plan[0], 0, i420_cfg, 0, 0, 0, SHAPE), 2))
    assert rgb[0] == i420[0] and i420[1].shape == (2, 8, 48, 64) and i420[1].dtype == torch.uint8
    assert i420[1].numel() * 2 == rgb[1].numel()
    video_rgb, video_i420 = to_video(rgb[1], torch.device("cpu")), to_video(i420[1], torch.device("cpu"))
    assert video_rgb.shape == video_i420.shape == (2, 8, 3, 32, 64)
    assert (video_rgb - video_i420).abs().max() * 255 <= 3.5
    # RGB readers (online probe, tools) accept the trainer's decoder names.
    assert next(iter_clips(urls, decoder="pyav-i420"))[1].shape == SHAPE


def test_repeat_aug_repeats_each_clip_and_resume_counts_clips(shard_dir):
    urls = resolve_shards(str(shard_dir))
    plan = plan_epoch(shard_clip_counts(urls), 1, 0, seed=0, epoch=0)
    cfg = DataConfig(workers=0, shuffle_buffer=8, decoder="pyav-i420", batch_size=6, repeat_aug=3)
    order = keys_of(epoch_samples(urls, plan[0], 0, cfg, 0, 0, 0, SHAPE))
    stream = batches(epoch_samples(urls, plan[0], 0, cfg, 0, 0, 0, SHAPE), 6, 3)
    positions = 0
    for _ in range(3):
        keys, frames, used = next(stream)
        assert keys == [key for key in order[positions : positions + 2] for _ in range(3)]
        assert used == 2 and torch.equal(frames[0], frames[2]) and not torch.equal(frames[2], frames[3])
        positions += used
    # A resume after those steps starts at stream position 6, as the trainer's `consumed` says.
    resumed = batches(epoch_samples(urls, plan[0], positions, cfg, 0, 0, 0, SHAPE), 6, 3)
    assert next(resumed)[0][::3] == order[6:8]
    with pytest.raises(ValueError, match="multiple of data.repeat_aug"):
        validate(replace(preset("tiny"), data=DataConfig(batch_size=16, repeat_aug=3)))
    with pytest.raises(ValueError, match="data.decoder must be one of"):
        validate(replace(preset("tiny"), data=DataConfig(decoder="opencv")))


def child_pids() -> set[int]:
    """This process's children (Linux /proc): the DataLoader workers while a stream runs."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    return {int(pid) for task in tasks.iterdir() for pid in (task / "children").read_text().split()}


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_live_across_epochs_and_resume_mid_epoch_continues_exactly(shard_dir, workers):
    """One set of workers serves epoch after epoch (no restart at the boundary); every epoch is the
    stream a fresh epoch_samples gives, and a resume in a later epoch continues it exactly."""
    from mvm.train.loop import Position, data_stream

    urls = resolve_shards(str(shard_dir))
    counts = shard_clip_counts(urls)
    cfg = DataConfig(workers=workers, shuffle_buffer=4, batch_size=4)
    config = replace(preset("tiny"), seed=3, data=cfg, model=replace(preset("tiny").model, clip_len=8,
                                                                     image_size=(32, 64)))  # fmt: skip
    steps = 18 // 4  # per epoch: the last 2 clips of each epoch are dropped
    stream = data_stream(urls, counts, config, 0, 1, Position(0, 0, 0), on_bad=print)
    before = child_pids()
    keys, pids = [], []
    for epoch in range(3):
        epoch_keys = []
        for _ in range(steps):
            position, (batch_keys, frames, _) = next(stream)
            epoch_keys += batch_keys
            assert position.epoch == epoch and frames.shape == (4, *SHAPE)
        pids.append(child_pids() - before if workers else set())
        fresh = plan_epoch(counts, 1, workers, seed=3, epoch=epoch)
        assert epoch_keys == keys_of(epoch_samples(urls, fresh[0], 0, cfg, 3, epoch, 0, SHAPE))[: steps * 4]
        keys.append(epoch_keys)
    assert len(pids[0]) == workers and pids[0] == pids[1] == pids[2]
    assert keys[0] != keys[1]  # each epoch its own shuffle
    resumed = data_stream(urls, counts, config, 0, 1, Position(1, 1, 4), on_bad=print)
    assert [key for _ in range(2 * steps - 1) for key in next(resumed)[1][0]] == keys[1][4:] + keys[2]
    stream.close()
    resumed.close()
    if workers:
        assert not child_pids() & pids[0]  # closing the stream stops its workers
