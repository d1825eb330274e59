"""Planted feature sets for the probe's evaluation tests (no models, no shards)."""

from __future__ import annotations

import numpy as np

from mvm.features import INGESTED, SHUFFLED, STATIC, VIEWS
from mvm.probe.evaluate import Source, Split

CLASSES = np.array(["stopped", "straight", "left", "right"])
DIM = 24


def planted_split(
    rng: np.random.Generator,
    scenes: list[str],
    clips_per_scene: int,
    signal: float,
    *,
    order_free: bool = False,
    pixel_signal: float = 0.0,
    flow_signal: float | None = None,
    grids=((1, 1),),
    random_seeds: int = 3,
) -> Split:
    """Features that carry the class with a planted strength, for every source, view and grid.

    pretrained: `signal` on the ingested view; on the shuffled view the same signal when
    `order_free`, none otherwise; none on the static view. Random encoders: noise everywhere.
    Pixels: `pixel_signal` on the ingested and shuffled views, none on static. Flow (only when
    `flow_signal` is given): that signal as ingested, none on the other views. The class
    directions are fixed (the same in train and val); the noise is fresh per (source, view, grid).
    """
    labels = CLASSES[rng.integers(0, 4, len(scenes) * clips_per_scene)]
    onehot = (labels[:, None] == CLASSES[None, :]).astype(np.float32)
    directions = np.random.default_rng(99).normal(size=(4, DIM))
    strength = {
        Source.pretrained(): {INGESTED: signal, SHUFFLED: signal if order_free else 0.0, STATIC: 0.0},
        Source.pixels(): {INGESTED: pixel_signal, SHUFFLED: pixel_signal, STATIC: 0.0},
    }
    strength.update({Source.random(seed): dict.fromkeys(VIEWS, 0.0) for seed in range(random_seeds)})
    if flow_signal is not None:
        strength[Source.flow()] = {INGESTED: flow_signal, SHUFFLED: 0.0, STATIC: 0.0}
    features = {
        (source, view, tuple(grid)): (
            by_view[view] * onehot @ directions + rng.normal(size=(len(labels), DIM))
        ).astype(np.float32)
        for source, by_view in strength.items()
        for view in VIEWS
        for grid in grids
    }
    return Split(features, labels, np.repeat(scenes, clips_per_scene))
