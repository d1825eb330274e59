"""mvm-train with faults injected from the test side (the product has no test hooks).

Run as `python tests/_train_faults.py ARGS` or `torchrun ... tests/_train_faults.py ARGS`; the
environment says which fault, counted in optimizer steps taken by this process:
- MVM_FAULT_NAN_AT_STEP=N: the N-th step's (0-based) input video is NaN on every rank, so its loss
  and gradients are non-finite (what a corrupt batch or a diverging run gives the guard).
- MVM_FAULT_KILL_AT_STEP=N: SIGKILL this process right before its N-th step (0-based), as an
  out-of-memory killer or a pre-empted node would. MVM_FAULT_CHILDREN_FILE, if set, first receives
  the process ids of this process's children (its DataLoader workers), one per line.
- MVM_FAULT_PAUSE_AT_STEP=N with MVM_FAULT_PAUSE_FILE=path: right before the N-th step (0-based),
  write `path` and wait until the test deletes it (at most 120 s): a run caught mid-way, for
  what a second process does meanwhile.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mvm.train.loop  # noqa: E402
from mvm.train.cli import main  # noqa: E402


def children() -> list[int]:
    """Process ids of this process's children (Linux /proc)."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        pids += [int(pid) for pid in (task / "children").read_text().split()]
    return pids


def faulty(step_fn):
    nan_at = int(os.environ.get("MVM_FAULT_NAN_AT_STEP", "-1"))
    kill_at = int(os.environ.get("MVM_FAULT_KILL_AT_STEP", "-1"))
    pause_at = int(os.environ.get("MVM_FAULT_PAUSE_AT_STEP", "-1"))
    calls = 0

    def step(model, optimizer, video, *args, **kwargs):
        nonlocal calls
        if calls == kill_at:
            if os.environ.get("MVM_FAULT_CHILDREN_FILE"):
                Path(os.environ["MVM_FAULT_CHILDREN_FILE"]).write_text("".join(f"{p}\n" for p in children()))
            os.kill(os.getpid(), signal.SIGKILL)
        if calls == pause_at:
            pause = Path(os.environ["MVM_FAULT_PAUSE_FILE"])
            pause.write_text(f"{os.getpid()}\n")
            deadline = time.monotonic() + 120
            while pause.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        if calls == nan_at:
            video = video * float("nan")
        calls += 1
        return step_fn(model, optimizer, video, *args, **kwargs)

    return step


if __name__ == "__main__":
    mvm.train.loop.step_on_batch = faulty(mvm.train.loop.step_on_batch)
    main()
