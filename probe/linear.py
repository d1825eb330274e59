"""Linear heads on frozen features, regularization chosen by scene-grouped cross-validation.

The head is a sklearn Pipeline (StandardScaler -> LogisticRegression or Ridge), so the
standardization is refitted inside every CV fold and, at the end, on the training clips only:
no statistic of the validation clips ever reaches the head. Cross-validation folds are whole
training scenes (GroupKFold): clips of one scene are near-duplicates, so a clip-level split
would reward memorising scenes and choose too little regularization.

Logistic regression uses class_weight="balanced" (the same for every encoder compared), so a
head is not rewarded for predicting the ~74% `straight` class everywhere.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from probe.tasks import Task

LOGISTIC_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
"""Inverse L2 strengths tried for logistic regression (features are standardized, so one grid fits all encoders)."""
RIDGE_ALPHA_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
"""L2 strengths tried for ridge regression."""
MAX_CV_FOLDS = 5
"""Scene-grouped folds (fewer when there are fewer training scenes)."""


@dataclass(frozen=True)
class FittedHead:
    """A fitted linear head and how its regularization was chosen."""

    pipeline: Pipeline
    """StandardScaler -> LogisticRegression | Ridge, fitted on all training clips."""
    regularization: float
    """The chosen C (logistic) or alpha (ridge)."""
    cv_score: float
    """Mean grouped-CV score of the chosen setting (balanced accuracy or R²); NaN if no CV ran."""


def _pipeline(task: Task) -> tuple[Pipeline, str, tuple[float, ...], str]:
    if task.kind == "classification":
        head = LogisticRegression(class_weight="balanced", max_iter=5000)
        return (
            Pipeline([("scale", StandardScaler()), ("head", head)]),
            "head__C",
            LOGISTIC_C_GRID,
            "balanced_accuracy",
        )
    return Pipeline([("scale", StandardScaler()), ("head", Ridge())]), "head__alpha", RIDGE_ALPHA_GRID, "r2"


def fit_head(task: Task, features: np.ndarray, targets: np.ndarray, scenes: np.ndarray) -> FittedHead:
    """Fit the task's linear head with its regularization chosen by scene-grouped CV.

    features: (N, F) float; targets: (N,) class names or floats; scenes: (N,) scene names (CV groups).
    Classification needs at least two classes in the training clips (ValueError otherwise). With
    fewer than two training scenes no CV is possible and the middle of the grid is used.
    """
    pipeline, param, grid, scoring = _pipeline(task)
    if task.kind == "classification" and len(np.unique(targets)) < 2:
        raise ValueError(
            f"the training clips hold a single class {np.unique(targets).tolist()}: nothing to probe"
        )
    n_folds = min(MAX_CV_FOLDS, len(np.unique(scenes)))
    # One BLAS thread: these fits are small, so threads only add overhead (3x slower on 2 shared
    # cores) and make float sums depend on the thread count.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # Scene folds can miss a rare class; scores then warn but stay well defined.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        if n_folds < 2:
            chosen = grid[len(grid) // 2]
            pipeline.set_params(**{param: chosen}).fit(features, targets)
            return FittedHead(pipeline, chosen, float("nan"))
        search = GridSearchCV(pipeline, {param: list(grid)}, scoring=scoring, cv=GroupKFold(n_splits=n_folds))
        search.fit(features, targets, groups=scenes)
    return FittedHead(search.best_estimator_, float(search.best_params_[param]), float(search.best_score_))


def predict(head: FittedHead, features: np.ndarray) -> np.ndarray:
    """(N, F) features -> (N,) predicted class names or floats."""
    return head.pipeline.predict(features)
