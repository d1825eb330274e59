"""Streaming clips from WebDataset shards (format: shards/README.md) as small generator stages.

Pipeline of one rank (mvm.train.split decides who reads what, epoch by epoch):
    per epoch: shard list -> this rank's slots -> this worker's slot -> raw samples (tar members
    grouped by key, filtered by epoch index) -> seeded shuffle buffer -> skip already consumed
    (resume) -> decode (I420 planes or RGB, `hands_over_i420`) -> items tagged with their epoch;
    main process: round robin over workers that live across epochs (RankStream) -> split back into
    epochs (EpochReader) -> batches of uint8 clips (each repeated `repeat_aug` times; in pinned
    memory for a CUDA device) -> on the training device: float (B, T, 3, H, W).
Seeds come from (seed, epoch, rank, worker). Shards are read only through mvm.shards: every
shard must be listed in its folder's manifest (names validated, never outside the folder) and is
checked against the manifest's sha256 the first time a process opens it.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mvm.nvdec import NVDEC, decode_i420_cuda, nvdec_runs
from mvm.shards import DamagedShardError, ShardError

# The one sample reader: raw samples {"key", "url", "index", "<ext>": bytes} of a listed shard,
# its sha256 checked against the manifest on first open in this process.
from mvm.shards import iter_verified as iter_samples
from mvm.train.split import SlotPlan, consumed_per_worker, plan_epoch
from mvm.video import decode_clip, decode_i420


def decode_sample(
    sample: dict, decoder: str, shape: tuple[int, int, int, int] | None, i420: bool = False
) -> tuple[np.ndarray, dict]:
    """mp4 + json of a raw sample -> (frames, metadata); ShardError naming shard and key.

    frames: uint8 (T, H, W, 3) RGB from `decoder` (a DataConfig.decoder or an mvm.video decoder
    name), or with i420=True uint8 (T, 3H/2, W) I420 planes from PyAV (mvm.video.decode_i420), or
    from NVDEC as a CUDA tensor for decoder "nvdec" where it runs (mvm.nvdec; elsewhere PyAV, with
    one warning). shape: the expected RGB (T, H, W, 3), checked either way.
    """
    where = f"shard {sample['url']}, sample {sample['key']}"
    if "mp4" not in sample or "json" not in sample:
        raise ShardError(
            f"{where}: needs .mp4 and .json members, has {sorted(set(sample) - {'key', 'url', 'index'})}"
        )
    try:
        meta = json.loads(sample["json"])
        on_gpu = decoder == NVDEC and nvdec_runs()  # where it cannot run: says why, once
        if i420:
            frames = decode_i420_cuda(sample["mp4"]) if on_gpu else decode_i420(sample["mp4"])
        else:
            frames = decode_clip(sample["mp4"], backend=rgb_decoder(decoder))
    except Exception as error:  # decord, PyAV and torchcodec raise their own types for broken streams
        raise DamagedShardError(f"{where}: cannot decode: {error}") from error
    if shape is not None:
        clip_len, height, width, _ = shape
        expected = (clip_len, height * 3 // 2, width) if i420 else tuple(shape)
        if frames.shape != expected:
            raise DamagedShardError(f"{where}: decoded shape {frames.shape}, expected {expected}")
    return frames, meta


def hands_over_i420(decoder: str) -> bool:
    """Whether the trainer's workers hand over I420 planes for DataConfig.decoder `decoder`.

    "pyav-i420": always; "auto" and "nvdec": when CUDA is available (the batch is converted on the
    GPU, where it costs nothing; on a CPU the conversion in the training process costs more than
    the workers' RGB decode saves); a named RGB decoder: never. Called in the main process, before
    workers fork.
    """
    return decoder == "pyav-i420" or (decoder in ("auto", NVDEC) and torch.cuda.is_available())


def rgb_decoder(decoder: str) -> str:
    """The mvm.video decoder name behind a DataConfig.decoder ("pyav-i420" and "nvdec" decode RGB with PyAV)."""
    return "pyav" if decoder in ("pyav-i420", NVDEC) else decoder


def iter_clips(
    urls: list[str], decoder: str = "auto", i420: bool = False
) -> Iterator[tuple[str, np.ndarray, dict]]:
    """(key, frames, metadata) for every clip, in file then sample order (single process).

    frames: uint8 (T, H, W, 3) RGB, or uint8 (T, 3H/2, W) I420 planes with i420=True.
    """
    for url in urls:
        for sample in iter_samples(url):
            frames, meta = decode_sample(sample, decoder, None, i420)
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


def decoded(samples: Iterator[dict], decoder: str, i420: bool, shape, on_bad_sample: str) -> Iterator[dict]:
    """{"key", "frames"} per sample; with on_bad_sample="skip" a bad one becomes {"key", "bad"}.

    frames: uint8 (T, 3H/2, W) I420 planes with i420, else uint8 (T, H, W, 3) RGB from `decoder`.
    """
    for sample in samples:
        try:
            if "error" in sample:
                raise ShardError(sample["error"])
            frames, _ = decode_sample(sample, decoder, shape, i420)
        except ShardError as error:
            if on_bad_sample != "skip":
                raise
            yield {"key": sample["key"], "bad": str(error)}
            continue
        yield {"key": sample["key"], "frames": torch.as_tensor(frames)}  # numpy, or CUDA from nvdec


@dataclass(frozen=True)
class EpochPlans:
    """epoch -> one rank's slots (mvm.train.split.plan_epoch): picklable, so each worker plans for itself."""

    counts: tuple[int, ...]
    world: int
    workers: int
    seed: int
    rank: int

    def __call__(self, epoch: int) -> list[SlotPlan]:
        return plan_epoch(list(self.counts), self.world, self.workers, self.seed, epoch)[self.rank]


HANDOVER_CLIPS = 8
"""Items a worker hands over at once, their clips stacked in one tensor. Each hand-over costs the training
process about 0.5 ms of CPU (a shared-memory segment and a file descriptor per tensor; 2-core x86 box),
whatever its size: in groups of 8 a clip costs 4x (440 KB clips) to 7x (24 KB) less, and the trainer's
stream delivers about 2x the rows/s with 1 or 2 workers (side by side, bench/loader_scaling.py's measure)."""


def handovers(items: Iterator[dict], epoch: int, count: int) -> Iterator[dict]:
    """`count` items (`items`, cut or padded with fillers {}) in groups of HANDOVER_CLIPS, count a multiple
    of it: {"epoch", "items": [{"key"} | {"key", "bad"} | {}], "frames": (good items, ...) uint8 or None}."""
    padded = itertools.chain(itertools.islice(items, count), itertools.repeat({}))
    for _ in range(count // HANDOVER_CLIPS):
        group = [dict(item) for item in itertools.islice(padded, HANDOVER_CLIPS)]
        clips = [item.pop("frames") for item in group if "frames" in item]
        yield {"epoch": epoch, "items": group, "frames": torch.stack(clips) if clips else None}


class RankStream(IterableDataset):
    """One rank's samples, epoch after epoch, from (start_epoch, consumed), as `handovers`; each DataLoader
    worker runs one slot of every epoch's plan, so the workers live as long as the stream.

    Every worker hands over the same number of items per epoch (its samples, then fillers, rounded up to
    whole hand-overs), so the DataLoader's strict round robin over workers crosses each epoch boundary at
    worker 0 and EpochReader can deal the items out one by one, worker after worker: dropping the fillers
    gives exactly the order of a fresh round robin per epoch in which an exhausted worker leaves the cycle
    (mvm.train.split.consumed_per_worker).
    """

    def __init__(self, urls, plans: Callable[[int], list[SlotPlan]], start_epoch: int, consumed: int, cfg,
                 seed: int, rank: int, shape, epochs: int | None = None):  # fmt: skip
        self.urls, self.plans, self.cfg, self.shape = urls, plans, cfg, shape
        self.start_epoch, self.consumed, self.epochs = start_epoch, consumed, epochs
        self.seed, self.rank = seed, rank
        self.resumed_at(plans(start_epoch))  # a position that does not fit fails here, not in a worker
        self.i420 = hands_over_i420(cfg.decoder)

    def resumed_at(self, slots: list[SlotPlan]) -> tuple[list[int], int]:
        """(samples each worker already gave in the start epoch, the worker next in the cycle)."""
        try:
            return consumed_per_worker([slot.clips for slot in slots], self.consumed)
        except ValueError:  # a checkpoint position from other data (check_same_data stops that first)
            raise ShardError(
                f"the checkpoint's data position ({self.consumed} samples into epoch {self.start_epoch} on rank "
                f"{self.rank}) does not fit these shards ({sum(slot.clips for slot in slots)} samples); "
                "start a new run folder"
            ) from None

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        epoch = self.start_epoch
        while self.epochs is None or epoch < self.start_epoch + self.epochs:
            slots = self.plans(epoch)
            if max(slot.clips for slot in slots) == 0:
                return  # nothing to read in any epoch (data_stream says why)
            skip, phase = self.resumed_at(slots) if epoch == self.start_epoch else ([0] * len(slots), 0)
            # The round robin starts at physical worker 0; rotating makes a resumed stream continue
            # with the worker that was next in the interrupted run (later epochs start at worker 0).
            worker = (physical + phase) % len(slots)
            longest = max(slot.clips - done for slot, done in zip(slots, skip, strict=True))
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, self.rank, worker]))
            samples = shuffled(slot_samples(self.urls, slots[worker]), self.cfg.shuffle_buffer, rng)
            items = decoded(skipped(samples, skip[worker]), self.cfg.decoder, self.i420, self.shape,
                            self.cfg.on_bad_sample)  # fmt: skip
            # A damaged shard gives fewer items than planned (fillers make up for them), or one error
            # record more, after all of its planned samples (dropped: no sample is lost).
            yield from handovers(items, epoch, -(-longest // HANDOVER_CLIPS) * HANDOVER_CLIPS)
            epoch += 1


class EpochReader:
    """The training process's side of a RankStream: its hand-overs dealt out item by item, worker after
    worker, and split back into epochs, fillers dropped."""

    def __init__(self, handed_over: Iterator[dict], workers: int):
        self.handed_over = handed_over
        self.queues: list[deque[dict]] = [deque() for _ in range(max(workers, 1))]
        """Per worker: its items not yet dealt (each with its epoch, and its clip as a view of the stack)."""
        self.turn = 0
        """The worker whose item comes next."""

    def next_item(self) -> dict | None:
        """The item whose turn it is, not yet taken (None when the stream has ended)."""
        queue = self.queues[self.turn]
        if not queue:
            handover = next(self.handed_over, None)  # the DataLoader's round robin: this worker's next
            if handover is None:
                return None
            clips = iter(handover["frames"] if handover["frames"] is not None else ())
            for item in handover["items"]:
                item = {"epoch": handover["epoch"], **item}
                if "key" in item and "bad" not in item:
                    item["frames"] = next(clips)
                queue.append(item)
        return queue[0]

    def samples(self, epoch: int) -> Iterator[dict]:
        """Epoch `epoch`'s samples; what an earlier epoch left unread is dropped first. Call it once per
        epoch, in order; it stops at the first item of a later epoch (kept for the next call)."""
        while (item := self.next_item()) is not None and item["epoch"] <= epoch:
            self.queues[self.turn].popleft()
            self.turn = (self.turn + 1) % len(self.queues)
            if item["epoch"] == epoch and "key" in item:
                yield item


def die_with_parent(_worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: the kernel kills this worker when its parent dies, even by SIGKILL
    (Linux PR_SET_PDEATHSIG; elsewhere PyTorch's own parent check ends it within seconds)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def rank_handovers(stream: RankStream, workers: int, ahead: int) -> Iterator[dict]:
    """The stream's hand-overs, read in process (workers 0) or merged from `workers` DataLoader workers
    that live until the iterator is dropped and decode up to `ahead` clips ahead of the training process.

    ahead: two batches' clips, so the workers decode the next batch while a step runs. (The DataLoader's
    own default, 2 items per worker, keeps fewer clips ready than one batch needs: the training process
    then waits for the rest of every batch after its step, whatever the number of workers.)
    """
    if workers == 0:
        return iter(stream)
    per_worker = max(2, -(-ahead // (workers * HANDOVER_CLIPS)))
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=per_worker,
        worker_init_fn=die_with_parent,
    )
    return iter(loader)


def rank_reader(urls, plans: Callable[[int], list[SlotPlan]], cfg, seed: int, rank: int, start_epoch: int,
                consumed: int, shape, epochs: int | None = None) -> EpochReader:  # fmt: skip
    """The training process's reader of one rank's RankStream (arguments: see there), with its workers
    two steps' clips ahead."""
    stream = RankStream(urls, plans, start_epoch, consumed, cfg, seed, rank, shape, epochs)
    return EpochReader(rank_handovers(stream, cfg.workers, 2 * cfg.batch_size // cfg.repeat_aug), cfg.workers)


def epoch_samples(urls, slots, consumed, cfg, seed, epoch, rank, shape) -> Iterator[dict]:
    """One epoch of the rank's merged sample stream (slots: its plan), starting after `consumed` samples."""
    # A dict's bound __getitem__ pickles, where a lambda would not (workers started by spawn/forkserver).
    return rank_reader(urls, {epoch: slots}.__getitem__, cfg, seed, rank, epoch, consumed, shape, 1).samples(
        epoch
    )


def _say_skipped(reason: str) -> None:
    print(f"skipped bad sample: {reason}", file=sys.stderr, flush=True)


def batches(
    samples: Iterator[dict],
    batch_size: int,
    repeat_aug: int = 1,
    on_bad: Callable[[str], None] = _say_skipped,
    pin_memory: bool = False,
) -> Iterator[tuple[list[str], torch.Tensor, int]]:
    """Group good samples: (keys, frames (B, ...) uint8, stream positions used).

    frames: (B, T, H, W, 3) RGB or (B, T, 3H/2, W) I420, as the workers hand them over; with
    pin_memory in page-locked memory, so the copy to a CUDA device runs asynchronously. With
    repeat_aug K (MAE-ST's repeated sampling) a batch holds batch_size / K decoded clips, each
    repeated K times in a row (keys too); the masks are drawn per batch row, so each repeat gets
    its own. Bad samples (skip mode) use a stream position but no batch slot; each one's reason
    goes to `on_bad` (default: printed on stderr) as soon as it is read, so one that lands in the
    short final batch, which is dropped, is reported too.
    """
    clips_per_batch = batch_size // repeat_aug
    keys, frames, used = [], [], 0
    for sample in samples:
        used += 1
        if "bad" in sample:
            on_bad(sample["bad"])
            continue
        keys.append(sample["key"])
        frames.append(sample["frames"])
        if len(keys) == clips_per_batch:
            rows = [clip for clip in frames for _ in range(repeat_aug)]
            # One copy from the workers' shared memory into the batch, pinned when asked for.
            # Clips NVDEC decoded are already on the GPU: stacked there, never pinned on the host.
            on_host = rows[0].device.type == "cpu"
            stacked = torch.empty(
                (len(rows), *rows[0].shape),
                dtype=rows[0].dtype,
                device=rows[0].device,
                pin_memory=pin_memory and on_host,
            )
            yield [key for key in keys for _ in range(repeat_aug)], torch.stack(rows, out=stacked), used
            keys, frames, used = [], [], 0
