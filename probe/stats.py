"""Probe metrics and scene-level bootstrap confidence intervals.

Clips of one scene are strongly correlated (overlapping frames, one drive, one weather), so the
unit of resampling is the validation *scene*: each bootstrap replicate draws scenes with
replacement and takes all their clips. Every encoder is scored on the same replicates, so the
difference pretrained − best random is paired, and its interval accounts for the scene
sampling that both share.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
    r2_score,
)

from mvm.probe.tasks import Task

CI_LEVEL = 0.95


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]
) -> dict[str, float]:
    """balanced_accuracy, macro_f1 (over the classes present in y_true or y_pred), accuracy. Inputs (N,) labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred)),
        }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """r2 and mae (m/s). Inputs (N,) floats."""
    return {"r2": float(r2_score(y_true, y_pred)), "mae": float(mean_absolute_error(y_true, y_pred))}


def task_metrics(task: Task, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """All metrics of the task for (N,) targets and predictions."""
    if task.kind == "classification":
        return classification_metrics(y_true, y_pred, task.classes)
    return regression_metrics(y_true, y_pred)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in y_true (as sklearn's), without its overhead. (N,) labels."""
    _, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    true_codes, pred_codes = codes[: len(y_true)], codes[len(y_true) :]
    support = np.bincount(true_codes, minlength=codes.max() + 1)
    hits = np.bincount(true_codes[true_codes == pred_codes], minlength=codes.max() + 1)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination (NaN when y_true is constant). (N,) floats."""
    total = np.sum((y_true - y_true.mean()) ** 2)
    return float(1.0 - np.sum((y_true - y_pred) ** 2) / total) if total > 0 else float("nan")


def primary_metric_fn(task: Task) -> Callable[[np.ndarray, np.ndarray], float]:
    """(y_true (N,), y_pred (N,)) -> the task's primary metric (balanced accuracy or R²)."""
    return balanced_accuracy if task.kind == "classification" else r2


def scene_resamples(scenes: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """n_boot index arrays into the clips, each from scenes drawn with replacement.

    scenes: (N,) scene name per validation clip. The RNG is numpy's PCG64 seeded with `seed`, so
    the replicates depend only on (seed, the sorted scene names, the clip order).
    """
    names = np.unique(scenes)
    clips_of = [np.flatnonzero(scenes == name) for name in names]
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([clips_of[i] for i in rng.integers(0, len(names), len(names))]) for _ in range(n_boot)
    ]


def percentile_interval(values: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """Two-sided percentile interval of (n_boot,) bootstrap values, NaN replicates dropped."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_scores(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    predictions: dict[str, np.ndarray],
    resamples: list[np.ndarray],
) -> dict[str, np.ndarray]:
    """Primary metric of every predictor on every replicate: name -> (n_boot,) floats.

    y_true: (N,); predictions: name -> (N,) predictions of the same clips.
    A replicate whose targets are constant gives NaN for R² (undefined); balanced accuracy stays defined.
    """
    return {
        name: np.array([metric(y_true[index], y_pred[index]) for index in resamples])
        for name, y_pred in predictions.items()
    }


def paired_difference(pretrained: np.ndarray, randoms: list[np.ndarray]) -> np.ndarray:
    """Per replicate: pretrained − the best random encoder *on that replicate*. (n_boot,) arrays.

    Taking the max over random seeds inside each replicate (rather than fixing the best seed on the
    full set) is the conservative choice: the baseline gets every chance to win.
    """
    return pretrained - np.max(np.stack(randoms), axis=0)
