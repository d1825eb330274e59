"""The depth probe's report section: its report.json entry, its report.md section and depth.png.

The JSON section has the ego-motion section's gate fields under the same names (`metric`,
`pretrained` with the primary metric and `ci`, `random.summary.best`, `difference_ci`, `gate`,
`strength`, `conditions`), so a reader of one task's section reads any task's.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mvm.atomic import save_figure  # noqa: E402
from mvm.probe.depth import ABS_REL, DELTA, METRICS, DepthResult, DepthRow, abs_rel  # noqa: E402
from mvm.probe.evaluate import POSITION_ONLY, Source  # noqa: E402
from mvm.probe.report_files import (  # noqa: E402
    condition_sentence,
    gate_section,
    layers_json,
    layers_markdown,
)
from mvm.probe.stats import CI_LEVEL  # noqa: E402
from mvm.report_format import fmt, fmt_ci, markdown_table, regularization_text  # noqa: E402

HEAD = (
    "per-token ridge regression (standardized features, alpha by scene-grouped CV on the training "
    "scenes) of log depth minus the position-only prediction; prediction = exp(position mean + ridge)"
)


def abs_rel_by_row(result: DepthResult, row: DepthRow) -> list[float]:
    """AbsRel of `row` per token row of the frame (top to bottom); NaN for a row without validation patches."""
    width = result.val.layout[1]
    image_rows = result.val.positions // width
    return [
        abs_rel(result.val.depth[of], row.predictions[of]) if (of := image_rows == r).any() else float("nan")
        for r in range(result.val.layout[0])
    ]


def _row_json(row: DepthRow) -> dict:
    return {
        **row.metrics,
        "ci": list(row.ci[DELTA]),
        "abs_rel_ci": list(row.ci[ABS_REL]),
        "regularization": row.regularization,
        "cv_score": row.cv_score,
        "feature_dim": row.feature_dim,
    }


def _summary(depth: np.ndarray) -> dict:
    return {
        "median_m": float(np.median(depth)),
        "min_m": float(np.min(depth)),
        "max_m": float(np.max(depth)),
    }


def depth_report_dict(result: DepthResult) -> dict:
    """The JSON-ready depth section."""
    report = {
        "task": result.task.name,
        "metric": DELTA,
        "metrics": list(METRICS),
        **gate_section(result, DELTA, _row_json),
        "position_only": _row_json(result.row(Source(POSITION_ONLY))),
        "rows": [
            {"source": row.source.name, "kind": row.source.kind, **_row_json(row)} for row in result.rows
        ],
        "abs_rel_by_token_row": {row.source.name: abs_rel_by_row(result, row) for row in result.rows},
        "head": HEAD,
        "layout": list(result.val.layout),
        "n_train_clips": result.train.clips,
        "n_val_clips": result.val.clips,
        "n_train_patches": len(result.train.depth),
        "n_val_patches": len(result.val.depth),
        "n_train_scenes": len(np.unique(result.train.scenes)),
        "n_val_scenes": len(np.unique(result.val.scenes)),
        "depth_summary": {"train": _summary(result.train.depth), "val": _summary(result.val.depth)},
        "bootstrap": {
            "replicates": result.n_boot,
            "seed": result.seed,
            "unit": "validation scene (all its patches)",
            "level": CI_LEVEL,
        },
    }
    if result.controls:
        report["pixels"] = _row_json(result.row(Source.pixels()))
    if result.layers is not None:
        report["layers"] = layers_json(
            result.layers,
            "per encoder, the highest grouped-CV R² of the residual on the training scenes, every "
            "token of the depth frame; ties to the deeper layer",
        )
    return report


def depth_markdown(result: DepthResult, report: dict) -> str:
    """The depth section of report.md: one sentence per condition, then the tables."""
    labels = {
        "beats_random": f"({result.best_random.name})",
        "beats_pixels": "(pixels)",
        "beats_position_only": "(position-only)",
    }
    strength = f", strength **{result.strength.upper()}**" if result.strength else ""
    lines = [f"# depth: gate **{result.verdict.gate.upper()}**{strength}", ""]
    lines += [condition_sentence(c, DELTA, labels[c.name]) for c in result.conditions]
    lines += [
        "",
        f"- gate: {result.verdict.reason}.",
        f"- strength: {result.strength or 'not computed'} ({result.strength_reason}).",
        "- task: per-token log depth from the clip's LIDAR_TOP depth map (median metres of the projected "
        "points in each patch), the token at the depth frame's step; primary metric `delta_1.25` "
        "(share of patches within a factor 1.25), also `abs_rel` (mean |pred - true| / true, lower is better)",
        f"- train: {report['n_train_patches']} patches of {report['n_train_clips']} clips from "
        f"{report['n_train_scenes']} scenes; val: {report['n_val_patches']} patches of "
        f"{report['n_val_clips']} clips from {report['n_val_scenes']} scenes",
        f"- head: {HEAD}. `position-only` is that position mean alone; `pixels` the patch's RGB values.",
        f"- CIs: percentile bootstrap over validation scenes (all patches of each drawn scene), "
        f"{result.n_boot} replicates, seed {result.seed}, paired across rows; the gate takes the best "
        "random encoder per replicate.",
        "",
        "## Depth as ingested",
        "",
        markdown_table(
            ["source", "delta_1.25", "95% CI", "abs_rel", "95% CI", "alpha", "CV R² of the residual"],
            [
                [
                    row.source.name,
                    row.metrics[DELTA],
                    fmt_ci(row.ci[DELTA]),
                    row.metrics[ABS_REL],
                    fmt_ci(row.ci[ABS_REL]),
                    regularization_text(row.regularization),
                    row.cv_score,
                ]
                for row in result.rows
            ],
        ),
        "",
        "AbsRel per token row (row 0 = top of the frame):",
        "",
        markdown_table(
            ["source", *(f"row {r}" for r in range(result.val.layout[0]))],
            [[name, *values] for name, values in report["abs_rel_by_token_row"].items()],
        ),
        "",
    ]
    if result.layers is not None:
        lines += layers_markdown(result.layers, score="grouped-CV R² of the residual")
    return "\n".join(lines)


def plot_depth(result: DepthResult, path: Path) -> None:
    """delta < 1.25 per source with 95% CIs, and AbsRel per token row for every source."""
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(12.0, 4.4))
    names = [row.source.name for row in result.rows]
    heights = np.array([row.metrics[DELTA] for row in result.rows])
    errors = np.abs(np.array([row.ci[DELTA] for row in result.rows]).T - heights)
    bars.bar(range(len(names)), heights, yerr=np.nan_to_num(errors), capsize=3)
    bars.set_xticks(range(len(names)), names, rotation=20)
    bars.set_ylim(0.0, 1.05)
    bars.set_ylabel("delta < 1.25 (95% CI)")
    bars.set_title(f"depth: gate {result.verdict.gate}, strength {result.strength}", fontsize=10)
    for row in result.rows:
        lines.plot(abs_rel_by_row(result, row), marker="o", label=row.source.name)
    lines.set_xticks(range(result.val.layout[0]))
    lines.set_xlabel("token row (0 = top of the frame)")
    lines.set_ylabel("AbsRel")
    lines.set_title(f"pretrained AbsRel {fmt(result.row(Source.pretrained()).metrics[ABS_REL])}", fontsize=10)
    lines.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
