"""mvm-report's PNG plots: each sweep axis against a measurement, mean over seeds with ± sd error bars.

A line is one axis (slurm/grid.py; report_axes.points); an axis with fewer than two points is not
drawn, and a panel with nothing to draw says which runs it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mvm.atomic import save_figure  # noqa: E402
from mvm.slurm.report_axes import AXIS_X, points, spread, task_names, task_value  # noqa: E402
from mvm.slurm.report_collect import RunRecord  # noqa: E402

Value = Callable[[RunRecord], object]


def _panel(ax, records: list[RunRecord], axes: tuple[str, ...], y_of: Value, ylabel: str, title: str,
           baseline_of: Value | None = None) -> bool:  # fmt: skip
    """One panel: a line per axis with two or more points, mean ± sd over seeds; False when none."""
    drawn, all_xs = False, set()
    for axis in axes:
        pts = [(p.x, spread([y_of(r) for r in p.runs]), p) for p in points(records, axis) if p.x is not None]
        pts = [(x, s, p) for x, s, p in pts if s is not None]
        if len(pts) < 2:
            continue
        xs = [x for x, _, _ in pts]
        all_xs.update(xs)
        line = ax.errorbar(xs, [s.mean for _, s, _ in pts], yerr=[s.sd or 0 for _, s, _ in pts], marker="o",
                           capsize=3, label=f"{axis} (n={'/'.join(str(s.n) for _, s, _ in pts)})")[0]  # fmt: skip
        if baseline_of is not None:
            base = [spread([baseline_of(r) for r in p.runs]) for _, _, p in pts]
            ax.plot(xs, [b.mean if b else None for b in base], ls="--", marker="x", color=line.get_color(),
                    label=f"{axis}: best random")  # fmt: skip
        drawn = True
    ax.set(xlabel=AXIS_X[axes[0]][1].split(" (")[0], ylabel=ylabel, title=title)
    if drawn and axes[0].startswith("data"):  # scales double: log x, ticks at the scene counts
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_xs), [str(x) for x in sorted(all_xs)])
        ax.minorticks_off()
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "needs two points of this axis", ha="center", va="center", transform=ax.transAxes,
                color="gray")  # fmt: skip
    return drawn


Panel = tuple[tuple[str, ...], Value, str, str, Value | None]
"""(axes drawn as lines, y value of a run, y label, title, best-random baseline or None)."""


def _figure(records: list[RunRecord], path: Path, panels: list[Panel]) -> Path:
    """One PNG of panels side by side."""
    fig, axs = plt.subplots(1, len(panels), figsize=(4.8 * len(panels) + 1, 3.9), squeeze=False)
    for ax, (axes, y_of, ylabel, title, baseline) in zip(axs[0], panels, strict=True):
        _panel(ax, records, axes, y_of, ylabel, title, baseline)
    fig.tight_layout()
    return save_figure(fig, path)


def _task(task: str, field: str = "pretrained") -> Value:
    return lambda r: task_value(r, task, field)


def plot_all(records: list[RunRecord], out: Path) -> list[Path]:
    """Write the scaling plots into `out` (each file atomically); their paths."""
    tasks = task_names(records) or ["ego-motion"]
    data = ("data-compute", "data-epoch")
    ddp = ("ddp-global", "ddp-rank")
    metric = {t: next((r.tasks[t]["metric"] for r in records if t in r.tasks), "score") for t in tasks}
    figures: dict[str, list[Panel]] = {
        "probe_vs_data.png": [(data, _task(t), f"{t}: {metric[t]}", f"probe {t} vs training data",
                               _task(t, "random_best")) for t in tasks],
        "throughput_memory_vs_data.png": [
            (("data-compute",), lambda r: r.clips_per_s, "clips/s (all ranks)", "throughput vs data", None),
            (("data-compute",), lambda r: r.peak_mem_mb, "peak memory per rank (MB)", "memory vs data", None),
        ],
        "clip_len.png": [
            *[(("T",), _task(t), f"{t}: {metric[t]}", f"probe {t} vs T (horizon fixed)", _task(t, "random_best"))
              for t in tasks],
            (("T",), lambda r: r.clips_per_s, "clips/s", "throughput vs T", None),
            (("T",), lambda r: r.peak_mem_mb, "peak memory per rank (MB)", "memory vs T", None),
        ],
        "ddp.png": [
            (ddp, lambda r: r.step_time_s, "step time (s)", "step time vs processes", None),
            (ddp, lambda r: 0.0 if r.world_size == 1 else r.ddp_overhead_s,
             "step s minus 1 process (same batch/rank)", "exposed DDP overhead", None),
            (ddp, lambda r: 0.0 if r.world_size == 1 else r.comm_frac, "comm_frac (all-reduce share)",
             "communication share", None),
        ],
    }  # fmt: skip
    return [_figure(records, out / name, panels) for name, panels in figures.items()]
