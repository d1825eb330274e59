"""Frozen-encoder feature extraction and a cheap ego-motion probe to run during training.

`extract_features` is the one feature path shared by this online probe and the `mvm-probe`
gate (probe/features.py imports it), so the number logged during training and the gate's
verdict look at the same features.

`OnlineProbe` is a cheap version of the gate: it caches up to `max_clips` clips from the given
shards once, splits them by scene (a stable hash of the scene name, so the split never changes
between evaluations or runs), fits a fixed-regularization logistic regression on the features
of the training scenes and reports balanced accuracy on the held-out scenes. It has no random
baseline and no confidence interval: it is a trend line for `metrics.jsonl`, not a verdict.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from ingest.motion import clip_motion, ego_motion_label


def frames_to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) RGB -> float32 (B, T, 3, H, W) in [0, 1], the input of `model.features`."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 1, 4, 2, 3)
    return video.float().div_(255.0)


def batched(clips: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Group (T, H, W, 3) clips into (B, T, H, W, 3) stacks of at most batch_size, in order."""
    batch: list[np.ndarray] = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


@torch.no_grad()
def extract_features(
    models: dict[str, torch.nn.Module],
    clips: Iterable[np.ndarray],
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Pooled frozen-encoder features of every clip, for several encoders in one pass over the clips.

    models: name -> model with `.features(video (B, T, 3, H, W) float [0, 1]) -> (B, F)`;
    clips: (T, H, W, 3) uint8 arrays, consumed once (each batch goes through every model, so a
    stream of clips is decoded once however many encoders are compared).
    Returns name -> float32 (N, F) in clip order. Models run in eval mode without gradients;
    each model's train/eval mode is restored afterwards.
    """
    was_training = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in models}
    try:
        for frames in batched(clips, batch_size):
            video = frames_to_video(frames).to(device)
            for name, model in models.items():
                pooled = model.features(video)
                chunks[name].append(pooled.float().cpu().numpy())
    finally:
        for name, model in models.items():
            model.train(was_training[name])
    return {
        name: np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        for name, parts in chunks.items()
    }


def scene_bucket(scene: str, buckets: int) -> int:
    """Stable bucket of a scene name in [0, buckets): sha1, never Python's salted hash()."""
    return int.from_bytes(hashlib.sha1(scene.encode()).digest()[:8], "big") % buckets


def split_scenes(scenes: Iterable[str], test_fraction: float = 0.3) -> tuple[set[str], set[str]]:
    """(train scenes, test scenes): scenes ordered by their sha1, the first ~test_fraction held out.

    Both sides get at least one scene when there are two or more.
    """
    ordered = sorted(set(scenes), key=lambda name: (hashlib.sha1(name.encode()).hexdigest(), name))
    n_test = min(max(1, round(len(ordered) * test_fraction)), max(len(ordered) - 1, 0))
    return set(ordered[n_test:]), set(ordered[:n_test])


class OnlineProbe:
    """Ego-motion linear probe on a fixed, cached set of clips, evaluated on a model in training.

    urls: shard URLs (as from `train.data.resolve_shards`); max_clips: how many clips (the first
    ones in shard order) are decoded and cached, once, at construction; decoder: "decord"|"pyav".
    """

    def __init__(
        self,
        urls: list[str],
        max_clips: int = 256,
        decoder: str = "decord",
        batch_size: int = 16,
        regularization: float = 1.0,
    ):
        from train.data import iter_clips

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

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Fit on the training scenes' features, score on the held-out scenes.

        model: a MaskedVideoModel, or a DDP wrapper of one. Returns bal_acc (balanced accuracy on the
        held-out scenes), chance (1 / number of classes present there: the balanced accuracy of any
        constant predictor), train_clips, test_clips; train/cli.py logs them with a "probe_" prefix.
        """
        model = getattr(model, "module", model)
        device = next(model.parameters()).device
        features = extract_features({"model": model}, self.clips, self.batch_size, device)["model"]
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
