"""The bench's working data and child processes.

Synthetic dataroots are cached under `bench/work/` keyed by every argument that shapes them, so
reruns skip generation; everything timed (ingest, training) runs fresh each time. Child processes
run through `run_child`, which reports wall time, CPU time and peak RSS of that one child (and
the children it waited for) from `os.wait4`, so one measurement never leaks into the next.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mvm.atomic import open_append, write_atomic

WORK_DIR = Path(__file__).resolve().parent / "work"


@dataclass(frozen=True)
class DatarootSpec:
    """Arguments of `mvm.synth.generate`; the cache key of a generated dataroot."""

    version: str = "v1.0-mini"
    """nuScenes version folder name of the synthetic dataroot."""
    scenes: int = 4
    """Number of scenes."""
    frames_per_scene: int = 40
    """CAM_FRONT frames per scene."""
    width: int = 1600
    """Image width in pixels (height follows the 16:9 nuScenes aspect); 1600 is the real size."""
    seed: int = 0
    """Synth seed."""

    @property
    def key(self) -> str:
        """Folder name under WORK_DIR, unique per argument set."""
        return (
            f"nuscenes-{self.version}-s{self.scenes}-f{self.frames_per_scene}-w{self.width}-seed{self.seed}"
        )


def cached_dataroot(
    spec: DatarootSpec, work_dir: Path = WORK_DIR, progress: Callable[[int], None] | None = None
) -> Path:
    """The dataroot for `spec`, generated on first use (progress(n) after n rendered frames).

    Generation writes into a `.partial` folder that is renamed when complete, so an interrupted
    run never leaves a folder that looks cached.
    """
    from mvm.synth import generate

    final = work_dir / spec.key
    if (final / "READY").exists():
        return Path((final / "READY").read_text().strip())
    partial = work_dir / f"{spec.key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    partial.mkdir(parents=True)
    dataroot = Path(
        generate(
            partial,
            version=spec.version,
            scenes=spec.scenes,
            frames_per_scene=spec.frames_per_scene,
            width=spec.width,
            seed=spec.seed,
            progress=progress,
        )
    ).resolve()
    partial.rename(final)
    dataroot = final / dataroot.relative_to(partial.resolve())
    write_atomic(final / "READY", str(dataroot))
    return dataroot


def scene_names(dataroot: Path, version: str) -> list[str]:
    """Scene names of a dataroot, sorted, read through the devkit."""
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    return sorted(scene["name"] for scene in nusc.scene)


@dataclass(frozen=True)
class ChildRun:
    """What one child process cost."""

    args: tuple[str, ...]
    """The command line."""
    returncode: int
    """Exit status (negative = killed by that signal)."""
    wall_s: float
    """Wall-clock seconds from start to exit."""
    cpu_s: float
    """User + system CPU seconds of the child and every descendant it waited for."""
    peak_rss_mb: float
    """Largest resident set of the child or any waited-for descendant, MiB."""
    log: Path
    """File holding the child's stdout and stderr."""

    def check(self) -> ChildRun:
        """Self, or RuntimeError with the log's tail when the child failed."""
        if self.returncode != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(self.args)} exited {self.returncode}:\n{tail}")
        return self


def run_child(args: list[str], log: Path) -> ChildRun:
    """Run `args` to completion, output to `log`, and measure it with os.wait4."""
    # A fixed width keeps the children's rich output readable in the log file.
    child_env = {**os.environ, "COLUMNS": "120"}
    log.unlink(missing_ok=True)  # a fresh log per run (unlinking a planted symlink removes only the link)
    with open_append(log, binary=True) as out:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=child_env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(
        args=tuple(args),
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        log=log,
    )


def venv_script(name: str) -> str:
    """Path of an installed console script next to the running interpreter (e.g. mvm-ingest)."""
    import sys

    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
