"""One way to format numbers and markdown tables in every report (audit, probe, sweep, bench).

fmt(0.80512) -> "0.805"     fmt(None) -> "—"     fmt(float("nan")) -> "—"     fmt(3, 0) -> "3"
fmt_ci((0.1, 0.4)) -> "[0.100, 0.400]"
markdown_table(["a", "b"], [[1, 2.5]]) -> "| a | b |\n|---|---|\n| 1 | 2.500 |"
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import numpy as np

MISSING = "—"


def fmt(value, digits: int = 3) -> str:
    """A number with `digits` decimals; ints stay ints; None / NaN / inf -> "—"; str passes through."""
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value):
        return MISSING
    return f"{value:.{digits}f}"


def regularization_text(value) -> str:
    """A regularization strength (C or alpha, 1e-6 .. 1e6) in its own scale: 0.0001, 1e+06; None -> "—"."""
    return MISSING if value is None else f"{float(value):g}"


def fmt_ci(ci, digits: int = 3) -> str:
    """A (low, high) interval as "[low, high]"; a missing interval as "—"."""
    if ci is None:
        return MISSING
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], digits: int = 3) -> str:
    """A GitHub markdown table; cells that are not strings go through `fmt`."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|") if isinstance(value, str) else fmt(value, digits)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def json_ready(value):
    """Strict-JSON form: NaN/inf -> None, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_json(value) -> str:
    """Indented, key-sorted strict JSON text ending in a newline (write it with atomic.write_atomic)."""
    return json.dumps(json_ready(value), indent=2, sort_keys=True, allow_nan=False) + "\n"


def parse_jsonl(text: str, where: str, warn: Callable[[str], None]) -> list[dict]:
    """The JSON objects of JSONL `text` (a run's metrics.jsonl or keys-rank*.jsonl), one per non-blank
    line. A line that is not one (torn by a crash mid-write, most often the last) is skipped and
    named through `warn`: the logs are appended line by line, so a killed run can leave one."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            warn(f"{where} line {number} is not a JSON object (torn by a crash mid-write?); skipped")
    return records
