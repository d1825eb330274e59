"""A clip-level task's report section (ego-motion, speed): its report.json entry, its report.md
section, and its PNGs, confusion.png or speed.png and with the controls controls.png (probe/plots.py).
probe/report_run.py gathers every task's section into the run's files. Every file goes through
mvm.atomic; numbers and tables through mvm.report_format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mvm.features import INGESTED, VIEWS
from mvm.probe.evaluate import FLOW, MAJORITY, ProbeResult, ProbeRow, Source
from mvm.probe.gate import Comparison
from mvm.probe.layers import LayerChoice
from mvm.probe.plots import plot_confusions, plot_controls, plot_speed
from mvm.probe.stats import CI_LEVEL
from mvm.probe.tasks import class_counts
from mvm.report_format import fmt, fmt_ci, markdown_table, regularization_text


def grid_name(grid) -> str:
    return f"{grid[0]}x{grid[1]}"


def _row_json(row: ProbeRow) -> dict:
    """The legacy per-encoder entry: metrics at the top level, then ci and the head's settings."""
    entry = {**row.metrics, "ci": list(row.ci), "per_class_recall": row.per_class_recall}
    if row.regularization is not None:
        entry.update(
            regularization=row.regularization,
            regularization_on_edge=row.on_edge,
            cv_score=row.cv_score,
            feature_dim=row.feature_dim,
            layer=row.layer,
        )
    return entry


def _control_json(row: ProbeRow) -> dict:
    return {
        "encoder": row.source.name,
        "kind": row.source.kind,
        "seed": row.source.seed,
        "view": row.view,
        "metrics": row.metrics,
        "ci": list(row.ci),
        "per_class_recall": row.per_class_recall,
        "drop": row.drop,
        "drop_ci": None if row.drop_ci is None else list(row.drop_ci),
        "regularization": row.regularization,
        "regularization_on_edge": row.on_edge,
        "cv_score": row.cv_score,
        "feature_dim": row.feature_dim,
        "layer": row.layer,
    }


def condition_json(condition: Comparison) -> dict:
    return {
        "name": condition.name,
        "statement": condition.statement,
        "held": condition.held,
        "left": condition.left,
        "right": condition.right,
        "difference": condition.difference,
        "ci": list(condition.ci),
    }


def gate_section(result, metric: str, row_json) -> dict:
    """The fields every task's section shares, under the same names: `pretrained`, `random` (per
    seed and summary), `difference`, `difference_ci`, `gate`, `reason`, `strength`,
    `strength_reason`, `conditions`. result: a ProbeResult or a DepthResult (first condition:
    beats_random); row_json: that task's row -> dict."""
    randoms = result.randoms
    values = np.array([row.metrics[metric] for row in randoms])
    beats_random = result.conditions[0]
    return {
        "pretrained": row_json(result.row(Source.pretrained())),
        "random": {
            "per_seed": {str(row.source.seed): row_json(row) for row in randoms},
            "summary": {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "best": beats_random.right,
                "best_seed": result.best_random.seed,
            },
        },
        "difference": beats_random.difference,
        "difference_ci": list(beats_random.ci),
        "gate": result.verdict.gate,
        "reason": result.verdict.reason,
        "strength": result.strength,
        "strength_reason": result.strength_reason,
        "conditions": [condition_json(condition) for condition in result.conditions],
    }


def report_dict(result: ProbeResult) -> dict:
    """The task's JSON-ready section: the gate fields, strength, conditions, pooling, controls."""
    task = result.task
    pooling = result.pooling
    report = {
        "task": task.name,
        "metric": task.metric,
        **gate_section(result, task.metric, _row_json),
        "majority": _row_json(result.row(Source(MAJORITY))),
        "difference_ci_vs_best_seed": list(result.difference_ci_vs_best_seed),
        "pooling": {
            "grid": list(pooling.grid),
            "candidates": [list(grid) for grid in pooling.candidates],
            "cv_scores": {grid_name(g): scores for g, scores in pooling.cv_scores.items()},
            "criterion": {grid_name(g): value for g, value in pooling.criterion.items()},
            "rule": "highest kind-balanced mean grouped-CV score on the training scenes "
            "(mean of pretrained, mean of random encoders, pixels); ties to the coarser grid",
        },
        "n_train_clips": len(result.train_targets),
        "n_val_clips": len(result.val_targets),
        "n_train_scenes": len(np.unique(result.train_scenes)),
        "n_val_scenes": len(np.unique(result.val_scenes)),
        "bootstrap": {
            "replicates": result.n_boot,
            "seed": result.seed,
            "unit": "validation scene",
            "level": CI_LEVEL,
        },
        "thresholds": {
            "stopped_speed_mps": task.thresholds.stopped_speed_mps,
            "turn_yaw_rate_rps": task.thresholds.turn_yaw_rate_rps,
        },
    }
    if result.layers is not None:
        report["layers"] = layers_json(result.layers)
    if result.controls:
        report["controls"] = {
            "views": list(VIEWS),
            "rows": [_control_json(row) for row in result.rows if row.source.kind != MAJORITY],
        }
    if task.kind == "classification":
        report["classes"] = list(task.classes)
        report["class_counts"] = {
            "train": class_counts(task, result.train_targets),
            "val": class_counts(task, result.val_targets),
        }
    else:
        report["target_summary"] = {
            split: {
                "mean": float(np.mean(y)),
                "std": float(np.std(y)),
                "min": float(np.min(y)),
                "max": float(np.max(y)),
            }
            for split, y in (("train", result.train_targets), ("val", result.val_targets))
        }
    return report


def condition_sentence(condition: Comparison, metric: str, right_label: str) -> str:
    """One plain sentence: held or not, the two scores, the difference and its CI."""
    return (
        f"{'Held' if condition.held else 'Not held'}: {condition.statement} — {metric} "
        f"{fmt(condition.left)} vs {fmt(condition.right)} {right_label}, difference "
        f"{fmt(condition.difference)}, 95% CI {fmt_ci(condition.ci)}."
    )


GRID_RULE = (
    "per encoder, the highest grouped-CV score on the training scenes at the chosen grid "
    "(the grid itself chosen on the `last` layer); ties to the deeper layer"
)


def layers_json(choice: LayerChoice, rule: str = GRID_RULE) -> dict:
    """report.json's `layers`: every encoder's CV score per layer at the chosen grid, and its choice."""
    return {
        "grid": list(choice.grid),
        "candidates": list(choice.layers),
        "cv_scores": choice.cv_scores,
        "chosen": choice.chosen,
        "rule": rule,
    }


def layers_markdown(choice: LayerChoice, score: str = "grouped-CV score") -> list[str]:
    """report.md's layer table: one row per encoder, one column per layer, then the chosen one."""
    return [
        f"## Encoder layer ({score} on the training scenes at the {grid_name(choice.grid)} grid)",
        "",
        "`stem` = the CNN stem's tokens without position codes; `blockK` = the K-th block's output; "
        "`last` = after the final norm. Each encoder reads its best layer (ties: the deeper).",
        "",
        markdown_table(
            ["encoder", *choice.layers, "chosen"],
            [
                [name, *(scores[layer] for layer in choice.layers), choice.chosen[name]]
                for name, scores in choice.cv_scores.items()
            ],
        ),  # fmt: skip
        "",
    ]


def edge_sentence(rows: list[ProbeRow]) -> str:
    """One sentence naming the rows whose regularization is on its grid's edge (or saying none is)."""
    edged = [
        row.source.name + ("" if row.view == INGESTED else f" ({row.view})") for row in rows if row.on_edge
    ]
    if not edged:
        return "No head's regularization is on the edge of its grid (mvm.probe.linear)."
    return (
        f"Regularization on the edge of its grid (the best may lie beyond it): {', '.join(edged)}; "
        "these rows may be under- or over-penalized."
    )


def markdown(result: ProbeResult, report: dict) -> str:
    """The task's report.md section: one sentence per condition first, then the tables."""
    task, metric = result.task, result.task.metric
    labels = {
        "beats_random": f"({result.best_random.name})",
        "beats_pixels": "(pixels)",
        "needs_order": "(shuffled frames)",
    }
    strength = f", strength **{result.strength.upper()}**" if result.strength else ""
    lines = [f"# {task.name}: gate **{result.verdict.gate.upper()}**{strength}", ""]
    lines += [condition_sentence(c, metric, labels[c.name]) for c in result.conditions]
    lines += [
        "",
        f"- gate: {result.verdict.reason}.",
        f"- strength: {result.strength or 'not computed'} ({result.strength_reason}).",
        f"- task: `{task.name}`, primary metric: `{metric}`",
        f"- train: {report['n_train_clips']} clips from {report['n_train_scenes']} scenes; "
        f"val: {report['n_val_clips']} clips from {report['n_val_scenes']} scenes",
        f"- CIs: percentile bootstrap over validation scenes, {result.n_boot} replicates, seed "
        f"{result.seed}, paired across rows; the gate takes the best random encoder per replicate. "
        f"Against the seed best on the full set only: {fmt_ci(result.difference_ci_vs_best_seed)} "
        "(informational, not the gate).",
        f"- pooling: {grid_name(result.pooling.grid)} grid of token (or pixel) averages per time step, "
        "then [mean, second-half − first-half, mean |step|] over time; grid chosen by scene-grouped CV "
        "on the training scenes (table below).",
        "",
    ]
    columns = (
        ["balanced_accuracy", "macro_f1", "accuracy"] if task.kind == "classification" else ["r2", "mae"]
    )
    ingested = [row for row in result.rows if row.view == INGESTED]
    lines += [
        "## As ingested",
        "",
        markdown_table(
            ["source", *columns, f"95% CI of {metric}", "regularization"],
            [
                [
                    row.source.name
                    + (" (reference, outside the verdict)" if row.source.kind == FLOW else ""),
                    *(row.metrics[c] for c in columns),
                    fmt_ci(row.ci),
                    regularization_text(row.regularization),
                ]
                for row in ingested
            ],
        ),
        "",
        edge_sentence(result.rows),
        "",
    ]
    if result.controls:
        lines += _controls_markdown(result)
    if result.layers is not None:
        lines += layers_markdown(result.layers)
    lines += ["## Pooling grid (grouped-CV score on the training scenes)", ""]
    pooling = result.pooling
    chosen_by = set(next(iter(pooling.cv_scores.values())))  # every source but flow (a reference only)
    names = [row.source.name for row in result.rows if row.view == INGESTED and row.source.name in chosen_by]
    names += sorted(chosen_by - set(names))  # pixels when controls are off
    lines += [
        markdown_table(
            ["grid", *names, "kind-balanced mean"],
            [
                [
                    grid_name(g) + (" (chosen)" if g == pooling.grid else ""),
                    *(pooling.cv_scores[g][n] for n in names),
                ]
                + [pooling.criterion[g]]
                for g in pooling.candidates
            ],
        ),
        "",
    ]
    if task.kind == "classification":
        counts = report["class_counts"]
        lines += [
            markdown_table(
                ["class", "train clips", "val clips"],
                [[name, counts["train"][name], counts["val"][name]] for name in task.classes],
            ),
            "",
        ]
    thresholds = task.thresholds
    lines += [
        f"Ego-motion thresholds: stopped below {thresholds.stopped_speed_mps} m/s; left/right beyond "
        f"±{thresholds.turn_yaw_rate_rps} rad/s (positive = counter-clockwise = left).",
        "",
    ]
    return "\n".join(lines)


def _controls_markdown(result: ProbeResult) -> list[str]:
    metric = result.task.metric
    sources = [row.source for row in result.rows if row.view == INGESTED and row.source.kind != MAJORITY]
    table = []
    for source in sources:
        cells = [source.name]
        for view in VIEWS:
            row = result.row(source, view)
            cells.append(f"{fmt(row.metrics[metric])} {fmt_ci(row.ci)}")
        for view in VIEWS[1:]:
            row = result.row(source, view)
            cells.append(f"{fmt(row.drop)} {fmt_ci(row.drop_ci)}")
        table.append(cells)
    lines = [
        "## Controls",
        "",
        f"{metric} [95% CI] per view: `shuffled` = each clip's frames in a seeded random order, "
        "`static` = frame 0 repeated; `pixels` = RGB thumbnails at the pooling grid, no encoder; "
        "`flow` = each encoder patch's displacement between consecutive frames by block matching "
        "(probe/flow.py), no learning: what a classical motion estimate reads, a reference outside "
        "the verdict. A drop is as ingested − the view (paired CI): how much of the score needs motion.",
        "",
        markdown_table(
            ["source", *VIEWS, "drop when shuffled", "drop when static"],
            table,
        ),
        "",
    ]
    if result.task.kind == "classification":
        classes = result.task.classes
        lines += [
            "Per-class recall on the validation clips:",
            "",
            markdown_table(
                ["source", "view", *classes],
                [
                    [row.source.name, row.view, *(row.per_class_recall[c] for c in classes)]
                    for row in result.rows
                ],
            ),
            "",
        ]
    return lines


def write_figures(result: ProbeResult, out: Path, controls_name: str = "controls.png") -> list[Path]:
    """Write the task's PNG (confusion.png or speed.png) and (controls) `controls_name` under `out`; their paths."""
    paths = []
    if result.task.kind == "classification":
        paths.append(out / "confusion.png")
        plot_confusions(result, paths[-1])
    else:
        paths.append(out / "speed.png")
        plot_speed(result, paths[-1])
    if result.controls:
        paths.append(out / controls_name)
        plot_controls(result, paths[-1])
    return paths
