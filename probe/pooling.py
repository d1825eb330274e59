"""Which spatial grid the probe pools token features over, chosen on the training scenes only.

Why a choice at all: averaging every token of a frame (the global 1x1 grid) throws away where
things are, which a raw-pixel thumbnail keeps; the pixel baseline would then win on layout alone,
and how coarse the pooling is would decide the ranking. So features keep a grid of cell
averages per time step (mvm/features.py), and the same grid is used for every encoder and for
the pixel baseline (whose "tokens" are pixels, so at the same grid it is a thumbnail of exactly
that resolution: neither side gets more spatial detail than the other).

Candidates (`candidate_grids`), coarse to fine: 1x1 (the former global pooling), 2x2 (left/right
and near/far halves: enough to tell a left from a right turn by where things move), and the
encoder's full token layout R x C (the finest grid an encoder has; 4x7 for the tiny preset at
64x112 with 16-pixel patches). Finer grids would give pixels detail no encoder can have.

Selection (`select_grid`): for each candidate grid, each source's linear head is fitted with its
regularization chosen by scene-grouped CV on the training clips (mvm.probe.linear.fit_head); the grid
with the highest *kind-balanced* mean CV score wins: the mean of (pretrained, the mean over random
encoders, pixels), so neither the pretrained encoder nor the three random seeds decide alone.
Ties go to the coarser grid. Only training features, targets and scenes are passed in: validation
clips cannot influence the choice. The choice is made on the `ingested` view and applied to
every view.

Measured on the development dataroot (mvm-synth --seed 1, not the demo's seed 0: 16 scenes,
64x112, T=8; an earlier tiny preset trained 600 steps; 216 training clips from 11 scenes),
grouped-CV balanced accuracy on the training scenes (5 scene folds):

    grid   pretrained   random seeds 0 / 1 / 2   pixels   kind-balanced mean
    1x1    0.387        0.362 / 0.438 / 0.563    0.638    0.493
    2x2    0.574        0.421 / 0.491 / 0.572    0.879    0.649
    4x7    0.696        0.633 / 0.636 / 0.564    0.868    0.725   <- chosen

and with the round-3 tiny preset (2-frame tokens, random 0.9 masking, 1000 steps) on the 32-scene development
dataroot (432 training clips from 22 scenes):

    1x1    0.522        0.542 / 0.480 / 0.468    0.516    0.511
    2x2    0.657        0.645 / 0.698 / 0.664    0.715    0.680
    4x7    0.667        0.766 / 0.769 / 0.739    0.783    0.736   <- chosen

Every source gains from keeping layout, so the former global pooling handicapped the encoders
against any thumbnail. The numbers of each run are in its report.json under `pooling` and in
report.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvm.features import Grid
from mvm.probe.linear import FittedHead, fit_head
from mvm.probe.tasks import Task


def candidate_grids(layout: tuple[int, int]) -> list[Grid]:
    """Coarse-to-fine candidates for an (R, C) token layout: 1x1, 2x2 (when it fits), R x C; no duplicates."""
    rows, cols = layout
    grids: list[Grid] = [(1, 1)]
    if rows >= 2 and cols >= 2:
        grids.append((2, 2))
    if (rows, cols) not in grids:
        grids.append((rows, cols))
    return grids


@dataclass(frozen=True)
class PoolingChoice:
    """The chosen grid and the training-scene CV scores it was chosen by."""

    grid: Grid
    """The (gh, gw) grid every source and view is pooled over."""
    candidates: tuple[Grid, ...]
    """The grids tried, coarse to fine."""
    cv_scores: dict[Grid, dict[str, float]]
    """Grid -> source name -> mean grouped-CV score of its best regularization."""
    criterion: dict[Grid, float]
    """Grid -> kind-balanced mean CV score (the number maximised)."""


def kind_balanced_mean(scores: dict, kinds: dict) -> float:
    """Mean over kinds of the mean score within each kind. scores, kinds: source name -> value / kind."""
    by_kind: dict[str, list[float]] = {}
    for name, value in scores.items():
        by_kind.setdefault(kinds[name], []).append(value)
    return float(np.mean([np.mean(values) for values in by_kind.values()]))


def select_grid(
    task: Task,
    train_features: dict[tuple[str, Grid], np.ndarray],
    kinds: dict[str, str],
    targets: np.ndarray,
    scenes: np.ndarray,
) -> tuple[PoolingChoice, dict[str, FittedHead]]:
    """Choose the grid by scene-grouped CV on the training clips; return it and its fitted heads.

    train_features: (source name, grid) -> (N_train, F) features of the `ingested` view; kinds:
    source name -> "pretrained" | "random" | "pixels"; targets, scenes: (N_train,). Returns the
    choice and source name -> the head fitted at the chosen grid (reused by the evaluation, so no
    head is fitted twice).
    """
    candidates = sorted({grid for _, grid in train_features}, key=lambda grid: grid[0] * grid[1])
    heads: dict[Grid, dict[str, FittedHead]] = {}
    cv_scores: dict[Grid, dict[str, float]] = {}
    criterion: dict[Grid, float] = {}
    for grid in candidates:
        heads[grid] = {
            name: fit_head(task, features, targets, scenes)
            for (name, of_grid), features in train_features.items()
            if of_grid == grid
        }
        cv_scores[grid] = {name: head.cv_score for name, head in heads[grid].items()}
        criterion[grid] = kind_balanced_mean(cv_scores[grid], kinds)
    finite = [grid for grid in candidates if np.isfinite(criterion[grid])]
    # Without CV (a single training scene) there is nothing to choose by: keep the coarsest grid.
    chosen = max(finite, key=lambda grid: criterion[grid]) if finite else candidates[0]
    return PoolingChoice(chosen, tuple(candidates), cv_scores, criterion), heads[chosen]
