"""Streaming clips from WebDataset shards (format: shards/README.md) as small generator stages.

Pipeline of one rank, per epoch (train.split decides who reads what):
    shard list -> this rank's slots -> this worker's slot -> raw samples (tar members grouped by key,
    filtered by epoch index) -> seeded shuffle buffer -> skip already consumed (resume) -> decode
    -> main process: round robin over workers -> batches of uint8 clips -> float (B, T, 3, H, W).
Seeds come from (seed, epoch, rank, worker). The tars are read with `tarfile` in WebDataset's
layout (members `<key>.<ext>`, consecutive per key), which lets errors name the shard and key.
"""

from __future__ import annotations

import glob
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import braceexpand
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ingest.video import decode_clip
from train.split import SlotPlan, consumed_per_worker


class ShardError(ValueError):
    """A shard spec that does not resolve, or a shard/sample that cannot be read; names the file."""


def _resolve_one(part: str) -> list[str]:
    path = Path(part)
    if path.is_dir():
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise ShardError(
                f"shard folder {part} has no manifest.json (incomplete or not an mvm-ingest output)"
            )
        return [str(path / shard["name"]) for shard in json.loads(manifest.read_text())["shards"]]
    if "{" in part:
        return list(braceexpand.braceexpand(part))
    if any(char in part for char in "*?["):
        matches = sorted(glob.glob(part))
        if not matches:
            raise ShardError(f"shard pattern {part} matches no file")
        return matches
    return [part]


def resolve_shards(spec: str) -> list[str]:
    """Shard paths from a brace pattern, a folder with manifest.json, a glob, or a comma list of those.

    Raises ShardError naming every missing shard before any work is done.
    """
    urls = [url for part in spec.split(",") if part.strip() for url in _resolve_one(part.strip())]
    if not urls:
        raise ShardError(f"shard spec {spec!r} names no shards")
    missing = [url for url in urls if not Path(url).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ShardError(f"{len(missing)} of {len(urls)} shards missing: {shown}")
    return urls


def _manifest_of(url: str) -> dict | None:
    manifest = Path(url).parent / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def _count_tar_clips(url: str) -> int:
    try:
        with tarfile.open(url) as tar:
            return sum(1 for name in tar.getnames() if name.endswith(".mp4"))
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ShardError(f"shard {url} is not a readable tar: {error}") from error


def shard_clip_counts(urls: list[str]) -> list[int]:
    """Clips per shard, from the manifest next to each shard (or by listing the tar when there is none)."""
    counts = []
    for url in urls:
        manifest = _manifest_of(url)
        by_name = {shard["name"]: shard["clips"] for shard in manifest["shards"]} if manifest else {}
        counts.append(by_name[Path(url).name] if Path(url).name in by_name else _count_tar_clips(url))
    return counts


def clip_shape(urls: list[str]) -> tuple[int, tuple[int, int]]:
    """(clip_len, (H, W)) from the first shard's manifest config, else from its first sample's metadata."""
    manifest = _manifest_of(urls[0])
    if manifest:
        return int(manifest["config"]["clip_len"]), tuple(manifest["config"]["size"])
    for sample in iter_samples(urls[0]):
        meta = json.loads(sample["json"])
        return int(meta["clip_len"]), tuple(meta["size"])
    raise ShardError(f"shard {urls[0]} holds no samples")


def iter_samples(url: str) -> Iterator[dict]:
    """Raw samples of one shard in file order: {"key", "url", "index" (position in shard), "<ext>": bytes}."""
    current: dict | None = None
    index = 0
    try:
        with tarfile.open(url, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = Path(member.name).name
                key, _, ext = name.partition(".")
                if current is not None and key != current["key"]:
                    yield current
                    index += 1
                    current = None
                if current is None:
                    current = {"key": key, "url": url, "index": index}
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, AttributeError) as error:
        raise ShardError(f"shard {url} is corrupt or truncated after sample {index}: {error}") from error
    if current is not None:
        yield current


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
