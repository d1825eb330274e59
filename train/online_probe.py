"""A cheap ego-motion probe to run during training.

Its features come from `mvm.features.extract_features`, the one feature path it shares with
the `mvm-probe` gate (same grid pooling, same temporal summary), so the number logged during
training and the gate's verdict look at the same kind of features.

`OnlineProbe` is a cheap version of the gate: it caches up to `max_clips` clips from the given
shards once, splits them by scene (a stable hash of the scene name, so the split never changes
between evaluations or runs), fits a fixed-regularization logistic regression on the features
of the training scenes and reports balanced accuracy on the held-out scenes. It has no random
baseline and no confidence interval: it is a trend line for `metrics.jsonl`, not a verdict.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from mvm.ego_motion import clip_motion, ego_motion_label
from mvm.features import INGESTED, Grid, extract_features

ONLINE_GRID: Grid = (2, 2)
"""The online probe's fixed pooling grid (the gate chooses among 1x1, 2x2 and the token layout)."""


def split_scenes(scenes: Iterable[str], test_fraction: float = 0.3) -> tuple[set[str], set[str]]:
    """(train scenes, test scenes): scenes ordered by their sha1, the first ~test_fraction held out.

    Both sides get at least one scene when there are two or more.
    """
    ordered = sorted(set(scenes), key=lambda name: (hashlib.sha1(name.encode()).hexdigest(), name))
    n_test = min(max(1, round(len(ordered) * test_fraction)), max(len(ordered) - 1, 0))
    return set(ordered[n_test:]), set(ordered[:n_test])


class OnlineProbe:
    """Ego-motion linear probe on a fixed, cached set of clips, evaluated on a model in training.

    urls: shard URLs (as from `mvm.train.data.resolve_shards`); max_clips: how many clips (the first
    ones in shard order) are decoded and cached, once, at construction; decoder: one of
    mvm.video.DECODER_CHOICES (the trainer passes its --decoder); grid: the (gh, gw) grid the tokens are averaged over per frame (mvm/features.py); the gate
    chooses its grid by CV, this trend line keeps a fixed one so its numbers stay comparable.
    """

    def __init__(
        self,
        urls: list[str],
        max_clips: int = 256,
        decoder: str = "auto",
        batch_size: int = 16,
        regularization: float = 1.0,
        grid: Grid = ONLINE_GRID,
    ):
        from mvm.train.data import iter_clips

        clips, labels, scenes = [], [], []
        for _key, frames, meta in iter_clips(urls, decoder=decoder):
            if len(clips) >= max_clips:
                break
            speed, yaw_rate = clip_motion(meta["timestamps"], meta["ego_translation"], meta["ego_rotation"])
            clips.append(frames)
            labels.append(ego_motion_label(speed, yaw_rate))
            scenes.append(meta["scene"])
        train_scenes, test_scenes = split_scenes(scenes)
        if not train_scenes or not test_scenes:
            raise ValueError(f"online probe needs clips from at least 2 scenes, got {sorted(set(scenes))}")
        self.clips = np.stack(clips)
        self.labels = np.array(labels)
        self.is_test = np.array([scene in test_scenes for scene in scenes])
        self.batch_size = batch_size
        self.regularization = regularization
        self.grid = grid

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Fit on the training scenes' features, score on the held-out scenes.

        model: a MaskedVideoModel, or a DDP wrapper of one. Returns bal_acc (balanced accuracy on the
        held-out scenes), chance (1 / number of classes present there: the balanced accuracy of any
        constant predictor), train_clips, test_clips; train/cli.py logs them with a "probe_" prefix.
        """
        model = getattr(model, "module", model)
        device = next(model.parameters()).device
        features = extract_features(
            {"model": model}, self.clips, [self.grid], batch_size=self.batch_size, device=device
        )[("model", INGESTED, self.grid)]
        train, test = ~self.is_test, self.is_test
        y_train, y_test = self.labels[train], self.labels[test]
        if len(np.unique(y_train)) < 2:
            balanced_acc = 1.0 / len(np.unique(y_test))
        else:
            scaler = StandardScaler().fit(features[train])
            head = LogisticRegression(C=self.regularization, class_weight="balanced", max_iter=2000)
            head.fit(scaler.transform(features[train]), y_train)
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # predictions may hold classes absent from the held-out scenes
                balanced_acc = balanced_accuracy_score(y_test, head.predict(scaler.transform(features[test])))
        return {
            "bal_acc": float(balanced_acc),
            "chance": 1.0 / len(np.unique(y_test)),
            "train_clips": int(train.sum()),
            "test_clips": int(test.sum()),
        }
