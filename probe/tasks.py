"""Proxy tasks of the probe: targets computed from the clip metadata alone (no nuScenes re-read).

- `ego-motion` (classification, primary metric balanced accuracy): `stopped` / `straight` /
  `left` / `right` from the clip's ego poses via `mvm.ego_motion` (positive yaw rate =
  counter-clockwise = left, as in nuScenes' global frame).
- `speed` (regression, primary metric R²): mean ego speed in m/s over the clip.
- `depth` (per-token regression of log depth, primary metric delta < 1.25): targets from the shards'
  LIDAR_TOP depth maps, not from this module; see mvm.probe.depth.

Both recompute the motion from `timestamps`, `ego_translation` and `ego_rotation` rather than
trusting the derived `speed_mps` / `yaw_rate_rps` fields, so shards and labels cannot disagree
about the definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvm.ego_motion import EGO_MOTION_CLASSES, MotionThresholds, clip_motion, ego_motion_label

DEPTH = "depth"
TASKS = ("ego-motion", "speed", DEPTH)
CLIP_TASKS = ("ego-motion", "speed")
"""The tasks with one target per clip (mvm.probe.evaluate); depth has one per token."""


@dataclass(frozen=True)
class Task:
    """What the probe predicts and how it is scored."""

    name: str
    """One of TASKS."""
    kind: str
    """Either "classification" or "regression"."""
    metric: str
    """Primary metric the gate compares: "balanced_accuracy", "r2" or "delta_1.25"."""
    classes: tuple[str, ...]
    """Class names in report order (empty for regression)."""
    thresholds: MotionThresholds
    """Speed / yaw-rate thresholds of the ego-motion classes (also recorded for `speed`)."""


def make_task(name: str, thresholds: MotionThresholds = MotionThresholds()) -> Task:
    """The Task called `name`; ValueError for an unknown name."""
    if name == "ego-motion":
        return Task(name, "classification", "balanced_accuracy", EGO_MOTION_CLASSES, thresholds)
    if name == "speed":
        return Task(name, "regression", "r2", (), thresholds)
    if name == DEPTH:  # its heads are ridge regressions (mvm.probe.linear), scored by mvm.probe.depth
        return Task(name, "regression", "delta_1.25", (), thresholds)
    raise ValueError(f"unknown task {name!r}; expected one of {TASKS}")


def clip_target(task: Task, meta: dict) -> str | float:
    """The target of one clip: its ego-motion class name, or its mean speed in m/s."""
    if task.name not in CLIP_TASKS:
        raise ValueError(f"task {task.name!r} has no per-clip target")
    speed, yaw_rate = clip_motion(meta["timestamps"], meta["ego_translation"], meta["ego_rotation"])
    if task.kind == "classification":
        return ego_motion_label(speed, yaw_rate, task.thresholds)
    return speed


def targets(task: Task, metas: list[dict]) -> np.ndarray:
    """Targets of many clips: (N,) str class names or (N,) float64 speeds."""
    values = [clip_target(task, meta) for meta in metas]
    return np.array(values, dtype=str if task.kind == "classification" else np.float64)


def class_counts(task: Task, labels: np.ndarray) -> dict[str, int]:
    """Clips per class, every class of the task listed (zeros included), in task order."""
    return {name: int(np.sum(labels == name)) for name in task.classes}
