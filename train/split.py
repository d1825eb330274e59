"""Which clips each (rank, worker) reads in an epoch, and how many steps every rank runs.

Pure functions of the shards' clip counts, so every rank computes the same plan without
communicating.

Each epoch the shard list is permuted by a generator seeded from (seed, epoch); a clip's
*epoch index* is its position in the concatenation of the permuted shards. Then, per level
(ranks, then the workers of one rank):
- enough shards (at least one per slot): whole shards are dealt out greedily, in permuted
  order, to the slot holding the fewest clips so far (ties to the lowest slot). Slots read
  disjoint shards, so I/O is not duplicated.
- fewer shards than slots: every slot reads every shard of its parent and keeps the clips whose
  epoch index i satisfies i % modulus == residue. Clip sets stay disjoint and complete, but each
  slot reads (without decoding) the other slots' clips too: more I/O, never duplicated data.
Every rank then runs exactly `steps_per_epoch = min over ranks(rank clips // batch_size)` steps,
so no rank waits on a collective another rank never reaches; the clips beyond that count in a
rank's stream (the uneven remainder) are dropped for the epoch and differ from epoch to epoch.

A rank's workers feed the training process in strict round robin (PyTorch's DataLoader order;
an exhausted worker drops out of the cycle), which `consumed_per_worker` replays to resume mid-epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SlotPlan:
    """What one (rank, worker) slot reads in one epoch."""

    shards: tuple[tuple[int, int], ...]
    """(shard index in the resolved list, epoch index of its first clip), in reading order."""
    modulus: int
    """Keep a clip iff its epoch index % modulus == residue (modulus 1 keeps everything)."""
    residue: int
    """See modulus."""
    clips: int
    """Number of clips the slot yields."""


def _count_kept(start: int, count: int, modulus: int, residue: int) -> int:
    """How many i in [start, start + count) have i % modulus == residue."""

    def below(limit: int) -> int:
        return max(0, (limit - residue + modulus - 1) // modulus)

    return below(start + count) - below(start)


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The epoch's permutation of shard indices, seeded from (seed, epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5A4D]))
    return [int(i) for i in rng.permutation(num_shards)]


def _divide(
    shards: list[tuple[int, int]], counts: list[int], modulus: int, residue: int, parts: int
) -> list[SlotPlan]:
    """Split one slot's reading (shards + filter) into `parts` disjoint slots (see module docstring)."""
    kept = {index: _count_kept(start, counts[index], modulus, residue) for index, start in shards}
    if len(shards) >= parts:
        assigned: list[list[tuple[int, int]]] = [[] for _ in range(parts)]
        totals = [0] * parts
        for index, start in shards:
            target = min(range(parts), key=lambda part: (totals[part], part))
            assigned[target].append((index, start))
            totals[target] += kept[index]
        return [SlotPlan(tuple(assigned[p]), modulus, residue, totals[p]) for p in range(parts)]
    plans = []
    for part in range(parts):
        sub_modulus, sub_residue = modulus * parts, residue + modulus * part
        clips = sum(_count_kept(start, counts[index], sub_modulus, sub_residue) for index, start in shards)
        plans.append(SlotPlan(tuple(shards), sub_modulus, sub_residue, clips))
    return plans


def plan_epoch(counts: list[int], world: int, workers: int, seed: int, epoch: int) -> list[list[SlotPlan]]:
    """plan[rank][worker] for one epoch; `workers` 0 means the rank reads in-process (one slot)."""
    order = shard_order(len(counts), seed, epoch)
    starts, position = [], 0
    for index in order:
        starts.append((index, position))
        position += counts[index]
    per_rank = _divide(starts, counts, 1, 0, world)
    return [
        _divide(list(rank.shards), counts, rank.modulus, rank.residue, max(workers, 1)) for rank in per_rank
    ]


def steps_per_epoch(plan: list[list[SlotPlan]], batch_size: int) -> int:
    """Steps every rank runs this epoch: the smallest rank's clip count // batch_size."""
    return min(sum(slot.clips for slot in rank) for rank in plan) // batch_size


def consumed_per_worker(worker_clips: list[int], consumed: int) -> tuple[list[int], int]:
    """Replay the round robin over workers: how many samples each worker gave for the first `consumed`.

    Returns (taken per worker, the worker next in the cycle). Exhausted workers drop out of the cycle.
    """
    taken = [0] * len(worker_clips)
    last = len(worker_clips) - 1
    while consumed > 0:
        active = [w for w, clips in enumerate(worker_clips) if taken[w] < clips]
        if not active:
            raise ValueError("more samples consumed than the workers hold")
        rounds = min(min(worker_clips[w] - taken[w] for w in active), consumed // len(active))
        if rounds == 0:
            for w in active[:consumed]:
                taken[w] += 1
            last, consumed = active[consumed - 1], 0
        else:
            for w in active:
                taken[w] += rounds
            last, consumed = active[-1], consumed - rounds * len(active)
    return taken, (last + 1) % len(worker_clips)
