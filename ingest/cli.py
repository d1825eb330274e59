"""mvm-ingest: nuScenes CAM_FRONT -> validated, deterministic WebDataset clip shards (shards/README.md)."""

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

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest.atomic import OutputError, ensure_dir
from ingest.config import IngestConfig
from ingest.plan import FinalizeError, discover_parts, finalize, part_scenes, verify_complete, write_ledger
from ingest.scenes import SceneSpecError, resolve_scenes
from ingest.shards import MANIFEST, PATCH_SIZE, SHARD_PATTERN, ShardError, read_manifest
from ingest.stage import stage_scene, verified_sidecar
from ingest.tables import DatarootError, SceneTables, TablesError, open_nuscenes

console = Console(stderr=True, soft_wrap=True)
DEFAULTS = IngestConfig("", "", "")
"""The option defaults, written once in IngestConfig."""
PR_SET_PDEATHSIG = 1


def patch_multiples(length: int) -> list[int]:
    """`length` if it is a multiple of the patch size, else the multiples just below and above it."""
    if length % PATCH_SIZE == 0:
        return [length]
    below = length // PATCH_SIZE * PATCH_SIZE
    return [size for size in (below, below + PATCH_SIZE) if size > 0]


def parse_size(value: str) -> tuple[int, int]:
    """`HxW` -> (H, W); both even (yuv420p), else a usage error; not multiples of 16 -> a warning."""
    try:
        height, width = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW, e.g. 144x256", param_hint="--size") from None
    if height <= 0 or width <= 0 or height % 2 or width % 2:
        raise click.BadParameter(
            f"{value}: H.264 yuv420p needs even height and width (2x2 chroma blocks)", param_hint="--size"
        )
    odd = [
        f"{name} {length}"
        for name, length in (("height", height), ("width", width))
        if length % PATCH_SIZE
    ]
    if odd:
        console.print(
            f"[yellow]warning:[/] --size {value}: {' and '.join(odd)} not a multiple of {PATCH_SIZE}, "
            f"the trainer's patch size (mvm-train will refuse these shards); sizes that would work: "
            + ", ".join(f"{h}x{w}" for h in patch_multiples(height) for w in patch_multiples(width))
        )
    return height, width


def parse_part(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        part, parts = (int(number) for number in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not I/N, e.g. 0/4", param_hint="--part") from None
    if not 0 <= part < parts:
        raise click.BadParameter(f"{value}: need 0 <= I < N (I is 0-based)", param_hint="--part")
    return part, parts


def log_line(out: Path, text: str) -> None:
    """Append a timestamped line to DIR/ingest.log (the only place wall-clock times go).

    Opened with O_NOFOLLOW: a symlink planted at DIR/ingest.log is refused, never written through.
    """
    path = out / "ingest.log"
    try:
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        raise OutputError(f"cannot append to {path} (a symlink, or not writable): {error.strerror}") from None
    with os.fdopen(handle, "a") as log:
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
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, sidecar: dict) -> None:
        self.frames += sidecar["scene"]["frames"]
        self.clips += sidecar["scene"]["clips"]
        self.rejects.update(reject["reason"] for reject in sidecar["rejects"])


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
                {key: result[key] for key in ("config_digest", "scene", "rejects", "sha256", "bytes")}
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


def print_summary(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def clear_previous(out: Path) -> None:
    """--overwrite: drop the old manifest first (so the folder stops looking complete), then its shards."""
    (out / MANIFEST).unlink(missing_ok=True)
    for path in out.iterdir():
        if SHARD_PATTERN.fullmatch(path.name):
            path.unlink()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--dataroot",
    required=True,
    type=click.Path(path_type=Path),
    help="nuScenes dataroot (holds the version folder, samples/, sweeps/).",
)
@click.option(
    "--version",
    "nusc_version",
    required=True,
    help="nuScenes version folder, e.g. v1.0-mini or v1.0-trainval.",
)
@click.option(
    "--scenes",
    "scenes_spec",
    required=True,
    help="A devkit split (mini_train, mini_val, train, val, ...), a comma list of scene names, @file (one name per line) or 'all'.",
)
@click.option(
    "--out",
    default=Path("shards"),
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (layout: shards/README.md); refused if it is a symlink.",
)
@click.option("--clip-len", default=DEFAULTS.clip_len, type=click.IntRange(min=2), help="T: frames per clip.")
@click.option(
    "--stride",
    default=DEFAULTS.stride,
    type=click.IntRange(min=1),
    help="s: chain positions between a clip's frames.",
)
@click.option(
    "--hop",
    type=click.IntRange(min=1),
    help="Chain positions between clip starts in a segment  [default: clip-len x stride, no overlap]",
)
@click.option(
    "--size",
    "size_text",
    default="{}x{}".format(*DEFAULTS.size),
    help="HxW of the decoded frames; must be even (yuv420p), should be multiples of 16 (trainer patches).",
)
@click.option(
    "--crf",
    default=DEFAULTS.crf,
    type=click.IntRange(0, 51),
    help="x264 constant rate factor (lower = better, bigger).",
)
@click.option(
    "--preset",
    default=DEFAULTS.preset,
    type=click.Choice(
        ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
    ),
    help="x264 preset.",
)
@click.option(
    "--max-gap-ms",
    default=DEFAULTS.max_gap_ms,
    type=click.IntRange(min=1),
    help="Longest continuous interval; a longer one splits the scene (CAM_FRONT intervals are 50/100 ms, a dropped frame gives 150).",
)
@click.option(
    "--shard-clips", default=DEFAULTS.shard_clips, type=click.IntRange(min=1), help="Clips per shard."
)
@click.option(
    "--seed",
    default=DEFAULTS.seed,
    type=click.IntRange(min=0),
    help="Seed of the clip-start offsets (keyed further by scene name).",
)
@click.option(
    "--part",
    "part_text",
    help="Do only part I of N (0-based, e.g. 3/16) and leave a ledger; then run --finalize.",
)
@click.option(
    "--finalize",
    is_flag=True,
    help="After all N parts (same options, no --part): check their ledgers, write shards and the manifest.",
)
@click.option(
    "--workers",
    default=1,
    type=click.IntRange(min=1),
    help="Scenes staged in parallel processes (output does not depend on it).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an --out folder that holds a manifest from other options."
)
def ingest_main(
    dataroot, nusc_version, scenes_spec, out, clip_len, stride, hop, size_text, crf, preset,
    max_gap_ms, shard_clips, seed, part_text, finalize, workers, overwrite,
):  # fmt: skip
    """Turn nuScenes CAM_FRONT into validated, deterministic WebDataset clip shards.

    Same inputs and options give the same bytes, for one process or any --part I/N split plus
    --finalize. A killed run resumes: verified staged scenes and shards are kept.

    \b
    Slurm array (N tasks), then one finalize with the same options:
      mvm-ingest ... --part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
      mvm-ingest ... --finalize

    Exit codes: 0 success (or already complete), 1 failure (a scene failed, parts missing at
    finalize, no clip at all (the reason is printed per scene), damaged complete output, tables
    that are not valid JSON, an --out that cannot be written: read-only, a symlink, disk full),
    2 usage error (bad option, unknown scene or split, missing dataroot or version folder, --out
    a file or holding another ingest without --overwrite).
    """
    try:
        run_ingest(
            dataroot, nusc_version, scenes_spec, out, clip_len, stride, hop, size_text, crf, preset,
            max_gap_ms, shard_clips, seed, part_text, finalize, workers, overwrite,
        )  # fmt: skip
    except (OutputError, TablesError, FinalizeError) as error:
        console.print(f"[red]error:[/] {error}")
        sys.exit(1)


def run_ingest(
    dataroot, nusc_version, scenes_spec, out, clip_len, stride, hop, size_text, crf, preset,
    max_gap_ms, shard_clips, seed, part_text, finalize, workers, overwrite,
):  # fmt: skip
    """The body of mvm-ingest; raises OutputError / TablesError / FinalizeError for exit 1."""
    size = parse_size(size_text)
    part = parse_part(part_text)
    if part is not None and finalize:
        raise click.UsageError("--part and --finalize are separate steps; give one of them")
    try:
        tables = SceneTables(open_nuscenes(dataroot, nusc_version))
        resolved = resolve_scenes(scenes_spec, tables.scenes)
    except (DatarootError, SceneSpecError) as error:
        raise click.UsageError(str(error)) from None
    config = IngestConfig(
        dataroot=str(Path(dataroot).resolve()),
        version=nusc_version,
        scenes_spec=scenes_spec,
        clip_len=clip_len,
        stride=stride,
        hop=hop,
        size=size,
        crf=crf,
        preset=preset,
        max_gap_ms=max_gap_ms,
        shard_clips=shard_clips,
        seed=seed,
    )
    if resolved.absent_from_split:
        console.print(
            f"note: {len(resolved.absent_from_split)} scenes of split {scenes_spec!r} are not in this dataroot"
        )
    ensure_dir(out)
    if (out / MANIFEST).exists() or (out / MANIFEST).is_symlink():
        try:
            previous = read_manifest(out)
        except ShardError as error:
            if not overwrite:
                raise click.UsageError(
                    f"{error}; pass --overwrite to replace it or choose another --out"
                ) from None
            previous = {}
        same = (
            previous.get("config") == config.to_json()
            and [s["name"] for s in previous.get("scenes", [])] == resolved.names
        )
        if same:
            problems = verify_complete(out, previous)
            if problems:
                console.print(
                    f"[red]error:[/] {out} is complete but damaged: {'; '.join(problems)}. Re-run with --overwrite."
                )
                sys.exit(1)
            console.print(
                f"{out} already holds this ingest ({previous['total_clips']} clips, verified); nothing to do."
            )
            return
        if not overwrite:
            differing = sorted(
                k for k in config.to_json() if previous.get("config", {}).get(k) != config.to_json()[k]
            )
            raise click.UsageError(
                f"{out} holds a manifest from other options (differing: {', '.join(differing) or 'scenes'}); "
                "pass --overwrite to replace it or choose another --out"
            )
        clear_previous(out)

    started = time.perf_counter()
    tally = PartTally()
    if not finalize:
        part_index, part_count = part or (0, 1)
        tally = run_part(out, config, tables, resolved.names, part_index, part_count, workers)
        if tally.failed:
            for name, reason in tally.failed.items():
                console.print(f"[red]scene {name} failed:[/] {reason}")
            console.print(
                "[red]error:[/] no ledger written; fix the cause and re-run (finished scenes are kept)"
            )
            sys.exit(1)
    manifest = None
    if part is None:
        manifest = finalize_output(out, config, resolved.names, discover_parts(out) if finalize else 1)
    elapsed = time.perf_counter() - started
    rows = [("output", str(out)), ("scenes", f"{len(resolved.names)} planned")]
    if not finalize:
        rows += [
            (
                "this run",
                f"{len(part_scenes(resolved.names, *(part or (0, 1))))} scenes, {tally.reused} reused from staging",
            ),
            ("frames", f"{tally.frames} ({tally.frames / max(elapsed, 1e-9):.0f} frames/s)"),
        ]
    if manifest is not None:
        reasons = Counter(reject["reason"] for reject in manifest["rejects"])
        rows += [
            ("clips", str(manifest["total_clips"])),
            ("shards", f"{len(manifest['shards'])} x <= {config.shard_clips} clips"),
            (
                "rejects",
                ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())) or "none",
            ),
        ]
    else:
        rows += [
            ("clips staged", str(tally.clips)),
            ("rejects", ", ".join(f"{r} {c}" for r, c in sorted(tally.rejects.items())) or "none"),
        ]
    rows.append(("time", f"{elapsed:.1f} s (details: {out / 'ingest.log'})"))
    print_summary("mvm-ingest" + (f" part {part[0]}/{part[1]}" if part else ""), rows)


def finalize_output(out: Path, config: IngestConfig, scenes: list[str], parts: int) -> dict:
    started = time.perf_counter()
    manifest = finalize(out, config, scenes, parts)
    log_line(
        out,
        f"finalize: {len(manifest['shards'])} shards, {manifest['total_clips']} clips, {time.perf_counter() - started:.2f} s",
    )
    return manifest
