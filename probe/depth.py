"""The depth probe: per-token regression of log depth from frozen tokens, scored as depth estimation.

Samples: for each clip with a LIDAR_TOP depth target (shards/README.md: frame i, a per-patch map of
median metres), every patch with a value is one sample; its features are the source's token at
token step i // token_frames and that patch's position (mvm.probe.depth_data gathers them; for
`pixels`, the patch's pixels at frame i).

Head: the `position-only` prediction is each token position's mean log depth over the training
samples (the mean over all of them for a position without any); a ridge regression on standardized
features (mvm.probe.linear.fit_head with the depth task: StandardScaler -> Ridge, alpha chosen by
scene-grouped CV on the training scenes, CV score R² of the residual) fits log depth minus that
prediction, and predicts depth = exp(position mean + ridge output). Position-only is a row of its
own (no features): a source must read depth from the tokens' content, not from where the token
sits (the road is near at the bottom of the frame and far at the horizon in every clip).

Metrics (the depth-estimation conventions, over all validation patches): delta < 1.25, the share of
patches whose max(pred / true, true / pred) is below 1.25 (primary, higher is better), and AbsRel,
the mean |pred - true| / true. CIs: percentile bootstrap over validation scenes
(mvm.probe.stats.scene_resamples on the samples' scenes: a replicate takes every patch of every
drawn scene), paired across rows.

Gate (mvm.probe.gate.decide): pretrained delta above the best random encoder's, the CI of the
difference (best random per replicate) above 0. Strength (with the controls): the gate passed and
pretrained also beats `pixels` and `position-only`, each difference's CI above 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mvm.probe.evaluate import PIXELS, POSITION_ONLY, PRETRAINED, RANDOM, Source
from mvm.probe.gate import Comparison, Verdict, compare, decide, strength
from mvm.probe.layers import LayerChoice
from mvm.probe.linear import fit_head, predict
from mvm.probe.stats import bootstrap_scores, paired_difference, percentile_interval, scene_resamples
from mvm.probe.tasks import DEPTH, Task, make_task

DELTA, ABS_REL = "delta_1.25", "abs_rel"
METRICS = (DELTA, ABS_REL)
"""Primary metric first."""
DELTA_THRESHOLD = 1.25


def delta_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Share of (N,) positive depths predicted within a factor 1.25: max(pred / true, true / pred) < 1.25."""
    ratio = np.maximum(pred / true, true / pred)
    return float(np.mean(ratio < DELTA_THRESHOLD))


def abs_rel(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute relative error |pred - true| / true of (N,) positive depths."""
    return float(np.mean(np.abs(pred - true) / true))


METRIC_FNS = {DELTA: delta_accuracy, ABS_REL: abs_rel}


def depth_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """delta_1.25 and abs_rel of (N,) true and predicted depths in metres."""
    return {name: fn(true, pred) for name, fn in METRIC_FNS.items()}


@dataclass
class DepthSplit:
    """The depth samples of one clip set: one per patch with a value, the same order for every source."""

    features: dict[Source, np.ndarray]
    """Source -> (n, F) float32 token (or patch pixels) of each sample."""
    depth: np.ndarray
    """(n,) metres, all > 0."""
    positions: np.ndarray
    """(n,) int token position of each sample, row * C + column."""
    scenes: np.ndarray
    """(n,) scene name of each sample's clip."""
    layout: tuple[int, int]
    """(R, C) of the depth map (= the encoders' token layout)."""
    clips: int
    """Clips that contributed samples."""


def position_means(log_depth: np.ndarray, positions: np.ndarray, n_positions: int) -> np.ndarray:
    """(n_positions,) mean log depth per position of (n,) samples; the overall mean where a position has none."""
    sums = np.bincount(positions, weights=log_depth, minlength=n_positions)
    counts = np.bincount(positions, minlength=n_positions)
    return np.where(counts > 0, sums / np.maximum(counts, 1), float(np.mean(log_depth)))


@dataclass
class DepthRow:
    """One source of the depth probe, scored on the validation patches."""

    source: Source
    metrics: dict[str, float]
    """delta_1.25 and abs_rel."""
    ci: dict[str, tuple[float, float]]
    """Metric -> its 95% scene-bootstrap interval."""
    predictions: np.ndarray
    """(n_val,) predicted depth in metres."""
    regularization: float | None = None
    """The ridge alpha; None for position-only."""
    cv_score: float | None = None
    """Grouped-CV R² of the residual on the training scenes."""
    feature_dim: int | None = None


@dataclass
class DepthResult:
    """Everything the depth probe found; probe/depth_report.py turns it into a report section."""

    task: Task
    rows: list[DepthRow]
    """Pretrained, random seeds, pixels (with the controls), position-only."""
    verdict: Verdict
    conditions: list[Comparison]
    """beats_random, then with the controls beats_pixels and beats_position_only."""
    strength: str | None
    strength_reason: str
    best_random: Source
    controls: bool
    n_boot: int
    seed: int
    train: DepthSplit
    val: DepthSplit
    layers: LayerChoice | None = None
    """Each encoder's layer and the training-scene CV scores it was chosen by (choose_depth_layers)."""

    def row(self, source: Source) -> DepthRow:
        """The row of `source`; KeyError if absent."""
        for row in self.rows:
            if row.source == source:
                return row
        raise KeyError(f"no depth row for {source.name}")

    @property
    def randoms(self) -> list[DepthRow]:
        return [row for row in self.rows if row.source.kind == RANDOM]


def residual_log_depth(split: DepthSplit, means: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(position means (R*C,), residual (n,)): log depth minus its position's mean (the split's own
    means unless given)."""
    log_depth = np.log(split.depth)
    if means is None:
        means = position_means(log_depth, split.positions, split.layout[0] * split.layout[1])
    return means, log_depth - means[split.positions]


def choose_depth_layers(
    train: DepthSplit, val: DepthSplit
) -> tuple[DepthSplit, DepthSplit, LayerChoice | None]:
    """Each encoder's layer for depth, by the grouped-CV score (R² of the residual) of its head on the
    training scenes, for every encoder alike; ties go to the deeper layer. No validation sample is used.

    train/val.features: (Source, layer or None for sources without layers) -> (n, F), layers shallow
    to deep. Returns both splits with features keyed by Source (the chosen layer's only) and the
    choice (None when no source has layers).
    """
    task = make_task(DEPTH)
    _, residual = residual_log_depth(train)
    options: dict[Source, list] = {}
    for source, layer in train.features:
        options.setdefault(source, []).append(layer)
    chosen, cv_scores = {}, {}
    for source, layers in options.items():
        if layers == [None]:
            chosen[source] = None
            continue
        scores = {
            layer: fit_head(task, train.features[(source, layer)], residual, train.scenes).cv_score
            for layer in layers
        }
        cv_scores[source.name] = scores
        finite = [layer for layer in reversed(layers) if np.isfinite(scores[layer])]  # deeper first
        chosen[source] = max(finite, key=scores.__getitem__) if finite else layers[-1]
    keep = {source: (source, layer) for source, layer in chosen.items()}
    train = replace(train, features={source: train.features[key] for source, key in keep.items()})
    val = replace(val, features={source: val.features[key] for source, key in keep.items()})
    if not cv_scores:
        return train, val, None
    offered = tuple(dict.fromkeys(layer for layer_list in options.values() for layer in layer_list if layer))
    names = {source.name: layer for source, layer in chosen.items() if layer is not None}
    return train, val, LayerChoice(train.layout, offered, names, cv_scores)


def evaluate_depth(
    train: DepthSplit,
    val: DepthSplit,
    n_boot: int = 1000,
    seed: int = 0,
    controls: bool = True,
    layers: LayerChoice | None = None,
) -> DepthResult:
    """Fit one residual ridge head per source on `train`, score on `val`, bootstrap, decide.

    train/val hold the pretrained source and at least one random source (and pixels with the
    controls); they must share no scene (ValueError otherwise).
    """
    if set(train.scenes) & set(val.scenes):
        raise ValueError("depth train and val samples share scenes")
    sources = sorted(train.features, key=Source.order)
    kinds = {source.kind for source in sources}
    if not {PRETRAINED, RANDOM} <= kinds:
        raise ValueError("need a pretrained source and at least one random source")
    if controls and PIXELS not in kinds:
        raise ValueError("the controls need the pixels source")
    task = make_task(DEPTH)
    means, residual = residual_log_depth(train)
    base = means[val.positions]

    rows = []
    for source in sources:
        if source.kind == PIXELS and not controls:
            continue
        head = fit_head(task, train.features[source], residual, train.scenes)
        predictions = np.exp(base + predict(head, val.features[source]))
        rows.append(
            DepthRow(
                source,
                depth_metrics(val.depth, predictions),
                {},
                predictions,
                head.regularization,
                head.cv_score,
                int(train.features[source].shape[1]),
            )
        )
    position = Source(POSITION_ONLY)
    rows.append(DepthRow(position, depth_metrics(val.depth, np.exp(base)), {}, np.exp(base)))

    resamples = scene_resamples(val.scenes, n_boot, seed)
    predictions = {row.source: row.predictions for row in rows}
    boot = {name: bootstrap_scores(fn, val.depth, predictions, resamples) for name, fn in METRIC_FNS.items()}
    for row in rows:
        row.ci = {name: percentile_interval(boot[name][row.source]) for name in METRICS}

    def score(source: Source) -> float:
        return next(row for row in rows if row.source == source).metrics[DELTA]

    def difference_ci(source: Source) -> tuple[float, float]:
        return percentile_interval(boot[DELTA][pretrained] - boot[DELTA][source])

    pretrained = Source.pretrained()
    randoms = [row.source for row in rows if row.source.kind == RANDOM]
    best_random = max(randoms, key=score)
    beats_random = compare(
        "beats_random",
        "the pretrained encoder beats the best random encoder",
        score(pretrained),
        score(best_random),
        percentile_interval(paired_difference(boot[DELTA][pretrained], [boot[DELTA][s] for s in randoms])),
    )
    verdict = decide(
        score(pretrained), score(best_random), beats_random.ci, DELTA, len(np.unique(val.scenes))
    )
    conditions = [beats_random]
    if controls:
        pixels = Source.pixels()
        conditions += [
            compare(
                "beats_pixels",
                "the pretrained encoder beats the patch's pixels",
                score(pretrained),
                score(pixels),
                difference_ci(pixels),
            ),
            compare(
                "beats_position_only",
                "the pretrained encoder beats each position's mean depth",
                score(pretrained),
                score(position),
                difference_ci(position),
            ),
        ]
        level, reason = strength(verdict, conditions[1:])
    else:
        level, reason = None, "controls were off (--controls none)"
    return DepthResult(
        task,
        rows,
        verdict,
        conditions,
        level,
        reason,
        best_random,
        controls,
        n_boot,
        seed,
        train,
        val,
        layers,
    )
