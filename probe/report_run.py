"""The run's report files: one report.json and one report.md with a section per task, and each task's PNGs.

report.json: `tasks` (task name -> its section: probe/report_files.py for ego-motion and speed,
probe/depth_report.py for depth; every section has `metric`, `pretrained`, `random.summary.best`,
`difference_ci`, `gate`, `strength` and `conditions` under the same names), `task_order` (the
names in the order run, as JSON keys are written sorted), `gate` (pass when every task's gate
passed), `skipped` (task -> why it did not run: depth on shards without depth targets when no
--task was given), and the run's fields (checkpoint, checkpoint_step, model).
report.md: a summary line per task, then each task's section one heading level down.
PNGs: confusion.png or speed.png, controls.png (controls-<task>.png for a second clip-level task),
depth.png.
"""

from __future__ import annotations

from pathlib import Path

from mvm.atomic import ensure_dir, write_atomic
from mvm.probe.depth import DepthResult
from mvm.probe.depth_report import depth_markdown, depth_report_dict, plot_depth
from mvm.probe.evaluate import ProbeResult
from mvm.probe.gate import FAIL, PASS
from mvm.probe.report_files import markdown, report_dict, write_figures
from mvm.report_format import dumps_json


def demoted(text: str) -> str:
    """Markdown with every heading one level down (a task's "# ..." becomes "## ...")."""
    return "\n".join("#" + line if line.startswith("#") else line for line in text.split("\n"))


def summary_line(result: ProbeResult | DepthResult) -> str:
    strength = f", strength **{result.strength.upper()}**" if result.strength else ""
    return f"- {result.task.name}: gate **{result.verdict.gate.upper()}**{strength} ({result.verdict.reason})"


def write_report(
    results: list[ProbeResult | DepthResult],
    out: Path,
    extra: dict | None = None,
    skipped: dict[str, str] | None = None,
) -> list[Path]:
    """Write report.json, report.md and every task's PNGs under `out`; returns the paths (report.json first).

    extra: run-level report.json fields (checkpoint, checkpoint_step, model); skipped: task -> reason.
    """
    ensure_dir(out)
    extra, skipped = extra or {}, skipped or {}
    sections, texts, figures = {}, [], []
    clip_tasks = 0
    for result in results:
        if isinstance(result, DepthResult):
            section = depth_report_dict(result)
            texts.append(depth_markdown(result, section))
            figures.append(out / "depth.png")
            plot_depth(result, figures[-1])
        else:
            section = report_dict(result)
            texts.append(markdown(result, section))
            name = "controls.png" if clip_tasks == 0 else f"controls-{result.task.name}.png"
            figures += write_figures(result, out, name)
            clip_tasks += 1
        sections[result.task.name] = section
    gate = PASS if all(result.verdict.gate == PASS for result in results) else FAIL
    report = {"tasks": sections, "task_order": list(sections), "gate": gate, "skipped": skipped, **extra}
    lines = [f"# Probe: **{gate.upper()}** ({', '.join(sections)})", ""]
    lines += [summary_line(result) for result in results]
    lines += [f"- {task}: skipped: {reason}." for task, reason in skipped.items()]
    if "checkpoint" in extra:
        lines.append(f"- checkpoint: `{extra['checkpoint']}` (step {extra.get('checkpoint_step', '?')})")
    lines.append("")
    lines += [demoted(text) for text in texts]
    paths = [out / "report.json", out / "report.md"]
    write_atomic(paths[0], dumps_json(report))
    write_atomic(paths[1], "\n".join(lines))
    return paths + figures
