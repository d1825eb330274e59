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

import numpy as np

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


@dataclass(frozen=True)
class ShardSetSpec:
    """A synthetic shard set at training scale (many short clips); the cache key of its folder."""

    clips: int = 2048
    """Clips in the set: enough that an epoch is long next to worker start-up."""
    clip_len: int = 8
    """Frames per clip."""
    size: tuple[int, int] = (32, 64)
    """(H, W) of the clips: small, so the set is quick to write and decode costs what it does at scale per pixel."""
    shard_clips: int = 64
    """Clips per shard."""
    seed: int = 0
    """Content seed."""

    @property
    def key(self) -> str:
        """Folder name under WORK_DIR, unique per argument set."""
        return f"shardset-c{self.clips}-t{self.clip_len}-{self.size[0]}x{self.size[1]}-s{self.shard_clips}-seed{self.seed}"


def moving_texture(rng, clip_len: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 (T, H, W, 3): a smooth random texture (8 px blocks) panning at a random speed."""
    height, width = size
    speed = int(rng.integers(-3, 4))
    margin = 3 * clip_len
    blocks = rng.integers(0, 256, (height // 8 + 1, (width + 2 * margin) // 8 + 1, 3), dtype=np.uint8)
    texture = blocks.repeat(8, axis=0).repeat(8, axis=1)
    return np.stack(
        [texture[:height, margin + speed * t : margin + speed * t + width] for t in range(clip_len)]
    )


def cached_shard_set(spec: ShardSetSpec, work_dir: Path = WORK_DIR) -> Path:
    """The shard folder for `spec`, written on first use through mvm.shards' writers (ustar members,
    manifest last), as mvm-ingest writes them; a half-written folder is never taken for a cached one."""
    from mvm.shards import FORMAT_VERSION, clip_key, write_shard_folder
    from mvm.shards import dumps as canonical_json
    from mvm.video import encode_clip

    final = work_dir / spec.key
    if (final / "manifest.json").exists():
        return final
    partial = work_dir / f"{spec.key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    rng = np.random.default_rng(spec.seed)
    shards = []
    for first in range(0, spec.clips, spec.shard_clips):
        samples = []
        for clip in range(first, min(first + spec.shard_clips, spec.clips)):
            scene = f"scene-{clip // 8:04d}"
            key = clip_key(scene, (clip % 8) * spec.clip_len)
            meta = {
                "version": FORMAT_VERSION,
                "key": key,
                "scene": scene,
                "clip_len": spec.clip_len,
                "size": list(spec.size),
                "depth": None,
            }
            samples.append([(f"{key}.mp4", encode_clip(moving_texture(rng, spec.clip_len, spec.size))),
                            (f"{key}.json", canonical_json(meta).encode())])  # fmt: skip
        shards.append(samples)
    write_shard_folder(partial, shards, {"clip_len": spec.clip_len, "size": list(spec.size)})
    partial.rename(final)
    return final
