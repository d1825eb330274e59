"""One part of an ingest: stage its scenes (in worker processes that die with their parent),
then write the part's ledger. The plan and finalize are in ingest/plan.py; the CLI in ingest/cli.py."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mvm.atomic import ensure_dir, open_append
from mvm.ingest.config import IngestConfig
from mvm.ingest.plan import part_scenes, write_ledger
from mvm.ingest.stage import stage_scene, verified_sidecar
from mvm.ingest.tables import SceneTables

console = Console(stderr=True, soft_wrap=True)
"""The one stderr console of mvm-ingest (progress, warnings, errors)."""
PR_SET_PDEATHSIG = 1
"""prctl option (linux/prctl.h): the signal a process gets when its parent dies."""


def log_line(out: Path, text: str) -> None:
    """Append a timestamped line to DIR/ingest.log (the only place wall-clock times go).

    A symlink planted at DIR/ingest.log is refused, never written through (atomic.open_append).
    """
    with open_append(out / "ingest.log") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")


def die_with_parent(parent: int) -> None:
    """Worker initializer: the kernel SIGKILLs this worker when its parent dies (Linux
    PR_SET_PDEATHSIG), so a killed mvm-ingest leaves no orphan workers (nor, once they are gone,
    multiprocessing's resource tracker, which exits when its last user does)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


@dataclass
class PartTally:
    """Running totals of a part, for the progress bar and the summary."""

    frames: int = 0
    clips: int = 0
    reused: int = 0
    rejects: Counter = field(default_factory=Counter)
    depth_missing: Counter = field(default_factory=Counter)
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, sidecar: dict) -> None:
        self.frames += sidecar["scene"]["frames"]
        self.clips += sidecar["scene"]["clips"]
        self.rejects.update(reject["reason"] for reject in sidecar["rejects"])
        self.depth_missing.update(missing["reason"] for missing in sidecar["depth_missing"])


def run_part(
    out: Path,
    config: IngestConfig,
    tables: SceneTables,
    scenes: list[str],
    part: int,
    parts: int,
    workers: int,
) -> PartTally:
    """Stage this part's scenes (reusing verified ones), then write its ledger if every scene succeeded."""
    staging_dir = ensure_dir(out / "staging")
    mine = part_scenes(scenes, part, parts)
    tally, sidecars = PartTally(), []
    todo = []
    for name in mine:
        sidecar = verified_sidecar(config, staging_dir, name)
        if sidecar is None:
            todo.append(name)
        else:
            sidecars.append(sidecar)
            tally.add(sidecar)
            tally.reused += 1
    started = time.perf_counter()
    progress = Progress(
        TextColumn(f"part {part}/{parts}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "scenes · {task.fields[rate]:.0f} frames/s · {task.fields[clips]} clips · {task.fields[rejects]} rejects"
        ),
        TimeElapsedColumn(),
        console=console,
    )

    def finished(name: str, result: dict | BaseException) -> None:
        if isinstance(result, BaseException):
            tally.failed[name] = f"{type(result).__name__}: {result}"
            log_line(out, f"part {part}/{parts} scene {name} FAILED {tally.failed[name]}")
        else:
            sidecars.append(
                {
                    key: result[key]
                    for key in ("config_digest", "scene", "rejects", "depth_missing", "sha256", "bytes")
                }
            )
            tally.add(result)
            log_line(
                out,
                f"part {part}/{parts} scene {name} {result['frames_read']} frames {result['seconds']:.2f} s",
            )
        elapsed = max(time.perf_counter() - started, 1e-9)
        progress.update(
            task,
            advance=1,
            rate=tally.frames / elapsed,
            clips=tally.clips,
            rejects=sum(tally.rejects.values()),
        )

    with progress:
        task = progress.add_task(
            "stage", total=len(mine), completed=tally.reused, rate=0.0, clips=tally.clips, rejects=0
        )
        if workers <= 1:
            for name in todo:
                try:
                    finished(name, stage_scene(tables.job(name), config, staging_dir))
                except Exception as error:  # one bad scene must not stop the others
                    finished(name, error)
        else:
            with ProcessPoolExecutor(
                max_workers=workers,
                mp_context=get_context("spawn"),
                initializer=die_with_parent,
                initargs=(os.getpid(),),
            ) as pool:
                pending, queue = {}, list(todo)
                while queue or pending:
                    while queue and len(pending) < 2 * workers:  # bounded: memory independent of scene count
                        name = queue.pop(0)
                        try:
                            pending[pool.submit(stage_scene, tables.job(name), config, staging_dir)] = name
                        except Exception as error:  # a scene whose tables are broken; the rest go on
                            finished(name, error)
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        name = pending.pop(future)
                        error = future.exception()
                        finished(name, error if error is not None else future.result())
    if not tally.failed:
        write_ledger(out, config, part, parts, sidecars)
    elapsed = time.perf_counter() - started
    log_line(
        out, f"part {part}/{parts} done: {len(todo)} scenes staged, {tally.reused} reused, {elapsed:.2f} s"
    )
    return tally
