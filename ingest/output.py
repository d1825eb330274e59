"""An --out folder belongs to one tool and one writer at a time.

mvm-ingest marks a folder it creates (MARKER) and refuses a non-empty folder that carries neither
its marker nor its manifest unless --overwrite is given; even then it removes only files it owns
(names it writes). Writers lock the folder (mvm.atomic.exclusive_lock): one process, or a
finalize, holds `.mvm.lock` exclusively; the parts of a Slurm array hold it shared (so they run
in parallel and a finalize or a single run is refused meanwhile) and each part holds its own lock
in staging/ exclusively (so a part is never run twice at once).

    claim_output(out, overwrite)                     # before anything else is written
    with folder_lock(out, shared=part is not None):  # the whole run
        with part_lock(out, part, parts):            # --part runs: while staging
            ...
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path

from mvm.atomic import LOCK_NAME, PARTIAL_SUFFIX, OutputError, ensure_dir, exclusive_lock
from mvm.shards import MANIFEST, SHARD_PATTERN

TOOL = "mvm-ingest"
MARKER = ".mvm-ingest"
"""Written by mvm-ingest into an --out folder it starts; the folder's ingest files are its own."""
OWNED_TEMPORARY = re.compile(
    rf"\.({SHARD_PATTERN.pattern}|{re.escape(MANIFEST)})(\..*)?{re.escape(PARTIAL_SUFFIX)}"
)
"""Names of the temporaries of mvm-ingest's own files in --out (mvm.atomic.atomic_path)."""
SUBFOLDERS = ("staging", "parts")
"""Folders under --out that only mvm-ingest writes."""


class ForeignOutputError(ValueError):
    """--out holds files mvm-ingest did not write (a usage error: choose another folder or --overwrite)."""


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def is_ingest_output(out: Path) -> bool:
    """Whether `out` looks started by mvm-ingest: it holds our marker or a manifest.json.

    A manifest.json is judged next, under the lock (cli.already_done): anything but a readable
    manifest of ours stops the run with the reason unless --overwrite.
    """
    return _is_regular_file(out / MARKER) or os.path.lexists(out / MANIFEST)


def owned_temporary(name: str) -> bool:
    """A temporary that mvm-ingest's atomic writes leave in --out: `.<shard or manifest>.<random>.partial`."""
    return bool(OWNED_TEMPORARY.fullmatch(name))


def claim_output(out: Path, overwrite: bool) -> None:
    """Create --out if needed and mark it as mvm-ingest's, refusing a folder of someone else's files.

    Raises ForeignOutputError when `out` holds anything besides a lock or our marker and carries
    neither our marker nor our manifest, unless `overwrite`. Nothing is written before the check.
    """
    ensure_dir(out)
    others = sorted(entry.name for entry in out.iterdir() if entry.name not in (LOCK_NAME, MARKER))
    if others and not overwrite and not is_ingest_output(out):
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ForeignOutputError(
            f"{out} holds files mvm-ingest did not write ({shown}); choose an empty or new --out, "
            "or pass --overwrite to write there (only mvm-ingest's own file names are replaced)"
        )
    try:  # O_EXCL|O_NOFOLLOW: never through a planted link; parallel parts may race to create it
        handle = os.open(out / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutputError(f"refusing to write {out / MARKER}: it is a symlink") from None
        raise OutputError(f"cannot write {out / MARKER}: {error.strerror}") from None
    with os.fdopen(handle, "w") as marker:
        marker.write("This folder is written by mvm-ingest (shards/README.md).\n")


def folder_lock(out: Path, shared: bool) -> contextlib.AbstractContextManager[Path]:
    """Hold --out for the run: exclusively (one process, or a finalize), or shared (a --part run).

    A second writer gets mvm.atomic.BusyError (an OutputError, one line) at once.
    """
    return exclusive_lock(out, TOOL, shared=shared)


def part_lock(out: Path, part: int, parts: int) -> contextlib.AbstractContextManager[Path]:
    """Part I/N's own lock, in staging/ (removed with it by finalize): one writer per part."""
    return exclusive_lock(
        out / "staging", f"{TOOL} --part {part}/{parts}", name=f".part-{part:04d}-of-{parts:04d}.lock"
    )


def clear_previous(out: Path) -> None:
    """--overwrite: drop the old manifest first (so the folder stops looking complete), then its shards."""
    (out / MANIFEST).unlink(missing_ok=True)
    for path in out.iterdir():
        if SHARD_PATTERN.fullmatch(path.name):
            path.unlink()


def stale_temporaries(out: Path) -> list[Path]:
    """Temporaries killed runs of mvm-ingest left: ours in --out, any in staging/ and parts/.

    Only safe to remove while holding --out exclusively (no part is writing). Subfolders that are
    symlinks are skipped (ensure_dir refuses them when the run writes there).
    """
    found = [path for path in out.iterdir() if owned_temporary(path.name)]
    for name in SUBFOLDERS:
        folder = out / name
        if folder.is_dir() and not folder.is_symlink():
            found += [
                path
                for path in folder.iterdir()
                if path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)
            ]
    return sorted(found)
