"""mvm.train.split: disjoint, complete, equal-step shard splits for 1-4 ranks x 0-3 workers; resume replay."""

from __future__ import annotations

import itertools

import pytest

from mvm.train.split import consumed_per_worker, plan_epoch, steps_per_epoch

COUNT_SETS = [[5, 3, 7], [1], [4, 4, 4, 4, 4, 4, 1], [2, 9], [32, 32, 32, 32, 32, 7], [3] * 13]


def slot_indices(slot, counts) -> list[int]:
    """Epoch indices the slot yields, enumerated the slow way."""
    return [
        start + i
        for index, start in slot.shards
        for i in range(counts[index])
        if (start + i) % slot.modulus == slot.residue
    ]


@pytest.mark.parametrize(("world", "workers"), list(itertools.product([1, 2, 3, 4], [0, 1, 2, 3])))
@pytest.mark.parametrize("counts", COUNT_SETS)
def test_split_is_disjoint_complete_and_equal(counts, world, workers):
    for epoch in (0, 1):
        plan = plan_epoch(counts, world, workers, seed=7, epoch=epoch)
        assert len(plan) == world and all(len(rank) == max(workers, 1) for rank in plan)
        seen: list[int] = []
        for rank in plan:
            for slot in rank:
                indices = slot_indices(slot, counts)
                assert len(indices) == slot.clips
                seen += indices
        assert sorted(seen) == list(range(sum(counts)))  # complete and disjoint across all slots
        for batch in (1, 2, 4):
            steps = steps_per_epoch(plan, batch)
            # every rank holds enough clips for the common step count: no rank runs dry
            assert all(sum(slot.clips for slot in rank) >= steps * batch for rank in plan)
            assert steps == min(sum(slot.clips for slot in rank) for rank in plan) // batch


def test_enough_shards_means_no_shared_reads_and_balance():
    counts = [32] * 8 + [7]
    plan = plan_epoch(counts, 4, 2, seed=0, epoch=0)
    read = [index for rank in plan for slot in rank for index, _ in slot.shards]
    assert sorted(read) == list(range(9))  # each shard read by exactly one slot
    totals = [sum(slot.clips for slot in rank) for rank in plan]
    assert max(totals) - min(totals) <= 32


def test_order_changes_with_epoch_and_is_deterministic():
    counts = [3] * 10
    assert plan_epoch(counts, 2, 2, 0, 0) == plan_epoch(counts, 2, 2, 0, 0)
    assert plan_epoch(counts, 2, 2, 0, 0) != plan_epoch(counts, 2, 2, 0, 1)
    assert plan_epoch(counts, 2, 2, 0, 0) != plan_epoch(counts, 2, 2, 1, 0)


def round_robin(worker_clips: list[int]) -> list[int]:
    """Worker id of each sample, as PyTorch's DataLoader interleaves exhaustible iterable workers."""
    taken, order = [0] * len(worker_clips), []
    while any(t < c for t, c in zip(taken, worker_clips, strict=True)):
        for w, clips in enumerate(worker_clips):
            if taken[w] < clips:
                order.append(w)
                taken[w] += 1
    return order


@pytest.mark.parametrize("worker_clips", [[5], [3, 3], [1, 4, 2], [0, 3, 6], [2, 2, 2, 7]])
def test_consumed_per_worker_replays_round_robin(worker_clips):
    order = round_robin(worker_clips)
    for consumed in range(len(order) + 1):
        taken, phase = consumed_per_worker(worker_clips, consumed)
        assert taken == [order[:consumed].count(w) for w in range(len(worker_clips))]
        if consumed < len(order):
            # the next worker in the cycle that still has samples is the one that serves next
            candidates = [(phase + k) % len(worker_clips) for k in range(len(worker_clips))]
            nxt = next(w for w in candidates if taken[w] < worker_clips[w])
            assert nxt == order[consumed]
    with pytest.raises(ValueError):
        consumed_per_worker(worker_clips, sum(worker_clips) + 1)
