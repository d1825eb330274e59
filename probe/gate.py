"""The gate's verdict: does pretraining beat random initialisation, beyond scene-sampling noise?"""

from __future__ import annotations

import math
from dataclasses import dataclass

PASS, FAIL = "pass", "fail"


@dataclass(frozen=True)
class Verdict:
    """The gate's decision and the reason in words."""

    gate: str
    """PASS or FAIL."""
    reason: str
    """One sentence a user can act on."""


MIN_VAL_SCENES = 2
"""A scene-level bootstrap over fewer scenes has no spread: its CI would be a point, not a bound."""


def decide(
    pretrained: float, best_random: float, difference_ci: tuple[float, float], metric: str, val_scenes: int
) -> Verdict:
    """PASS iff pretrained > best random on the full validation set AND the CI of the difference is above 0.

    pretrained, best_random: primary-metric point estimates; difference_ci: (low, high) of the
    bootstrap distribution of pretrained − best random; val_scenes: distinct validation scenes
    (at least MIN_VAL_SCENES, or the gate fails).
    """
    low, high = difference_ci
    if val_scenes < MIN_VAL_SCENES:
        return Verdict(
            FAIL,
            f"only {val_scenes} validation scene(s): a scene-level confidence interval needs at least "
            f"{MIN_VAL_SCENES}; add validation scenes",
        )
    if not all(math.isfinite(value) for value in (pretrained, best_random, low, high)):
        return Verdict(
            FAIL, f"{metric} or its confidence interval is undefined (too few validation scenes or classes)"
        )
    if pretrained <= best_random:
        return Verdict(
            FAIL,
            f"pretrained {metric} {pretrained:.3f} does not exceed the best random encoder's {best_random:.3f}",
        )
    if low <= 0.0:
        return Verdict(
            FAIL,
            f"pretrained {metric} {pretrained:.3f} > best random {best_random:.3f}, but the 95% CI of the "
            f"difference [{low:+.3f}, {high:+.3f}] includes 0: not distinguishable from scene-sampling noise",
        )
    return Verdict(
        PASS,
        f"pretrained {metric} {pretrained:.3f} > best random {best_random:.3f}; 95% CI of the difference "
        f"[{low:+.3f}, {high:+.3f}] is above 0",
    )


STRONG, WEAK, NONE = "strong", "weak", "none"
"""Strength levels: strong = the gate passed and every control condition held; weak = the gate
passed but a control condition did not hold; none = the gate failed."""


@dataclass(frozen=True)
class Comparison:
    """One paired comparison of two scores on the same validation scenes: is `left` above `right`?"""

    name: str
    """"beats_random", "beats_pixels" or "needs_order"."""
    statement: str
    """What holds when it holds, in words ("the pretrained encoder beats ...")."""
    left: float
    """The score that should be higher (primary metric)."""
    right: float
    """The score it is compared with."""
    difference: float
    """left − right."""
    ci: tuple[float, float]
    """95% scene-bootstrap interval of the paired difference."""
    held: bool
    """difference > 0 and the interval's lower end > 0 (both finite)."""


def compare(name: str, statement: str, left: float, right: float, ci: tuple[float, float]) -> Comparison:
    """A Comparison; held iff left > right and the CI of left − right lies above zero."""
    finite = all(math.isfinite(value) for value in (left, right, *ci))
    return Comparison(name, statement, left, right, left - right, ci, finite and left > right and ci[0] > 0.0)


def strength(verdict: Verdict, conditions: list[Comparison]) -> tuple[str, str]:
    """(STRONG | WEAK | NONE, reason): STRONG only when the gate passed and every condition held."""
    failed = [condition.name for condition in conditions if not condition.held]
    if verdict.gate != PASS:
        return NONE, "the gate failed"
    if failed:
        return WEAK, "the gate passed, but not: " + ", ".join(failed)
    return STRONG, "the gate passed and every control condition held: " + ", ".join(
        c.name for c in conditions
    )
