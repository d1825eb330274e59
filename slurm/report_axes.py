"""mvm-report's sweep axes: the runs of each axis grouped by point (seeds pooled), with mean and spread.

A sweep's experiment.json names the axes a point belongs to (slurm/grid.py); the runs of one axis
that differ only in their seed form a `Point`, whose numbers are the mean, the sample standard
deviation and the range over seeds. Bare runs (no experiment.json) belong to no axis.

    points(records, "data-compute")  # -> [Point(x=16, runs=[3 seeds]), Point(x=32, ...), ...]
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from mvm.report_format import MISSING, fmt
from mvm.slurm.report_collect import RunRecord

AXIS_X: dict[str, tuple[Callable[[RunRecord], object], str]] = {
    "data-compute": (lambda r: r.n_train_scenes, "training scenes (compute-matched: the same steps)"),
    "data-epoch": (lambda r: r.n_train_scenes, "training scenes (epoch-matched: steps in proportion)"),
    "T": (lambda r: r.clip_len, "clip length T (frames; the hidden horizon fixed)"),
    "ddp-global": (lambda r: r.world_size, "processes (the same global batch and learning rate)"),
    "ddp-rank": (lambda r: r.world_size, "processes (the same per-rank batch)"),
    "world": (lambda r: r.world, "synthetic world"),
}
"""axis -> (x value of a run, x label)."""


@dataclass(frozen=True)
class Point:
    """The runs of one axis point (all seeds)."""

    x: object
    runs: list[RunRecord]

    @property
    def overridden(self) -> bool:
        """Some seed ran under --no-gate."""
        return any(run.gate_override for run in self.runs)


@dataclass(frozen=True)
class Spread:
    mean: float
    sd: float | None
    """Sample standard deviation over seeds (None for one seed)."""
    low: float
    high: float
    n: int

    def text(self, digits: int = 3) -> str:
        """`mean ± sd (n)`, the one way a pooled number is written."""
        sd = f" ± {fmt(self.sd, digits)}" if self.sd is not None else ""
        return f"{fmt(self.mean, digits)}{sd} (n={self.n})"


def spread(values: list) -> Spread | None:
    """Mean and spread of the values that are numbers; None when there are none."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numbers:
        return None
    sd = statistics.stdev(numbers) if len(numbers) > 1 else None
    return Spread(statistics.fmean(numbers), sd, min(numbers), max(numbers), len(numbers))


def spread_text(values: list, digits: int = 3) -> str:
    found = spread(values)
    return found.text(digits) if found else MISSING


def _point_key(record: RunRecord) -> tuple:
    """Everything that makes a point but the seed."""
    return (record.data_scale, record.n_train_scenes, record.clip_len, record.world_size, record.batch_size,
            record.steps, record.world, record.preset)  # fmt: skip


def points(records: list[RunRecord], axis: str) -> list[Point]:
    """The axis's points, sorted by x (then by the rest of the key); empty when no run is on the axis."""
    x_of, _ = AXIS_X[axis]
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in records:
        if axis in record.axes:
            groups[_point_key(record)].append(record)
    found = [
        Point(x_of(runs[0]), sorted(runs, key=lambda r: (r.seed is None, r.seed))) for runs in groups.values()
    ]
    return sorted(found, key=lambda p: (p.x is None, p.x if p.x is not None else 0, _point_key(p.runs[0])))


def task_names(records: list[RunRecord]) -> list[str]:
    """Every probed task, the headline (primary) one first."""
    names = dict.fromkeys(r.probe_task for r in records if r.probe_task)
    for record in records:
        names.update(dict.fromkeys(record.tasks))
    return list(names)


def task_value(record: RunRecord, task: str, field: str = "pretrained"):
    """A task's number of one run (None when that run did not probe it)."""
    return (record.tasks.get(task) or {}).get(field)


def ci_half_width(record: RunRecord, task: str) -> float | None:
    ci = task_value(record, task, "ci")
    return None if not ci else (ci[1] - ci[0]) / 2
