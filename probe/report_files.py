"""Write the probe's outputs: DIR/report.json, DIR/report.md and DIR/confusion.png or DIR/speed.png."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from probe.evaluate import MAJORITY, PRETRAINED, random_name  # noqa: E402


def _json_ready(value):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json(result: dict, path: Path) -> None:
    """report.json: every key of `result` except the private "_..." ones, sorted, strict JSON."""
    public = {key: value for key, value in result.items() if not key.startswith("_")}
    path.write_text(json.dumps(_json_ready(public), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _fmt(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _ci(ci) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def markdown(result: dict) -> str:
    """A human-readable report.md of the result dict."""
    metric = result["metric"]
    columns = (
        ["balanced_accuracy", "macro_f1", "accuracy"] if metric == "balanced_accuracy" else ["r2", "mae"]
    )
    rows = [("pretrained", result["pretrained"])]
    rows += [(f"random seed {seed}", scores) for seed, scores in result["random"]["per_seed"].items()]
    rows.append(("majority" if metric == "balanced_accuracy" else "mean", result["majority"]))
    lines = [
        f"# Probe gate: **{result['gate'].upper()}**",
        "",
        result["reason"] + ".",
        "",
        f"- task: `{result['task']}`, primary metric: `{metric}`",
        f"- checkpoint: `{result.get('checkpoint', '?')}` (step {result.get('checkpoint_step', '?')})",
        f"- train: {result['n_train_clips']} clips from {result['n_train_scenes']} scenes; "
        f"val: {result['n_val_clips']} clips from {result['n_val_scenes']} scenes",
        f"- difference pretrained − best random: {_fmt(result['difference'])}, "
        f"95% CI {_ci(result['difference_ci'])} (bootstrap over validation scenes, "
        f"{result['bootstrap']['replicates']} replicates, seed {result['bootstrap']['seed']}; "
        "best random taken per replicate); against the seed best on the full set only: "
        f"{_ci(result['difference_ci_vs_best_seed'])} (informational, not the gate)",
        "",
        "| encoder | " + " | ".join(columns) + f" | 95% CI of {metric} | regularization |",
        "|---|" + "---|" * (len(columns) + 2),
    ]
    for name, scores in rows:
        values = " | ".join(_fmt(scores[column]) for column in columns)
        lines.append(f"| {name} | {values} | {_ci(scores['ci'])} | {scores.get('regularization', '—')} |")
    if "class_counts" in result:
        lines += ["", "| class | train clips | val clips |", "|---|---|---|"]
        for name in result["classes"]:
            lines.append(
                f"| {name} | {result['class_counts']['train'][name]} | {result['class_counts']['val'][name]} |"
            )
    thresholds = result["thresholds"]
    lines += [
        "",
        f"Ego-motion thresholds: stopped below {thresholds['stopped_speed_mps']} m/s; "
        f"left/right beyond ±{thresholds['turn_yaw_rate_rps']} rad/s (positive = counter-clockwise = left).",
        "Features: frozen encoder on unmasked clips, pooled by `MaskedVideoModel.features`, "
        "standardized on the training clips; heads' regularization chosen by scene-grouped CV on "
        "the training scenes only.",
        "",
    ]
    return "\n".join(lines)


def plot_confusions(result: dict, val_targets: np.ndarray, path: Path) -> None:
    """Row-normalized confusion matrices (pretrained, best random, majority) side by side."""
    classes = result["classes"]
    best = random_name(result["random"]["summary"]["best_seed"])
    panels = [(PRETRAINED, "pretrained"), (best, f"best random ({best})"), (MAJORITY, "majority")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0))
    for axis, (name, title) in zip(axes, panels, strict=True):
        matrix = confusion_matrix(val_targets, result["_predictions"][name], labels=classes).astype(float)
        rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)
        axis.imshow(rates, vmin=0.0, vmax=1.0, cmap="Blues")
        for row in range(len(classes)):
            for col in range(len(classes)):
                axis.text(
                    col,
                    row,
                    f"{int(matrix[row, col])}",
                    ha="center",
                    va="center",
                    color="white" if rates[row, col] > 0.5 else "black",
                    fontsize=9,
                )
        axis.set_xticks(range(len(classes)), classes, rotation=45)
        axis.set_yticks(range(len(classes)), classes)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        score = (
            result["pretrained"]
            if name == PRETRAINED
            else (
                result["majority"] if name == MAJORITY else result["random"]["per_seed"][name.split("-")[1]]
            )
        )
        axis.set_title(f"{title}\nbal. acc {score['balanced_accuracy']:.3f}", fontsize=10)
    fig.suptitle(f"ego-motion probe on validation scenes: gate {result['gate']} (counts; colour = row rate)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_speed(result: dict, val_targets: np.ndarray, path: Path) -> None:
    """Predicted vs true mean speed for the pretrained and the best random encoder."""
    best = random_name(result["random"]["summary"]["best_seed"])
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.2), sharex=True, sharey=True)
    limit = float(max(np.max(val_targets), 1e-3)) * 1.1
    for axis, name in zip(axes, (PRETRAINED, best), strict=True):
        axis.scatter(val_targets, result["_predictions"][name], s=8, alpha=0.6)
        axis.plot([0, limit], [0, limit], color="grey", linewidth=1)
        score = (
            result["pretrained"] if name == PRETRAINED else result["random"]["per_seed"][name.split("-")[1]]
        )
        axis.set_title(f"{name}: R² {score['r2']:.3f}, MAE {score['mae']:.2f} m/s", fontsize=10)
        axis.set_xlabel("true mean speed (m/s)")
        axis.set_ylabel("predicted (m/s)")
    fig.suptitle(f"speed probe on validation scenes: gate {result['gate']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: dict, val_targets: np.ndarray, out: Path) -> list[Path]:
    """Write report.json, report.md and the task's PNG under `out` (created). Returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md"]
    write_json(result, paths[0])
    paths[1].write_text(markdown(result))
    if "classes" in result:
        paths.append(out / "confusion.png")
        plot_confusions(result, val_targets, paths[-1])
    else:
        paths.append(out / "speed.png")
        plot_speed(result, val_targets, paths[-1])
    return paths
