"""train.data: shard resolution, the real DataLoader stream (order, resume, disjoint ranks), bad shards."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from _train_helpers import write_shards

from train.config import DataConfig
from train.data import (
    ShardError,
    batches,
    clip_shape,
    epoch_samples,
    iter_clips,
    resolve_shards,
    shard_clip_counts,
)
from train.split import plan_epoch

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
    keys, frames, used, bad = next(batches(epoch_samples(urls, plan[0], 0, cfg, 0, 0, 0, SHAPE), 4))
    assert keys == first[:4] and frames.shape == (4, *SHAPE) and used == 4 and bad == []


def corrupt_copy(shard_dir, tmp_path):
    """A copy of the shards with shard 1 truncated mid-member."""
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    for path in shard_dir.iterdir():
        (bad_dir / path.name).write_bytes(path.read_bytes())
    data = (bad_dir / "shard-000001.tar").read_bytes()
    (bad_dir / "shard-000001.tar").write_bytes(data[: len(data) // 2 + 100])
    return bad_dir


def test_corrupt_shard_error_names_it_or_is_skipped(shard_dir, tmp_path):
    bad_dir = corrupt_copy(shard_dir, tmp_path)
    urls = resolve_shards(str(bad_dir))
    plan = plan_epoch(shard_clip_counts(urls), 1, 0, seed=0, epoch=0)
    with pytest.raises(ShardError, match="shard-000001.tar"):
        keys_of(epoch_samples(urls, plan[0], 0, DataConfig(workers=0), 0, 0, 0, SHAPE))
    cfg = DataConfig(workers=0, on_bad_sample="skip")
    samples = list(epoch_samples(urls, plan[0], 0, cfg, 0, 0, 0, SHAPE))
    bad = [s for s in samples if "bad" in s]
    assert len(bad) == 1 and "shard-000001.tar" in bad[0]["bad"]
    assert 14 <= len(samples) - 1 < 18  # the other shards and the intact head of shard 1


def test_undecodable_sample_is_named(shard_dir, tmp_path):
    import io
    import tarfile

    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, payload in (
            ("scene-0009-0000.mp4", b"not a video"),
            ("scene-0009-0000.json", json.dumps({}).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = path.read_bytes()
    entry = {"name": path.name, "clips": 1, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"format": "mvm-shards", "version": 1, "config": {}, "shards": [entry], "total_clips": 1}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"shard-000000.tar, sample scene-0009-0000: cannot decode"):
        list(iter_clips([str(path)]))
