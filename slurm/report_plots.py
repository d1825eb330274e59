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

from ingest.atomic import atomic_path  # noqa: E402
from slurm.report_collect import RunRecord, data_key  # noqa: E402

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
    try:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def plot_all(records: list[RunRecord], out: Path) -> list[Path]:
    """Write the four scaling plots into `out` (each file atomically); their paths."""
    probe_label = _probe_label(records)
    written = []

    fig, (ax_probe, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    _panel(ax_probe, records, "data", lambda r: r.probe_pretrained, probe_label, with_ci=True,
           baseline_of=lambda r: r.probe_random_best)  # fmt: skip
    ax_probe.set_title("probe vs training data (95% CI over val scenes)")
    _panel(ax_loss, records, "data", lambda r: r.final_loss, "final training loss")
    ax_loss.set_title("final loss vs training data")
    written.append(_save(fig, out / "probe_vs_clips.png"))

    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(10, 3.8))
    _panel(ax_speed, records, "data", lambda r: r.clips_per_s, "clips/s (all ranks)")
    ax_speed.set_title("throughput vs dataset scale")
    _panel(ax_mem, records, "data", lambda r: r.peak_mem_mb, "peak memory per rank (MB)")
    ax_mem.set_title("peak memory vs dataset scale")
    written.append(_save(fig, out / "throughput_memory_vs_scale.png"))

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    _panel(axes[0], records, "world_size", lambda r: r.step_time_s, "step time (s)")
    axes[0].set_title("step time vs world size")
    _panel(axes[1], records, "world_size", lambda r: r.comm_frac if r.world_size > 1 else 0.0,
           "comm_frac (all-reduce share)")  # fmt: skip
    axes[1].set_title("communication share vs world size")
    _panel(axes[2], records, "world_size", lambda r: 0.0 if r.world_size == 1 else r.ddp_overhead,
           "step time / one-process step time - 1")  # fmt: skip
    axes[2].set_title("exposed DDP overhead vs world size")
    _panel(axes[3], records, "world_size", lambda r: r.clips_per_s, "clips/s (all ranks)")
    axes[3].set_title("throughput vs world size")
    written.append(_save(fig, out / "world_size.png"))

    fig, (ax_probe, ax_speed) = plt.subplots(1, 2, figsize=(10, 3.8))
    _panel(ax_probe, records, "clip_len", lambda r: r.probe_pretrained, probe_label, with_ci=True,
           baseline_of=lambda r: r.probe_random_best)  # fmt: skip
    ax_probe.set_title("probe vs clip length")
    _panel(ax_speed, records, "clip_len", lambda r: r.clips_per_s, "clips/s (all ranks)")
    ax_speed.set_title("throughput vs clip length")
    written.append(_save(fig, out / "clip_len.png"))
    return written
