"""Compare feature sources on identical splits: linear heads, controls, bootstrap intervals, verdict.

Pure computation on already-extracted features, so it is tested on planted feature sets and
reused unchanged by the CLI. Sources (`Source`): the pretrained encoder, one or more random
encoders (seeds), the no-learning `pixels` baseline and the no-learning `flow` reference
(mvm.probe.flow: block-matching motion); each seen through views (mvm.features:
`ingested`, and for the controls `shuffled` and `static`). Every (source, view) row gets its own
head (regularization by scene-grouped CV on the training scenes), fitted on the training clips
of that view and scored on the validation clips of that view.

The gate (mvm.probe.gate.decide) compares the `ingested` rows only: pretrained vs the best random
encoder. The controls add two conditions for `strength` (mvm.probe.gate.strength): pretrained vs
pixels, and pretrained as ingested vs pretrained on shuffled frames. `flow` is reported beside
them as a reference and enters neither the verdict nor the choice of the pooling grid.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mvm.features import INGESTED, SHUFFLED, STATIC, Grid
from mvm.probe.gate import Comparison, Verdict, compare, decide, strength
from mvm.probe.layers import LayerChoice, Selection
from mvm.probe.linear import FittedHead, fit_head, predict
from mvm.probe.pooling import PoolingChoice, select_grid
from mvm.probe.stats import (
    bootstrap_scores,
    paired_difference,
    percentile_interval,
    primary_metric_fn,
    scene_resamples,
    task_metrics,
)
from mvm.probe.tasks import Task

PRETRAINED, RANDOM, PIXELS, FLOW, MAJORITY = "pretrained", "random", "pixels", "flow", "majority"
POSITION_ONLY = "position-only"
"""The depth probe's featureless baseline (mvm.probe.depth): each token position's mean depth."""
KINDS = (PRETRAINED, RANDOM, PIXELS, FLOW, POSITION_ONLY, MAJORITY)
CONTROL_KINDS = (PIXELS, FLOW)
"""The no-learning sources: reported only with the controls."""


@dataclass(frozen=True)
class Source:
    """One feature source the probe compares."""

    kind: str
    """PRETRAINED, RANDOM, PIXELS, FLOW, POSITION_ONLY or MAJORITY (the last two have no features)."""
    seed: int | None = None
    """The initialisation seed of a RANDOM encoder; None for the others."""

    @classmethod
    def pretrained(cls) -> Source:
        return cls(PRETRAINED)

    @classmethod
    def random(cls, seed: int) -> Source:
        return cls(RANDOM, seed)

    @classmethod
    def pixels(cls) -> Source:
        return cls(PIXELS)

    @classmethod
    def flow(cls) -> Source:
        return cls(FLOW)

    @property
    def name(self) -> str:
        """Display name: "pretrained", "random seed 3", "pixels", "flow", "majority"."""
        return f"random seed {self.seed}" if self.kind == RANDOM else self.kind

    def order(self) -> tuple[int, int]:
        """Report order: pretrained, random seeds ascending, pixels, flow, majority."""
        return KINDS.index(self.kind), -1 if self.seed is None else self.seed


@dataclass
class Split:
    """Features of every (source, view, grid) on one set of clips, with targets and scenes (same clip order)."""

    features: dict[tuple[Source, str, Grid], np.ndarray]
    """(source, view, grid) -> (N, F) float32 pooled features."""
    targets: np.ndarray
    """(N,) class names or speeds."""
    scenes: np.ndarray
    """(N,) scene name of each clip."""


@dataclass
class ProbeRow:
    """One (source, view) of the probe, scored on the validation clips."""

    source: Source
    view: str
    metrics: dict[str, float]
    """The task's metrics: balanced_accuracy, macro_f1, accuracy | r2, mae."""
    predictions: np.ndarray
    """(N_val,) predicted class names or speeds."""
    per_class_recall: dict[str, float]
    """Class -> recall on the validation clips (NaN for a class absent there); empty for regression."""
    ci: tuple[float, float] = (float("nan"), float("nan"))
    """95% scene-bootstrap interval of the primary metric."""
    drop: float | None = None
    """Views other than ingested: the primary metric as ingested minus this view's (how much needs motion)."""
    drop_ci: tuple[float, float] | None = None
    """95% scene-bootstrap interval of `drop` (paired replicates)."""
    regularization: float | None = None
    """The head's C or alpha; None for the majority predictor."""
    cv_score: float | None = None
    """The head's grouped-CV score on the training scenes."""
    on_edge: bool | None = None
    """The regularization is the first or last value of its grid (mvm.probe.linear.FittedHead.on_edge)."""
    feature_dim: int | None = None
    layer: str | None = None
    """The encoder layer read (probe/layers.py); None for sources without layers or without a layer choice."""


@dataclass
class ProbeResult:
    """Everything one probe evaluation found; probe/report_files.py turns it into files."""

    task: Task
    rows: list[ProbeRow]
    """Every (source, view) row in report order (sources first, then views), majority last."""
    pooling: PoolingChoice
    verdict: Verdict
    """The gate: pretrained vs the best random encoder on the ingested view."""
    conditions: list[Comparison]
    """beats_random (the gate's comparison), then with controls beats_pixels and needs_order."""
    strength: str | None
    """"strong", "weak" or "none" (mvm.probe.gate.strength); None when the controls were off."""
    strength_reason: str
    best_random: Source
    difference_ci_vs_best_seed: tuple[float, float]
    """Informational: pretrained − the one seed best on the full set (less strict than the gate's)."""
    controls: bool
    n_boot: int
    seed: int
    train_targets: np.ndarray
    val_targets: np.ndarray
    train_scenes: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))
    val_scenes: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))
    layers: LayerChoice | None = None
    """Each encoder's layer and every layer's CV score, when the layers were chosen (probe/layers.py)."""

    def row(self, source: Source, view: str = INGESTED) -> ProbeRow:
        """The row of (source, view); KeyError if absent."""
        for row in self.rows:
            if row.source == source and row.view == view:
                return row
        raise KeyError(f"no row for {source.name} / {view}")

    @property
    def randoms(self) -> list[ProbeRow]:
        """The random encoders' ingested rows, by seed."""
        return [row for row in self.rows if row.source.kind == RANDOM and row.view == INGESTED]


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


def per_class_recall(task: Task, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Class -> share of its validation clips predicted as it (NaN when absent); {} for regression."""
    recall = {}
    for name in task.classes:
        of_class = y_true == name
        recall[name] = float(np.mean(y_pred[of_class] == name)) if of_class.any() else float("nan")
    return recall


def _score(task: Task, source: Source, view: str, y_val: np.ndarray, y_pred: np.ndarray, head) -> ProbeRow:
    return ProbeRow(
        source=source,
        view=view,
        metrics=task_metrics(task, y_val, y_pred),
        predictions=y_pred,
        per_class_recall=per_class_recall(task, y_val, y_pred),
        regularization=None if head is None else head.regularization,
        cv_score=None if head is None else head.cv_score,
        on_edge=None if head is None else head.on_edge,
    )


def evaluate_encoders(
    task: Task,
    train: Split,
    val: Split,
    n_boot: int = 1000,
    seed: int = 0,
    controls: bool = True,
    selection: Selection | None = None,
) -> ProbeResult:
    """Choose the pooling grid, fit one head per (source, view), score on `val`, bootstrap, decide.

    train/val hold features of the pretrained source, at least one random source and the pixels
    source, for the `ingested` view at every candidate grid, and (controls=True) the `shuffled`
    and `static` views at least at the grid `select_grid` picks. Pixels always take part in the
    grid choice (so the gate's features do not depend on `controls`); with controls=False the
    pixel and view rows are neither fitted nor reported and `strength` is None. A `flow` source,
    when present, is scored at the chosen grid like pixels (with the controls only) and takes no
    part in the grid choice or the verdict. `selection` (probe/layers.py): the grid and each
    encoder's layer chosen beforehand on the training clips, with their heads; the features of
    train and val are then those of the chosen layers, at least at the chosen grid.
    """
    overlap = shared_scenes(train.scenes, val.scenes)
    if overlap:
        raise ValueError(f"train and val share scenes {overlap}")
    sources = sorted({source for source, _, _ in train.features}, key=Source.order)
    kinds = {source.kind for source in sources}
    if not {PRETRAINED, RANDOM} <= kinds:
        raise ValueError("need a pretrained source and at least one random source")
    if controls and PIXELS not in kinds:
        raise ValueError("the controls need the pixels source")

    if selection is not None:
        choice, heads = selection.pooling, selection.heads
    else:
        choice, heads = select_grid(
            task,
            {
                (s.name, g): x
                for (s, view, g), x in train.features.items()
                if view == INGESTED and s.kind != FLOW
            },
            {source.name: source.kind for source in sources if source.kind != FLOW},
            train.targets,
            train.scenes,
        )
    chosen_layers = {} if selection is None else selection.layers.chosen
    grid = choice.grid
    reported = [source for source in sources if controls or source.kind not in CONTROL_KINDS]
    views = (INGESTED, SHUFFLED, STATIC) if controls else (INGESTED,)
    rows: list[ProbeRow] = []
    for view in views:
        for source in reported:
            head: FittedHead = (
                heads[source.name]
                if view == INGESTED and source.name in heads
                else fit_head(task, train.features[(source, view, grid)], train.targets, train.scenes)
            )
            row = _score(
                task, source, view, val.targets, predict(head, val.features[(source, view, grid)]), head
            )
            row.feature_dim = int(train.features[(source, view, grid)].shape[1])
            row.layer = chosen_layers.get(source.name)
            rows.append(row)
    rows.sort(key=lambda row: (row.source.order(), views.index(row.view)))
    majority = majority_predictions(task, train.targets, len(val.targets))
    rows.append(_score(task, Source(MAJORITY), INGESTED, val.targets, majority, None))

    metric = primary_metric_fn(task)
    resamples = scene_resamples(val.scenes, n_boot, seed)
    boot = bootstrap_scores(metric, val.targets, {(r.source, r.view): r.predictions for r in rows}, resamples)

    def score(source: Source, view: str = INGESTED) -> float:
        return next(r for r in rows if r.source == source and r.view == view).metrics[task.metric]

    for row in rows:
        row.ci = percentile_interval(boot[(row.source, row.view)])
        if row.view != INGESTED:
            row.drop = score(row.source) - row.metrics[task.metric]
            row.drop_ci = percentile_interval(boot[(row.source, INGESTED)] - boot[(row.source, row.view)])

    pretrained = Source.pretrained()
    randoms = [source for source in reported if source.kind == RANDOM]
    best_random = max(randoms, key=score)
    difference = paired_difference(boot[(pretrained, INGESTED)], [boot[(s, INGESTED)] for s in randoms])
    beats_random = compare(
        "beats_random",
        "the pretrained encoder beats the best random encoder",
        score(pretrained),
        score(best_random),
        percentile_interval(difference),
    )
    verdict = decide(
        score(pretrained), score(best_random), beats_random.ci, task.metric, len(np.unique(val.scenes))
    )
    conditions = [beats_random]
    if controls:
        pixels = Source.pixels()
        conditions.append(
            compare(
                "beats_pixels",
                "the pretrained encoder beats the no-learning pixels baseline",
                score(pretrained),
                score(pixels),
                percentile_interval(boot[(pretrained, INGESTED)] - boot[(pixels, INGESTED)]),
            )
        )
        conditions.append(
            compare(
                "needs_order",
                "the pretrained encoder's score drops when each clip's frames are shuffled",
                score(pretrained),
                score(pretrained, SHUFFLED),
                percentile_interval(boot[(pretrained, INGESTED)] - boot[(pretrained, SHUFFLED)]),
            )
        )
        level, reason = strength(verdict, conditions[1:])
    else:
        level, reason = None, "controls were off (--controls none)"

    return ProbeResult(
        task=task,
        rows=rows,
        pooling=choice,
        verdict=verdict,
        conditions=conditions,
        strength=level,
        strength_reason=reason,
        best_random=best_random,
        difference_ci_vs_best_seed=percentile_interval(
            boot[(pretrained, INGESTED)] - boot[(best_random, INGESTED)]
        ),
        controls=controls,
        n_boot=n_boot,
        seed=seed,
        train_targets=train.targets,
        val_targets=val.targets,
        train_scenes=train.scenes,
        val_scenes=val.scenes,
        layers=None if selection is None else selection.layers,
    )
