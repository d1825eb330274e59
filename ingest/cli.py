"""mvm-ingest: nuScenes CAM_FRONT -> validated, deterministic WebDataset clip shards (shards/README.md)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import click
from rich.table import Table

from mvm.atomic import OutputError
from mvm.ingest.config import IngestConfig, depth_patch_problem
from mvm.ingest.output import (
    ForeignOutputError,
    claim_output,
    clear_previous,
    folder_lock,
    part_lock,
    stale_temporaries,
)
from mvm.ingest.part import PartTally, console, log_line, run_part
from mvm.ingest.plan import (
    FinalizeError,
    discover_parts,
    finalize,
    part_scenes,
    remove_other_ledgers,
    verify_complete,
)
from mvm.ingest.scenes import SceneSpecError, resolve_scenes
from mvm.ingest.tables import DatarootError, SceneTables, TablesError, open_nuscenes
from mvm.options import click_options
from mvm.shards import MANIFEST, PATCH_SIZE, ShardError, read_manifest

DEFAULTS = IngestConfig("", "", "")
"""The option defaults, written once in IngestConfig."""


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
        f"{name} {length}" for name, length in (("height", height), ("width", width)) if length % PATCH_SIZE
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


def depth_summary(clips: int, missing: Counter) -> str:
    """`N of M clips` plus the reasons of the clips without a depth target."""
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(missing.items()))
    return f"{clips - sum(missing.values())} of {clips} clips" + (f" (none: {reasons})" if reasons else "")


def print_summary(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


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
@click.option(
    "--size",
    "size_text",
    default="{}x{}".format(*DEFAULTS.size),
    help="HxW of the decoded frames; must be even (yuv420p), should be multiples of 16 (trainer patches).",
)
@click_options(IngestConfig)  # --clip-len ... --seed; dataroot, version, scenes and size: see IngestConfig
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
def ingest_main(**options) -> None:
    """Turn nuScenes CAM_FRONT into validated, deterministic WebDataset clip shards.

    Same inputs and options give the same bytes, for one process or any --part I/N split plus
    --finalize. A killed run resumes: verified staged scenes and shards are kept.

    \b
    Slurm array (N tasks), then one finalize with the same options:
      mvm-ingest ... --part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
      mvm-ingest ... --finalize

    Each clip also gets a lidar depth target (shards/README.md, "Depth targets"): the LIDAR_TOP
    keyframe nearest in time to one of its frames (within --depth-max-offset-ms), projected into
    that frame as the devkit does and reduced to per-patch median depths. A clip whose lidar is
    absent, empty or unreadable is kept without a target; the summary counts the reasons.

    Tables are data: scene names must be plain file names (letters, digits, . _ -), unique;
    sample_data filenames must stay inside the dataroot; a record that breaks this is named.
    --out belongs to one writer: a second mvm-ingest on it (or on the same part) stops at once;
    the parts of one array run together, a finalize is refused while any runs. A non-empty --out
    that mvm-ingest did not start is refused without --overwrite; --overwrite replaces only
    mvm-ingest's own files (shards, manifest, part ledgers of other options).

    Exit codes: 0 success (or already complete), 1 failure (a scene failed, parts missing at
    finalize, no clip at all (the reason is printed per scene), damaged complete output, tables
    that are not valid JSON or name unusable scenes or files, an --out that cannot be written:
    read-only, a symlink, disk full, in use by another mvm-ingest), 2 usage error (bad option,
    unknown scene or split, missing dataroot or version folder, --out a file, holding files
    mvm-ingest did not write, or another ingest, without --overwrite).
    """
    try:
        run_ingest(**options)
    except (OutputError, TablesError, FinalizeError) as error:
        console.print(f"[red]error:[/] {error}")
        sys.exit(1)


def run_ingest(
    dataroot, nusc_version, scenes_spec, out, clip_len, stride, hop, size_text, crf, preset,
    max_gap_ms, shard_clips, seed, depth_patch, depth_min_points, depth_max_offset_ms, part_text,
    finalize, workers, overwrite,
):  # fmt: skip
    """The body of mvm-ingest; raises OutputError / TablesError / FinalizeError for exit 1."""
    size = parse_size(size_text)
    if problem := depth_patch_problem(size, depth_patch):
        raise click.BadParameter(problem, param_hint="--depth-patch")
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
        depth_patch=depth_patch,
        depth_min_points=depth_min_points,
        depth_max_offset_ms=depth_max_offset_ms,
    )
    if resolved.absent_from_split:
        console.print(
            f"note: {len(resolved.absent_from_split)} scenes of split {scenes_spec!r} are not in this dataroot"
        )
    try:
        claim_output(out, overwrite)
    except ForeignOutputError as error:
        raise click.UsageError(str(error)) from None
    with folder_lock(out, shared=part is not None):
        if part is None:  # this process holds the folder alone: what killed runs left can go
            stale = stale_temporaries(out)
            for path in stale:
                path.unlink(missing_ok=True)
            if stale:
                log_line(out, f"removed {len(stale)} temporaries left by a killed run")
        if already_done(out, config, resolved.names, overwrite):
            return
        if overwrite and (removed := remove_other_ledgers(out, config)):
            log_line(out, f"--overwrite: removed {len(removed)} part ledgers of other options")
        if part is None:
            ingest_locked(out, config, tables, resolved.names, None, finalize, workers)
        else:
            with part_lock(out, *part):
                ingest_locked(out, config, tables, resolved.names, part, finalize, workers)


def already_done(out: Path, config: IngestConfig, scenes: list[str], overwrite: bool) -> bool:
    """Whether --out already holds this ingest, verified (exit 1 if damaged). A manifest of other
    options is a usage error without --overwrite; with it, the old manifest and shards go."""
    if not ((out / MANIFEST).exists() or (out / MANIFEST).is_symlink()):
        return False
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
        and [s["name"] for s in previous.get("scenes", [])] == scenes
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
        return True
    if not overwrite:
        differing = sorted(
            k for k in config.to_json() if previous.get("config", {}).get(k) != config.to_json()[k]
        )
        raise click.UsageError(
            f"{out} holds a manifest from other options (differing: {', '.join(differing) or 'scenes'}); "
            "pass --overwrite to replace it or choose another --out"
        )
    clear_previous(out)
    return False


def ingest_locked(
    out: Path,
    config: IngestConfig,
    tables: SceneTables,
    scenes: list[str],
    part: tuple[int, int] | None,
    finalize: bool,
    workers: int,
) -> None:
    """Stage (this part, or everything), then finalize unless this is a --part run; print the summary."""
    started = time.perf_counter()
    tally = PartTally()
    if not finalize:
        part_index, part_count = part or (0, 1)
        tally = run_part(out, config, tables, scenes, part_index, part_count, workers)
        if tally.failed:
            for name, reason in tally.failed.items():
                console.print(f"[red]scene {name} failed:[/] {reason}")
            console.print(
                "[red]error:[/] no ledger written; fix the cause and re-run (finished scenes are kept)"
            )
            sys.exit(1)
    manifest = None
    if part is None:
        manifest = finalize_output(out, config, scenes, discover_parts(out, config) if finalize else 1)
    elapsed = time.perf_counter() - started
    rows = [("output", str(out)), ("scenes", f"{len(scenes)} planned")]
    if not finalize:
        rows += [
            (
                "this run",
                f"{len(part_scenes(scenes, *(part or (0, 1))))} scenes, {tally.reused} reused from staging",
            ),
            ("frames", f"{tally.frames} ({tally.frames / max(elapsed, 1e-9):.0f} frames/s)"),
        ]
    if manifest is not None:
        reasons = Counter(reject["reason"] for reject in manifest["rejects"])
        no_depth = Counter(missing["reason"] for missing in manifest["depth_missing"])
        rows += [
            ("clips", str(manifest["total_clips"])),
            ("depth targets", depth_summary(manifest["total_clips"], no_depth)),
            ("shards", f"{len(manifest['shards'])} x <= {config.shard_clips} clips"),
            (
                "rejects",
                ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())) or "none",
            ),
        ]
    else:
        rows += [
            ("clips staged", str(tally.clips)),
            ("depth targets", depth_summary(tally.clips, tally.depth_missing)),
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
