"""mvm-report's PNG plots: each one axis of the sweep against a measurement, one line per setting of the others.

A series is the runs that agree on every axis but the plotted one (e.g. the dataset-scale plot
draws one line per (T, world size, preset)); series with fewer than two distinct x values are left
out, and a plot with no series says which runs it needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mvm.atomic import save_figure  # noqa: E402
from mvm.slurm.report_collect import RunRecord, data_key  # noqa: E402

AXES: dict[str, tuple[Callable[[RunRecord], object], Callable[[RunRecord], tuple], str]] = {
    "data": (
        lambda r: r.n_train_clips,
        lambda r: (f"T={r.clip_len}", f"w={r.world_size}", r.preset),
        "training clips (distinct)",
    ),
    "clip_len": (
        lambda r: r.clip_len,
        lambda r: (f"data={data_key(r)}", f"w={r.world_size}", r.preset),
        "clip length T (frames)",
    ),
    "world_size": (
        lambda r: r.world_size,
        lambda r: (f"data={data_key(r)}", f"T={r.clip_len}", r.preset),
        "world size (processes / GPUs)",
    ),
}
"""axis -> (x value of a run, the fixed settings that define its series, x label)."""


def series(records: list[RunRecord], axis: str) -> dict[str, list[RunRecord]]:
    """Runs grouped by everything but `axis`, each group sorted by x; groups with < 2 distinct x dropped."""
    x_of, group_of, _ = AXES[axis]
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        if x_of(record) is not None:
            groups[", ".join(group_of(record))].append(record)
    return {
        label: sorted(runs, key=x_of)
        for label, runs in sorted(groups.items())
        if len({x_of(run) for run in runs}) >= 2
    }


def _panel(
    ax, records: list[RunRecord], axis: str, y_of, ylabel: str, with_ci: bool = False, baseline_of=None
) -> bool:
    """Draw one panel; False (and a note on the panel) when no series has two points.

    with_ci: probe CI error bars; baseline_of: a second value per run drawn dashed in the same colour.
    """
    x_of, _, xlabel = AXES[axis]
    drawn = False
    all_xs: set = set()
    for label, runs in series(records, axis).items():
        points = [(x_of(run), y_of(run), run) for run in runs if y_of(run) is not None]
        if len(points) < 2:
            continue
        xs, ys, kept = zip(*points, strict=True)
        all_xs.update(xs)
        if with_ci and all(run.probe_ci for run in kept):
            low = [y - run.probe_ci[0] for y, run in zip(ys, kept, strict=True)]
            high = [run.probe_ci[1] - y for y, run in zip(ys, kept, strict=True)]
            line = ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label)[0]
        else:
            (line,) = ax.plot(xs, ys, marker="o", label=label)
        if baseline_of is not None:
            ax.plot(xs, [baseline_of(run) for run in kept], ls="--", marker="x", color=line.get_color(),
                    label=f"{label}: best random")  # fmt: skip
        drawn = True
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if axis == "data" and drawn:
        # Log scale (scales double), ticks at the clip counts themselves.
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_xs), [str(x) for x in sorted(all_xs)])
        ax.minorticks_off()
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, f"needs two runs differing\nonly in {xlabel}", ha="center", va="center",
                transform=ax.transAxes, color="gray")  # fmt: skip
    return drawn


def _probe_label(records: list[RunRecord]) -> str:
    metrics = {r.probe_metric for r in records if r.probe_metric}
    return f"probe {metrics.pop()} (pretrained)" if len(metrics) == 1 else "probe primary metric (pretrained)"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save_figure(fig, path)


Panel = tuple[str, Callable[[RunRecord], object], str, str, dict]
"""(axis, y value of a run, y label, title, extra _panel options)."""


def _figure(records: list[RunRecord], path: Path, panels: list[Panel]) -> Path:
    """One PNG of panels side by side."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 1, 3.8))
    for ax, (axis, y_of, ylabel, title, options) in zip(axes, panels, strict=True):
        _panel(ax, records, axis, y_of, ylabel, **options)
        ax.set_title(title)
    return _save(fig, path)


def plot_all(records: list[RunRecord], out: Path) -> list[Path]:
    """Write the four scaling plots into `out` (each file atomically); their paths."""
    probe_label = _probe_label(records)
    probe = (lambda r: r.probe_pretrained, probe_label)
    with_random = {"with_ci": True, "baseline_of": lambda r: r.probe_random_best}
    speed = (lambda r: r.clips_per_s, "clips/s (all ranks)")
    figures: dict[str, list[Panel]] = {
        "probe_vs_clips.png": [
            ("data", *probe, "probe vs training data (95% CI over val scenes)", with_random),
            ("data", lambda r: r.final_loss, "final training loss", "final loss vs training data", {}),
        ],
        "throughput_memory_vs_scale.png": [
            ("data", *speed, "throughput vs dataset scale", {}),
            ("data", lambda r: r.peak_mem_mb, "peak memory per rank (MB)", "peak memory vs dataset scale", {}),
        ],
        "world_size.png": [
            ("world_size", lambda r: r.step_time_s, "step time (s)", "step time vs world size", {}),
            ("world_size", lambda r: r.comm_frac if r.world_size > 1 else 0.0, "comm_frac (all-reduce share)",
             "communication share vs world size", {}),
            ("world_size", lambda r: 0.0 if r.world_size == 1 else r.ddp_overhead,
             "step time / one-process step time - 1", "exposed DDP overhead vs world size", {}),
            ("world_size", *speed, "throughput vs world size", {}),
        ],
        "clip_len.png": [
            ("clip_len", *probe, "probe vs clip length", with_random),
            ("clip_len", *speed, "throughput vs clip length", {}),
        ],
    }  # fmt: skip
    return [_figure(records, out / name, panels) for name, panels in figures.items()]
