"""mvm.train.log_window: the metrics line and nonfinite events of a logging window, the non-finite
run carried across windows, and paused time kept out of the step time."""

from __future__ import annotations

import time

import pytest
import torch

from mvm.train.engine import StepStats
from mvm.train.log_window import LogWindow

CPU = torch.device("cpu")


def stats(finite: bool, loss: float) -> StepStats:
    """[finite, loss, grad_norm, emb_std, emb_norm] as the step leaves them."""
    return StepStats(values=torch.tensor([float(finite), loss, 2 * loss, 0.5, 3.0]))


def test_a_window_gives_means_over_finite_steps_and_one_event_per_skipped_update():
    window = LogWindow(clips_per_step=8, device=CPU, comm_timer=None)
    for finite, loss in [(True, 1.0), (False, float("nan")), (True, 3.0)]:
        window.add(stats(finite, loss))
    window.data_s = 0.0
    record, events, longest = window.flush(step=12, lr=0.1)
    assert list(record) == ["step", "loss", "grad_norm", "emb_std", "emb_norm", "lr", "clips_per_s",
                            "data_wait_frac", "step_time_s", "peak_mem_mb"]  # fmt: skip
    assert (record["step"], record["loss"], record["grad_norm"], record["lr"]) == (12, 2.0, 4.0, 0.1)
    assert record["clips_per_s"] == pytest.approx(3 * 8 / (3 * record["step_time_s"]))
    assert len(events) == 1 and events[0]["step"] == 11 and events[0]["in_a_row"] == 1 and longest == 1


def test_a_non_finite_run_is_counted_across_windows():
    window = LogWindow(clips_per_step=4, device=CPU, comm_timer=None)
    for _ in range(2):
        window.add(stats(False, float("inf")))
    record, events, longest = window.flush(step=2, lr=0.1)
    assert record is None and [e["in_a_row"] for e in events] == [1, 2] and longest == 2
    window.restart()
    window.add(stats(False, float("inf")))
    window.add(stats(True, 1.0))
    record, events, longest = window.flush(step=4, lr=0.1)
    assert record["loss"] == 1.0 and [(e["step"], e["in_a_row"]) for e in events] == [(3, 3)] and longest == 3
    window.restart()
    window.add(stats(True, 1.0))
    assert window.flush(step=5, lr=0.1)[2] == 0  # the run ended at step 4


def test_paused_time_is_not_step_time():
    window = LogWindow(clips_per_step=4, device=CPU, comm_timer=None)
    window.add(stats(True, 1.0))
    with window.paused():
        time.sleep(0.5)
    record, _, _ = window.flush(step=1, lr=0.1)
    assert window.paused_s >= 0.5 and record["step_time_s"] < 0.4
    window.restart()
    assert window.values == [] and window.paused_s == 0.0 and window.data_s == 0.0
