"""Streaming clips from WebDataset shards (format: shards/README.md) as small generator stages.

Pipeline of one rank, per epoch (train.split decides who reads what):
    shard list -> this rank's slots -> this worker's slot -> raw samples (tar members grouped by key,
    filtered by epoch index) -> seeded shuffle buffer -> skip already consumed (resume) -> decode
    -> main process: round robin over workers -> batches of uint8 clips -> float (B, T, 3, H, W).
Seeds come from (seed, epoch, rank, worker). Shards are read only through ingest.shards: every
shard must be listed in its folder's manifest (names validated, never outside the folder) and is
checked against the manifest's sha256 the first time a process opens it.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

import braceexpand
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ingest.shards import ShardError, listed_entry, listed_shards, read_manifest
from ingest.shards import clip_shape as manifest_clip_shape

# The one sample reader: raw samples {"key", "url", "index", "<ext>": bytes} of a listed shard,
# its sha256 checked against the manifest on first open in this process.
from ingest.shards import iter_verified as iter_samples
from ingest.video import decode_clip
from train.split import SlotPlan, consumed_per_worker


def _resolve_one(part: str) -> list[str]:
    path = Path(part)
    if path.is_dir():
        return [str(url) for url in listed_shards(path, read_manifest(path))]
    if "{" in part:
        return list(braceexpand.braceexpand(part))
    if any(char in part for char in "*?["):
        matches = sorted(glob.glob(part))
        if not matches:
            raise ShardError(f"shard pattern {part} matches no file")
        return matches
    return [part]


def resolve_shards(spec: str) -> list[str]:
    """Shard paths from a folder with manifest.json, a brace pattern, a glob, or a comma list of those.

    Every shard must be listed in the manifest of its folder (so a stray or planted file, or a
    name pointing outside the folder, is refused). Raises ShardError naming every missing shard
    before any work is done.
    """
    urls = [url for part in spec.split(",") if part.strip() for url in _resolve_one(part.strip())]
    if not urls:
        raise ShardError(f"shard spec {spec!r} names no shards")
    missing = [url for url in urls if not Path(url).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ShardError(f"{len(missing)} of {len(urls)} shards missing: {shown}")
    for url in urls:
        listed_entry(url)
    return urls


def shard_clip_counts(urls: list[str]) -> list[int]:
    """Clips per shard, from the manifest of each shard's folder."""
    return [listed_entry(url)["clips"] for url in urls]


def clip_shape(urls: list[str]) -> tuple[int, tuple[int, int]]:
    """(clip_len, (H, W)) from the manifests' config; ShardError if the shards' folders disagree."""
    shapes = {manifest_clip_shape(read_manifest(folder), folder) for folder in {Path(u).parent for u in urls}}
    if len(shapes) != 1:
        raise ShardError(f"shard folders hold clips of different shapes (clip_len, size): {sorted(shapes)}")
    return shapes.pop()


def decode_sample(
    sample: dict, decoder: str, shape: tuple[int, int, int, int] | None
) -> tuple[np.ndarray, dict]:
    """mp4 + json of a raw sample -> (frames uint8 (T, H, W, 3), metadata); ShardError naming shard and key."""
    where = f"shard {sample['url']}, sample {sample['key']}"
    if "mp4" not in sample or "json" not in sample:
        raise ShardError(
            f"{where}: needs .mp4 and .json members, has {sorted(set(sample) - {'key', 'url', 'index'})}"
        )
    try:
        meta = json.loads(sample["json"])
        frames = decode_clip(sample["mp4"], backend=decoder)
    except Exception as error:  # decord and PyAV raise their own types for broken streams
        raise ShardError(f"{where}: cannot decode: {error}") from error
    if shape is not None and frames.shape != shape:
        raise ShardError(f"{where}: decoded shape {frames.shape}, expected {shape}")
    return frames, meta


def iter_clips(urls: list[str], decoder: str = "decord") -> Iterator[tuple[str, np.ndarray, dict]]:
    """(key, frames uint8 (T, H, W, 3), metadata) for every clip, in file then sample order (single process)."""
    for url in urls:
        for sample in iter_samples(url):
            frames, meta = decode_sample(sample, decoder, None)
            yield sample["key"], frames, meta


def slot_samples(urls: list[str], slot: SlotPlan) -> Iterator[dict]:
    """Raw samples of one slot: its shards in order, keeping epoch indices i % modulus == residue.

    A shard that cannot be read becomes one {"key", "error"} record and reading goes on with the
    next shard; `decoded` raises or skips it per on_bad_sample.
    """
    for shard_index, start in slot.shards:
        try:
            for sample in iter_samples(urls[shard_index]):
                if (start + sample["index"]) % slot.modulus == slot.residue:
                    yield sample
        except ShardError as error:
            yield {"key": Path(urls[shard_index]).name, "error": str(error)}


def shuffled(samples: Iterator[dict], buffer_size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Seeded shuffle buffer: emit a random buffered sample for each new one, then drain randomly."""
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        pick = int(rng.integers(len(buffer)))
        buffer[pick], sample = sample, buffer[pick]
        yield sample
    while buffer:
        yield buffer.pop(int(rng.integers(len(buffer))))


def skipped(samples: Iterator[dict], count: int) -> Iterator[dict]:
    """Drop the first `count` samples (already consumed before a resume) without decoding them."""
    for position, sample in enumerate(samples):
        if position >= count:
            yield sample


def decoded(samples: Iterator[dict], decoder: str, shape, on_bad_sample: str) -> Iterator[dict]:
    """{"key", "frames" uint8 (T, H, W, 3)} per sample; with on_bad_sample="skip" a bad one becomes {"key", "bad"}."""
    for sample in samples:
        try:
            if "error" in sample:
                raise ShardError(sample["error"])
            frames, _ = decode_sample(sample, decoder, shape)
        except ShardError as error:
            if on_bad_sample != "skip":
                raise
            yield {"key": sample["key"], "bad": str(error)}
            continue
        yield {"key": sample["key"], "frames": torch.from_numpy(frames)}


class RankStream(IterableDataset):
    """One rank's samples for one epoch; each DataLoader worker runs one slot of the plan."""

    def __init__(
        self, urls, slots: list[SlotPlan], consumed: int, cfg, seed: int, epoch: int, rank: int, shape
    ):
        self.urls, self.slots, self.cfg, self.shape = urls, slots, cfg, shape
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.skip, self.phase = consumed_per_worker([slot.clips for slot in slots], consumed)

    def __iter__(self):
        info = get_worker_info()
        physical = info.id if info is not None else 0
        # The DataLoader starts its round robin at worker 0; rotating makes a resumed stream
        # continue with the worker that was next in the interrupted run.
        worker = (physical + self.phase) % len(self.slots)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, self.rank, worker]))
        samples = shuffled(slot_samples(self.urls, self.slots[worker]), self.cfg.shuffle_buffer, rng)
        return decoded(
            skipped(samples, self.skip[worker]), self.cfg.decoder, self.shape, self.cfg.on_bad_sample
        )


def die_with_parent(_worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: the kernel kills this worker when its parent dies, even by SIGKILL
    (Linux PR_SET_PDEATHSIG; elsewhere PyTorch's own parent check ends it within seconds)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def epoch_samples(urls, slots, consumed, cfg, seed, epoch, rank, shape) -> Iterator[dict]:
    """The rank's merged sample stream for an epoch, starting after `consumed` samples."""
    stream = RankStream(urls, slots, consumed, cfg, seed, epoch, rank, shape)
    if cfg.workers == 0:
        return iter(stream)
    loader = DataLoader(
        stream, batch_size=None, num_workers=len(slots), prefetch_factor=4, worker_init_fn=die_with_parent
    )
    return iter(loader)


def batches(
    samples: Iterator[dict], batch_size: int
) -> Iterator[tuple[list[str], torch.Tensor, int, list[str]]]:
    """Group good samples: (keys, frames uint8 (B, T, H, W, 3), stream positions used, bad-sample reasons).

    Bad samples (skip mode) use a stream position but no batch slot; a short final batch is dropped.
    """
    keys, frames, bad, used = [], [], [], 0
    for sample in samples:
        used += 1
        if "bad" in sample:
            bad.append(sample["bad"])
            continue
        keys.append(sample["key"])
        frames.append(sample["frames"])
        if len(keys) == batch_size:
            yield keys, torch.stack(frames), used, bad
            keys, frames, bad, used = [], [], [], 0


def to_video(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, T, 3, H, W) in [0, 1] on `device` (converted after the copy)."""
    return frames.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255.0)
