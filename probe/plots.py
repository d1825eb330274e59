"""The probe's PNGs: controls.png (every source and view, per-class recall), confusion.png, speed.png.

Written through mvm.atomic.save_figure; numbers through mvm.report_format.fmt.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from mvm.atomic import save_figure  # noqa: E402
from mvm.features import INGESTED, VIEWS  # noqa: E402
from mvm.probe.evaluate import MAJORITY, RANDOM, ProbeResult, Source  # noqa: E402
from mvm.report_format import fmt  # noqa: E402


def plot_controls(result: ProbeResult, path: Path) -> None:
    """Primary metric per source and view with CIs; for classification, per-class recall of every row."""
    metric = result.task.metric
    sources = [row.source for row in result.rows if row.view == INGESTED and row.source.kind != MAJORITY]
    classification = result.task.kind == "classification"
    fig, axes = plt.subplots(1, 2 if classification else 1, figsize=(13.0 if classification else 7.0, 4.8))
    axis = axes[0] if classification else axes
    width = 0.8 / len(VIEWS)
    for offset, view in enumerate(VIEWS):
        rows = [result.row(source, view) for source in sources]
        centers = np.arange(len(sources)) + (offset - (len(VIEWS) - 1) / 2) * width
        heights = np.array([row.metrics[metric] for row in rows])
        errors = np.abs(np.array([row.ci for row in rows]).T - heights)
        axis.bar(centers, heights, width, yerr=np.nan_to_num(errors), capsize=2, label=view)
    majority = result.row(Source(MAJORITY)).metrics[metric]
    axis.axhline(majority, color="grey", linestyle="--", linewidth=1, label="majority / mean")
    axis.set_xticks(range(len(sources)), [source.name for source in sources], rotation=20)
    axis.set_ylabel(f"{metric} (95% CI)")
    top = max(1.0, float(np.nanmax([row.ci[1] for row in result.rows if np.isfinite(row.ci[1])] or [1.0])))
    axis.set_ylim(min(0.0, axis.get_ylim()[0]), top * 1.15)  # headroom for the legend above the bars
    axis.legend(fontsize=8, loc="upper center", ncol=4)
    axis.set_title(f"gate {result.verdict.gate}, strength {result.strength}", fontsize=10)
    if classification:
        rows = [row for row in result.rows if row.source.kind != MAJORITY]
        recall = np.array([[row.per_class_recall[c] for c in result.task.classes] for row in rows])
        heat = axes[1]
        heat.imshow(np.nan_to_num(recall, nan=0.0), vmin=0.0, vmax=1.0, cmap="Blues", aspect="auto")
        for i in range(recall.shape[0]):
            for j in range(recall.shape[1]):
                heat.text(
                    j,
                    i,
                    fmt(recall[i, j], 2),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if recall[i, j] > 0.6 else "black",
                )
        heat.set_xticks(range(len(result.task.classes)), result.task.classes)
        heat.set_yticks(range(len(rows)), [f"{row.source.name} / {row.view}" for row in rows], fontsize=7)
        heat.set_title("per-class recall (validation clips)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusions(result: ProbeResult, path: Path) -> None:
    """Row-normalized confusion matrices (pretrained, best random, pixels if present, majority)."""
    classes = list(result.task.classes)
    panels = [result.row(Source.pretrained()), result.row(result.best_random)]
    if result.controls:
        panels.append(result.row(Source.pixels()))
    panels.append(result.row(Source(MAJORITY)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0))
    for axis, row in zip(axes, panels, strict=True):
        matrix = confusion_matrix(result.val_targets, row.predictions, labels=classes).astype(float)
        rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)
        axis.imshow(rates, vmin=0.0, vmax=1.0, cmap="Blues")
        for i in range(len(classes)):
            for j in range(len(classes)):
                axis.text(
                    j,
                    i,
                    f"{int(matrix[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
        axis.set_xticks(range(len(classes)), classes, rotation=45)
        axis.set_yticks(range(len(classes)), classes)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        title = "best random (" + row.source.name + ")" if row.source.kind == RANDOM else row.source.name
        axis.set_title(f"{title}\nbal. acc {fmt(row.metrics['balanced_accuracy'])}", fontsize=10)
    fig.suptitle(
        f"ego-motion probe on validation scenes: gate {result.verdict.gate} (counts; colour = row rate)"
    )
    fig.tight_layout()
    save_figure(fig, path)


def plot_speed(result: ProbeResult, path: Path) -> None:
    """Predicted vs true mean speed for the pretrained encoder, the best random one and pixels if present."""
    panels = [result.row(Source.pretrained()), result.row(result.best_random)]
    if result.controls:
        panels.append(result.row(Source.pixels()))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), sharex=True, sharey=True)
    limit = float(max(np.max(result.val_targets), 1e-3)) * 1.1
    for axis, row in zip(axes, panels, strict=True):
        axis.scatter(result.val_targets, row.predictions, s=8, alpha=0.6)
        axis.plot([0, limit], [0, limit], color="grey", linewidth=1)
        axis.set_title(
            f"{row.source.name}: R² {fmt(row.metrics['r2'])}, MAE {fmt(row.metrics['mae'], 2)} m/s",
            fontsize=10,
        )
        axis.set_xlabel("true mean speed (m/s)")
        axis.set_ylabel("predicted (m/s)")
    fig.suptitle(f"speed probe on validation scenes: gate {result.verdict.gate}")
    fig.tight_layout()
    save_figure(fig, path)
