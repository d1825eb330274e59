"""Deterministic, atomic tar files (WebDataset shards and per-scene staging tars).

Every header field that could vary between runs is fixed: mtime 0, uid/gid 0, empty user and
group names, mode 0o644, ustar format; members are written in the order given (callers pass them
sorted by key then extension). A file is written under a hidden temporary name, fsynced, then
renamed, so a killed run never leaves a file that looks finished.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A ustar archive of (name, data) members in the given order, with fixed headers."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_members(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular member of a tar file, in archive order."""
    with tarfile.open(path, mode="r:") as archive:
        for info in archive:
            if info.isfile():
                yield info.name, archive.extractfile(info).read()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a hidden temporary file, fsync and rename (and fsync the folder)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
