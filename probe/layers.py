"""Which layer of each encoder the probe reads, chosen by grouped CV on the training scenes.

Reading only the last block can handicap an encoder whose best features sit lower: a random
encoder's stem scored 0.787 and its last layer 0.718 in the development notes (train/config.py).
So every encoder, pretrained and random alike, offers every layer of
`MaskedVideoModel.token_layers` (`stem`, `block1`..`block<N-1>`, `last` = the N-th block after the
final norm), and each gets the layer
with the best scene-grouped CV score on the training clips; no validation clip is involved.

Order of the choices (`select`):
1. the pooling grid, exactly as before (probe/pooling.py: the kind-balanced mean CV score over
   pretrained, random encoders and pixels), on the `last` layer: the grid stays comparable
   with earlier reports and does not depend on which layers are on offer;
2. at that grid, each encoder's layer: the highest CV score (each layer's head with its own
   regularization, mvm.probe.linear.fit_head); ties go to the deeper layer.
Pixels and flow have no layers. The chosen layer is then read for every view (the controls
compare one layer's features as ingested, shuffled and static).

Cost: one forward pass of each encoder per batch yields every layer (mvm.features.EncoderLayer),
so only the pooling and the heads multiply with the number of layers. The training clips'
ingested view is encoded first at every layer and grid (`encode_layers`); the other views and the
validation clips are encoded afterwards at the chosen grid and layers only, which keeps the
feature memory near that of one layer (the training clips are decoded once more for the controls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import track

from mvm.features import INGESTED, EncoderLayer, Grid, extract_features
from mvm.probe.data import iter_selected_frames
from mvm.probe.linear import FittedHead, fit_head
from mvm.probe.pooling import PoolingChoice, select_grid
from mvm.probe.tasks import Task

LAST = "last"
"""The layer the grid is chosen on (the final norm's output, what the probe read before layers were offered)."""


def layer_names(depth: int) -> tuple[str, ...]:
    """The layers of a `depth`-block encoder, shallow to deep: stem, block1..block<depth - 1>, last.

    The last block's own output is not offered beside `last` (the same tokens after the final
    norm, which standardized features barely tell apart): one head fewer per encoder.
    """
    return ("stem", *(f"block{index}" for index in range(1, depth)), LAST)


@dataclass(frozen=True)
class LayerChoice:
    """Each encoder's layer and the training-scene CV scores it was chosen by."""

    grid: Grid
    """The grid the layers were compared at (the pooling choice)."""
    layers: tuple[str, ...]
    """The layers on offer, shallow to deep."""
    chosen: dict[str, str]
    """Encoder source name -> its chosen layer."""
    cv_scores: dict[str, dict[str, float]]
    """Encoder source name -> layer -> mean grouped-CV score of its best regularization."""


@dataclass(frozen=True)
class Selection:
    """Everything chosen on the training clips before any validation clip is encoded."""

    pooling: PoolingChoice
    layers: LayerChoice
    heads: dict[str, FittedHead]
    """Source name -> its head on the ingested view at the chosen grid and layer (reused by the evaluation)."""


def select_layers(
    task: Task,
    features: dict[tuple[str, str], np.ndarray],
    grid: Grid,
    targets: np.ndarray,
    scenes: np.ndarray,
    fitted: dict[tuple[str, str], FittedHead] | None = None,
) -> tuple[LayerChoice, dict[str, FittedHead]]:
    """Each encoder's layer by CV. features: (encoder name, layer) -> (N_train, F) at `grid`.

    fitted: heads already fitted on some of these features (the grid choice's, on `last`), not
    refitted. Returns the choice and name -> the head of its chosen layer. Layers keep the order
    they come in (shallow to deep); ties go to the deeper one.
    """
    names = list(dict.fromkeys(name for name, _ in features))
    layers = tuple(dict.fromkeys(layer for _, layer in features))
    fitted = dict(fitted or {})
    for key, values in features.items():
        if key not in fitted:
            fitted[key] = fit_head(task, values, targets, scenes)
    cv_scores = {name: {layer: fitted[(name, layer)].cv_score for layer in layers} for name in names}
    chosen = {}
    for name in names:
        scores = np.nan_to_num(np.array([cv_scores[name][layer] for layer in layers]), nan=-np.inf)
        # Without CV (one training scene) every score is NaN: keep `last`, what the probe always read.
        best = (
            len(layers) - 1 - int(np.argmax(scores[::-1]))
            if np.isfinite(scores).any()
            else layers.index(LAST)
        )
        chosen[name] = layers[best]
    heads = {name: fitted[(name, chosen[name])] for name in names}
    return LayerChoice(grid, layers, chosen, cv_scores), heads


def select(
    task: Task,
    features: dict[tuple[str, str | None, Grid], np.ndarray],
    kinds: dict[str, str],
    targets: np.ndarray,
    scenes: np.ndarray,
) -> Selection:
    """The grid (on `last`), then each encoder's layer at that grid, from the training clips' ingested view.

    features: (source name, layer or None for sources without layers, grid) -> (N_train, F); kinds:
    source name -> "pretrained" | "random" | "pixels" (the sources the grid is chosen by; flow is
    left out by the caller). targets, scenes: (N_train,).
    """
    by_grid = {
        (name, grid): x
        for (name, layer, grid), x in features.items()
        if name in kinds and layer in (None, LAST)
    }
    pooling, grid_heads = select_grid(task, by_grid, kinds, targets, scenes)
    grid = pooling.grid
    layered = {
        (name, layer): x
        for (name, layer, g), x in features.items()
        if name in kinds and layer is not None and g == grid
    }
    known = {(name, LAST): head for name, head in grid_heads.items() if (name, LAST) in layered}
    layers, layer_heads = select_layers(task, layered, grid, targets, scenes, known)
    return Selection(pooling, layers, {**grid_heads, **layer_heads})


def encode_layers(
    models: dict[str, object],
    urls: list[str],
    keys: list[str],
    decoder: str,
    grids: Sequence[Grid],
    layers: Sequence[str],
    batch_size: int,
    device: torch.device,
    seed: int,
    description: str = "features, every layer",
    token_sink=None,
) -> dict[tuple[str, str | None, Grid], np.ndarray]:
    """The named clips' ingested view at every grid: every layer of each nn.Module model, the plain
    features of the others (pixels, flow). -> (name, layer or None, grid) -> (len(keys), F) float32.

    token_sink: passed to mvm.features.extract_features; it sees each layer as source `name/layer`.
    """
    sources: dict[str, object] = {}
    origin: dict[str, tuple[str, str | None]] = {}
    for name, model in models.items():
        if isinstance(model, torch.nn.Module):
            for layer in layers:
                sources[f"{name}/{layer}"] = EncoderLayer(model, layer)
                origin[f"{name}/{layer}"] = (name, layer)
        else:
            sources[name], origin[name] = model, (name, None)
    frames = track(
        iter_selected_frames(urls, keys, decoder),
        total=len(keys),
        description=description,
        transient=True,
    )
    features = extract_features(
        sources, frames, grids, (INGESTED,), batch_size=batch_size, device=device, seed=seed,
        token_sink=token_sink,
    )  # fmt: skip
    return {(*origin[name], grid): values for (name, _view, grid), values in features.items()}
