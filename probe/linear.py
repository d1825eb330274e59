"""Linear heads on frozen features, regularization chosen by scene-grouped cross-validation.

The head is a sklearn Pipeline (StandardScaler -> LogisticRegression or Ridge), so the
standardization is refitted inside every CV fold and, at the end, on the training clips only:
no statistic of the validation clips ever reaches the head. Cross-validation folds are whole
training scenes (GroupKFold): clips of one scene are near-duplicates, so a clip-level split
would reward memorising scenes and choose too little regularization.

With more features than training clips (grid-pooled features: 3 x 28 cells x 128 channels for the
tiny preset), the standardized features are projected onto the span of the fitting clips
(`RowSpace`). For an L2-penalized linear model this is exact, not an approximation: the optimal
weights lie in that span (representer theorem), and weights in the span see only the projection
of any clip, so fits, CV scores and predictions are those of the full features (up to the
solver's stopping tolerance: sklearn's default 1e-4, which moves a few borderline predictions;
1e-6 doubles the cost and still moves some), at a cost that grows with the number of clips instead of the feature count.
Each CV fold standardizes and projects once and reuses that for every regularization tried.

Logistic regression uses class_weight="balanced" (the same for every encoder compared), so a
head is not rewarded for predicting the ~74% `straight` class everywhere.

Choosing the regularization (`choose_regularization`): the one-standard-error rule. The best mean
grouped-CV score sets a bar one standard error (over the folds) below it, and the most regularized
grid value whose mean clears the bar is chosen: values within the noise of the best are not told
apart by the CV, so the simplest head among them wins, and a small change of machine or data
cannot flip the choice between two values that score alike (the previous rule, the argmax of the
mean, flipped a random encoder's C between two machines). Grid values whose fold scores are
identical are one head (with enough penalty the predictions stop changing: a logistic head at
tiny C is the limit classifier of its centroid directions), so when the choice is the most
regularized end and the next values score identically, the rule takes the least regularized of
that run: a choice at the grid's end is a real edge only when the scores still change there. A choice on either end of the grid is reported (`FittedHead.on_edge`):
the best value may then lie beyond the grid.

The grids span 8 (C) and 9 (alpha) decades: the earlier ones (C 1e-3..10, alpha 0.1..1e4) put
random encoders' choices on the edge (C = 1e-3) on the demo's data, where grid-pooled features have
~10^4 dimensions and ~400 clips.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, cpu_count, delayed
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import get_scorer
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mvm.probe.tasks import Task

LOGISTIC_C_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
"""Inverse L2 strengths tried for logistic regression, most regularized first (features are
standardized, so one grid fits all encoders)."""
RIDGE_ALPHA_GRID = (1e6, 1e5, 1e4, 1e3, 100.0, 10.0, 1.0, 0.1, 0.01, 1e-3)
"""L2 strengths tried for ridge regression, most regularized first."""
MAX_CV_FOLDS = 5
"""Scene-grouped folds (fewer when there are fewer training scenes)."""


class RowSpace(TransformerMixin, BaseEstimator):
    """Project (N, F) features onto an orthonormal basis of the rows seen by `fit`, when F > N.

    fit(X (N, F)) keeps V (F, r), r <= N, the directions of the rows: from the eigenvectors U and
    eigenvalues s² of the Gram matrix X Xᵀ (N x N, far cheaper than an SVD of X when F >> N),
    V = Xᵀ U / s for the eigenvalues above RANK_TOLERANCE x the largest. transform(X' (M, F)) ->
    X' V (M, r). With F <= N it is the identity. Rows that are all zero (a constant feature set
    after standardization, e.g. `flow` on the static view) span nothing: V is then one zero
    column, so the head still fits and predicts from its intercept alone.
    """

    RANK_TOLERANCE = 1e-10

    def fit(self, features, targets=None):
        features = np.asarray(features, dtype=np.float64)
        self.basis_ = None
        if features.shape[1] > features.shape[0]:
            eigenvalues, vectors = np.linalg.eigh(features @ features.T)
            keep = eigenvalues > max(eigenvalues[-1], 0.0) * self.RANK_TOLERANCE
            if not keep.any():
                self.basis_ = np.zeros((features.shape[1], 1))
                return self
            self.basis_ = features.T @ (vectors[:, keep] / np.sqrt(eigenvalues[keep]))
        return self

    def transform(self, features):
        features = np.asarray(features, dtype=np.float64)
        return features if self.basis_ is None else features @ self.basis_


@dataclass(frozen=True)
class FittedHead:
    """A fitted linear head and how its regularization was chosen."""

    pipeline: Pipeline
    """StandardScaler -> RowSpace -> LogisticRegression | Ridge, fitted on all training clips."""
    regularization: float
    """The chosen C (logistic) or alpha (ridge)."""
    cv_score: float
    """Mean grouped-CV score of the chosen setting (balanced accuracy or R²); NaN if no CV ran."""
    on_edge: bool = False
    """The choice is the grid's first or last value (its best may lie beyond the grid); False without CV."""


def choose_regularization(scores: np.ndarray) -> int:
    """The one-standard-error choice: the grid index to use, from (folds, G) CV scores.

    The grid is ordered most regularized first. bar = best mean - standard error of the best's fold
    scores (std with ddof 1 / sqrt(folds)); the first index whose mean reaches the bar is taken;
    when that is the grid's first index, it moves on along the run of following indices with
    identical fold scores (one head: see the module docstring). With one fold the standard error is 0 and this is the argmax of the mean
    (ties: the more regularized).
    """
    folds = scores.shape[0]
    mean = scores.mean(axis=0)
    best = int(np.argmax(mean))
    error = scores[:, best].std(ddof=1) / np.sqrt(folds) if folds > 1 else 0.0
    chosen = int(np.flatnonzero(mean >= mean[best] - error)[0])
    if chosen == 0:  # the strongest end: if the scores stop changing there, the limit is reached, not an edge
        while chosen + 1 < scores.shape[1] and np.array_equal(scores[:, chosen], scores[:, chosen + 1]):
            chosen += 1
    return chosen


def _parts(task: Task) -> tuple[Pipeline, object, str, tuple[float, ...], str]:
    """(preprocessing, head, its regularization parameter, the grid, the CV scoring)."""
    preprocess = Pipeline([("scale", StandardScaler()), ("span", RowSpace())])
    if task.kind == "classification":
        head = LogisticRegression(class_weight="balanced", max_iter=5000)
        return preprocess, head, "C", LOGISTIC_C_GRID, "balanced_accuracy"
    return preprocess, Ridge(), "alpha", RIDGE_ALPHA_GRID, "r2"


@contextmanager
def _quiet_single_thread():
    """One BLAS thread, and no warnings from scene folds that miss a rare class or from lbfgs.

    These fits are small, so threads only add overhead (3x slower on 2 shared cores) and make
    float sums depend on the thread count. Scores stay well defined when a fold lacks a class.
    """
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _fold_scores(task: Task, fit_x, fit_y, held_x, held_y) -> list[float]:
    """(G,) held-out scores of the task's head at every grid value, fitted on one fold's prepared clips."""
    _, head, param, grid, scoring = _parts(task)
    scorer = get_scorer(scoring)
    with _quiet_single_thread():
        return [
            scorer(clone(head).set_params(**{param: value}).fit(fit_x, fit_y), held_x, held_y)
            for value in grid
        ]


def _cv_scores(task: Task, features: np.ndarray, targets: np.ndarray, scenes: np.ndarray, n_folds: int):
    """(folds, G) scene-grouped CV scores of the task's head at every grid value.

    Each fold is standardized and projected once (here, cheap) and reused for every value.
    Logistic folds (lbfgs loops that hold the GIL: threads would not help) run in worker processes,
    a fold per task, on the CPUs this process may use; every fit stays single-threaded, so the
    scores do not depend on the worker count (a probe's report is the same on 1 or 16 CPUs). Ridge
    is closed-form: shipping its per-token samples to workers would cost more than its fits.
    """
    preprocess, _, _, grid, _ = _parts(task)
    workers = min(n_folds, cpu_count()) if task.kind == "classification" else 1
    jobs = []
    for fit, held in GroupKFold(n_splits=n_folds).split(features, targets, scenes):
        with _quiet_single_thread():
            prep = clone(preprocess).fit(features[fit])
            fit_x, held_x = prep.transform(features[fit]), prep.transform(features[held])
        jobs.append(delayed(_fold_scores)(task, fit_x, targets[fit], held_x, targets[held]))
    return np.array(Parallel(n_jobs=workers)(jobs)).reshape(n_folds, len(grid))


def fit_head(task: Task, features: np.ndarray, targets: np.ndarray, scenes: np.ndarray) -> FittedHead:
    """Fit the task's linear head with its regularization chosen by scene-grouped CV.

    features: (N, F) float; targets: (N,) class names or floats; scenes: (N,) scene names (CV groups).
    Classification needs at least two classes in the training clips (ValueError otherwise). With
    fewer than two training scenes no CV is possible and the middle of the grid is used. The chosen
    value follows the one-standard-error rule (`choose_regularization`).
    """
    preprocess, head, param, grid, _ = _parts(task)
    if task.kind == "classification" and len(np.unique(targets)) < 2:
        raise ValueError(
            f"the training clips hold a single class {np.unique(targets).tolist()}: nothing to probe"
        )
    n_folds = min(MAX_CV_FOLDS, len(np.unique(scenes)))
    if n_folds < 2:
        chosen, cv_score, on_edge = grid[len(grid) // 2], float("nan"), False
    else:
        scores = _cv_scores(task, features, targets, scenes, n_folds)
        index = choose_regularization(scores)
        chosen, cv_score = grid[index], float(scores[:, index].mean())
        on_edge = index in (0, len(grid) - 1)
    pipeline = Pipeline([*preprocess.steps, ("head", clone(head).set_params(**{param: chosen}))])
    with _quiet_single_thread():
        pipeline.fit(features, targets)
    return FittedHead(pipeline, chosen, cv_score, on_edge)


def predict(head: FittedHead, features: np.ndarray) -> np.ndarray:
    """(N, F) features -> (N,) predicted class names or floats."""
    return head.pipeline.predict(features)
