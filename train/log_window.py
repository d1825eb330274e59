"""The logging window of mvm-train: the steps since the last metrics.jsonl line.

Each step's StepStats stay device tensors until the window is read back, in one host-device
transfer (the only sync of ordinary steps), as the metrics line's means and timing plus one
`nonfinite` event per skipped update:

    window = LogWindow(clips_per_step=batch * world, device=device, comm_timer=comm_timer)
    window.add(stats)                                   # every step
    record, events, longest = window.flush(step, lr)    # every log_every steps
    write_window(log, record, events, config, console)  # rank 0: the lines and the health checks
    window.restart()                                    # after the line is written

Timing: the window's wall time less the time spent paused (`with window.paused():` around
pictures, probes and checkpoints) and less what happens between flush and restart (the logged
step's diagnostics, the writes); data_wait_frac is the share of it spent waiting for batches.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from rich.console import Console

from mvm.train.config import TrainConfig
from mvm.train.diagnostics import collapse_reasons
from mvm.train.engine import STAT_NAMES, CommTimer, StepStats
from mvm.train.metrics import MetricsLog, peak_mem_mb


class LogWindow:
    """StepStats of the steps since the last metrics line, with the window's timing."""

    def __init__(self, clips_per_step: int, device: torch.device, comm_timer: CommTimer | None):
        self.clips_per_step = clips_per_step
        """Clips of one step over all ranks (batch size x world)."""
        self.device = device
        self.comm_timer = comm_timer
        """DDP's communication timer (None on one process: no comm_frac)."""
        self.in_a_row = 0
        """Non-finite steps in a row at the end of the last flushed window (a run may span windows)."""
        self.restart()

    def restart(self) -> None:
        """Start an empty window now."""
        self.values: list[torch.Tensor] = []  # StepStats.values, float32 (len(STAT_NAMES),) each
        self.data_s = 0.0
        """Seconds spent waiting for batches in this window (the loop adds them)."""
        self.paused_s = 0.0
        self.started = time.perf_counter()

    def add(self, stats: StepStats) -> None:
        self.values.append(stats.values)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time inside the block is not step time (pictures, online probe, checkpoints)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - start

    def flush(self, step: int, lr: float) -> tuple[dict | None, list[dict], int]:
        """Read the window back at `step` (its last step, 1-based), whose learning rate was `lr`.

        Returns (the metrics line: step, means over finite steps of STAT_NAMES[1:], lr, clips_per_s,
        data_wait_frac, step_time_s, peak_mem_mb, comm_frac with DDP; None when no step was finite),
        the nonfinite events in step order, and the longest non-finite run seen, counting the run
        carried in from earlier windows.
        """
        first_step = step - len(self.values) + 1
        rows = torch.stack(self.values).cpu().tolist()  # (steps, len(STAT_NAMES)): the sync point
        events, longest, sums, finite = [], self.in_a_row, dict.fromkeys(STAT_NAMES[1:], 0.0), 0
        for offset, row in enumerate(rows):
            values = dict(zip(STAT_NAMES, row, strict=True))
            if values["finite"]:
                self.in_a_row, finite = 0, finite + 1
                for name in sums:
                    sums[name] += values[name]
            else:
                self.in_a_row += 1
                longest = max(longest, self.in_a_row)
                events.append({"event": "nonfinite", "step": first_step + offset, "loss": values["loss"],
                               "grad_norm": values["grad_norm"], "in_a_row": self.in_a_row})  # fmt: skip
        elapsed = time.perf_counter() - self.started - self.paused_s
        comm_s = self.comm_timer.take_seconds() if self.comm_timer else 0.0
        if not finite:
            return None, events, longest
        record = {"step": step, **{name: total / finite for name, total in sums.items()}, "lr": lr,
                  "clips_per_s": len(rows) * self.clips_per_step / elapsed, "data_wait_frac": self.data_s / elapsed,
                  "step_time_s": elapsed / len(rows), "peak_mem_mb": peak_mem_mb(self.device)}  # fmt: skip
        if self.comm_timer:
            record["comm_frac"] = comm_s / elapsed
        return record, events, longest


def write_window(
    log: MetricsLog, record: dict | None, events: list[dict], config: TrainConfig, console: Console
) -> None:
    """A logging window's nonfinite events, then its metrics line and the health checks on it."""
    for event in events:
        log.write(event)
    if record:
        log.write(record)
        warn_if_unhealthy(record, config, log, console)  # the collapse and starvation checks


def warn_if_unhealthy(record: dict, config: TrainConfig, log: MetricsLog, console: Console) -> None:
    """Collapse and starvation events (their own metrics.jsonl lines and a console warning)."""
    reasons = collapse_reasons(record, config.collapse_rankme, config.collapse_time_spread)
    if reasons:
        log.write({"event": "collapse", "step": record["step"], "rankme": record["rankme"],
                   "time_spread": record["time_spread"]})  # fmt: skip
        console.print(f"[yellow]step {record['step']}: encoder collapse? {'; '.join(reasons)}")
    if record["data_wait_frac"] > config.starvation_frac:
        log.write({"event": "starvation", "step": record["step"], "data_wait_frac": record["data_wait_frac"]})
        console.print(
            f"[yellow]step {record['step']}: {record['data_wait_frac']:.0%} of step time waiting for data: "
            "add --workers or faster storage"
        )
