"""Compare encoders on identical splits: linear heads, baselines, bootstrap intervals, verdict.

Pure computation on already-extracted features, so it is tested on planted feature sets and
reused unchanged by the CLI. Encoder names: "pretrained" and "random-<seed>" (any number of
random seeds, at least one).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from probe.gate import decide
from probe.linear import fit_head, predict
from probe.stats import (
    CI_LEVEL,
    bootstrap_scores,
    paired_difference,
    percentile_interval,
    primary_metric_fn,
    scene_resamples,
    task_metrics,
)
from probe.tasks import Task, class_counts

PRETRAINED = "pretrained"
MAJORITY = "majority"


def random_name(seed: int) -> str:
    """Encoder name of the random initialisation with this seed."""
    return f"random-{seed}"


@dataclass
class Split:
    """Features of every encoder on one set of clips, with targets and scenes (same clip order)."""

    features: dict[str, np.ndarray]
    """Encoder name -> (N, F) float32 pooled features."""
    targets: np.ndarray
    """(N,) class names or speeds."""
    scenes: np.ndarray
    """(N,) scene name of each clip."""


def shared_scenes(train_scenes, val_scenes) -> list[str]:
    """Sorted scene names present in both sets."""
    return sorted(set(train_scenes) & set(val_scenes))


def majority_predictions(task: Task, train_targets: np.ndarray, n_val: int) -> np.ndarray:
    """The constant baseline: the most frequent training class (ties: task order), or the mean speed. (n_val,)."""
    if task.kind == "classification":
        counts = Counter(train_targets.tolist())
        top = max(counts.values())
        winner = next(name for name in task.classes if counts.get(name, 0) == top)
        return np.full(n_val, winner)
    return np.full(n_val, float(np.mean(train_targets)))


def evaluate_encoders(task: Task, train: Split, val: Split, n_boot: int = 1000, seed: int = 0) -> dict:
    """Fit one head per encoder on `train`, score on `val`, bootstrap over val scenes, decide the gate.

    Returns a JSON-ready dict (see probe/report_files.py for the fields) plus, under the key
    "_predictions", name -> (N_val,) predictions for plotting (not serialised).
    """
    overlap = shared_scenes(train.scenes, val.scenes)
    if overlap:
        raise ValueError(f"train and val share scenes {overlap}")
    randoms = sorted(
        (name for name in train.features if name != PRETRAINED), key=lambda n: int(n.split("-")[1])
    )
    if PRETRAINED not in train.features or not randoms:
        raise ValueError("need a 'pretrained' encoder and at least one 'random-<seed>' encoder")

    metric = primary_metric_fn(task)
    predictions: dict[str, np.ndarray] = {}
    encoders: dict[str, dict] = {}
    for name in [PRETRAINED, *randoms]:
        head = fit_head(task, train.features[name], train.targets, train.scenes)
        predictions[name] = predict(head, val.features[name])
        encoders[name] = {
            **task_metrics(task, val.targets, predictions[name]),
            "regularization": head.regularization,
            "cv_score": head.cv_score,
            "feature_dim": int(train.features[name].shape[1]),
        }
    predictions[MAJORITY] = majority_predictions(task, train.targets, len(val.targets))
    encoders[MAJORITY] = task_metrics(task, val.targets, predictions[MAJORITY])

    resamples = scene_resamples(val.scenes, n_boot, seed)
    boot = bootstrap_scores(metric, val.targets, predictions, resamples)
    for name, values in boot.items():
        encoders[name]["ci"] = list(percentile_interval(values))
    difference = paired_difference(boot[PRETRAINED], [boot[name] for name in randoms])

    random_scores = {name: encoders[name][task.metric] for name in randoms}
    best_random = max(randoms, key=lambda name: random_scores[name])
    point_difference = encoders[PRETRAINED][task.metric] - random_scores[best_random]
    difference_ci = percentile_interval(difference)
    # Informational: against the one seed that is best on the full set (less strict than the gate's).
    fixed_seed_ci = percentile_interval(boot[PRETRAINED] - boot[best_random])
    verdict = decide(
        encoders[PRETRAINED][task.metric],
        random_scores[best_random],
        difference_ci,
        task.metric,
        len(np.unique(val.scenes)),
    )
    values = np.array(list(random_scores.values()))

    result = {
        "task": task.name,
        "metric": task.metric,
        "pretrained": encoders[PRETRAINED],
        "random": {
            "per_seed": {name.split("-")[1]: encoders[name] for name in randoms},
            "summary": {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "best": random_scores[best_random],
                "best_seed": int(best_random.split("-")[1]),
            },
        },
        "majority": encoders[MAJORITY],
        "difference": float(point_difference),
        "difference_ci": list(difference_ci),
        "difference_ci_vs_best_seed": list(fixed_seed_ci),
        "gate": verdict.gate,
        "reason": verdict.reason,
        "n_train_clips": len(train.targets),
        "n_val_clips": len(val.targets),
        "n_train_scenes": len(np.unique(train.scenes)),
        "n_val_scenes": len(np.unique(val.scenes)),
        "bootstrap": {"replicates": n_boot, "seed": seed, "unit": "validation scene", "level": CI_LEVEL},
        "thresholds": {
            "stopped_speed_mps": task.thresholds.stopped_speed_mps,
            "turn_yaw_rate_rps": task.thresholds.turn_yaw_rate_rps,
        },
        "_predictions": predictions,
    }
    if task.kind == "classification":
        result["classes"] = list(task.classes)
        result["class_counts"] = {
            "train": class_counts(task, train.targets),
            "val": class_counts(task, val.targets),
        }
    else:
        result["target_summary"] = {
            split: {
                "mean": float(np.mean(y)),
                "std": float(np.std(y)),
                "min": float(np.min(y)),
                "max": float(np.max(y)),
            }
            for split, y in (("train", train.targets), ("val", val.targets))
        }
    return result
