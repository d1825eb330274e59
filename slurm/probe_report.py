"""Read mvm-probe's report.json robustly: one task at the top level, or a section per task.

mvm-probe writes one task's fields at the top level (`task`, `metric`, `pretrained`, `random`,
`difference_ci`, `gate`); a probe of several tasks may write a section per task, either under
`tasks` or as top-level objects holding those fields. Every form reads as {task: TaskScore}; the
overall gate is the report's own `gate` when present, else "pass" only when every task passed.

    read_probe_report(Path("runs/x1/probe/report.json")).tasks["ego-motion"].pretrained
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mvm.shards import NotRegularFileError, open_regular

PRIMARY_TASK = "ego-motion"
"""The task a report's headline columns show when it is present (else the first task)."""


class ProbeReportError(ValueError):
    """A report.json that cannot be read or holds no task (the message names the file)."""


@dataclass(frozen=True)
class TaskScore:
    """One task's headline numbers; a field the report lacks is None."""

    metric: str
    """Primary metric name (balanced_accuracy, r2, delta_1.25, ...)."""
    pretrained: float | None
    ci: tuple[float, float] | None
    """95% CI over validation scenes."""
    random_best: float | None
    difference_ci: tuple[float, float] | None
    """95% CI of pretrained minus the best random encoder."""
    gate: str | None


@dataclass(frozen=True)
class ProbeReport:
    tasks: dict[str, TaskScore]
    gate: str
    """"pass" or "fail" for the whole report."""

    @property
    def primary(self) -> tuple[str, TaskScore]:
        name = PRIMARY_TASK if PRIMARY_TASK in self.tasks else next(iter(self.tasks))
        return name, self.tasks[name]


def _pair(value) -> tuple[float, float] | None:
    ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
    return (float(value[0]), float(value[1])) if ok else None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _is_section(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("metric"), str) and "pretrained" in value


def task_score(section: dict) -> TaskScore:
    """One task's section (the legacy top-level fields) -> TaskScore."""
    metric = section["metric"]
    pretrained = section.get("pretrained") if isinstance(section.get("pretrained"), dict) else {}
    summary = (
        (section.get("random") or {}).get("summary") if isinstance(section.get("random"), dict) else None
    )
    gate = section.get("gate")
    return TaskScore(
        metric=metric,
        pretrained=_number(pretrained.get(metric)),
        ci=_pair(pretrained.get("ci")),
        random_best=_number(summary.get("best")) if isinstance(summary, dict) else None,
        difference_ci=_pair(section.get("difference_ci")),
        gate=gate if gate in ("pass", "fail") else None,
    )


def parse_probe_report(report: dict, where: str) -> ProbeReport:
    """A report.json's object -> ProbeReport; ProbeReportError naming `where` when it holds no task."""
    if isinstance(report.get("tasks"), dict):
        sections = {name: value for name, value in report["tasks"].items() if _is_section(value)}
    elif _is_section(report):
        sections = {str(report.get("task") or PRIMARY_TASK): report}
    else:
        sections = {name: value for name, value in report.items() if _is_section(value)}
    if not sections:
        raise ProbeReportError(f"{where} holds no probe task (no metric and pretrained fields)")
    tasks = {name: task_score(section) for name, section in sections.items()}
    gate = report.get("gate")
    if gate not in ("pass", "fail"):
        gate = "pass" if all(task.gate == "pass" for task in tasks.values()) else "fail"
    return ProbeReport(tasks, gate)


def read_probe_report(path: Path) -> ProbeReport:
    """parse_probe_report of the file at `path`; ProbeReportError naming it when unreadable."""
    try:
        with open_regular(path) as handle:
            value = json.loads(handle.read().decode())
    except NotRegularFileError as error:
        raise ProbeReportError(f"{path} is {error.strerror}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProbeReportError(f"cannot read {path}: {error}") from None
    if not isinstance(value, dict):
        raise ProbeReportError(f"{path} holds {type(value).__name__}, not a JSON object")
    return parse_probe_report(value, str(path))
