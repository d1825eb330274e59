"""The one way mvm writes a file: inside its folder, never through a symlink, never half-written.

Every tool writes outputs through these helpers. A file is written under a fresh temporary name
that this process creates exclusively (`tempfile.mkstemp`: O_CREAT|O_EXCL, so a planted symlink or
file at that name is never followed or reused), fsynced, then renamed over the final name. A rename
replaces a symlink sitting at the final name instead of writing through it. On any failure
(disk full, a kill signal turned into an exception, an error in the caller's block) the temporary
is removed, so failed writes leave nothing behind.

    write_atomic(out / "report.json", text)           # bytes or str
    with atomic_path(out / "clip.mp4") as tmp:        # for writers that need a path
        encode_to(tmp)
    save_figure(fig, out / "loss.png")                # a matplotlib figure as PNG, then closed
    ensure_dir(out)                                   # refuses symlinked / non-folder outputs
    with open_append(out / "ingest.log") as log:      # logs: appended, never through a symlink
        log.write("line\n")
    with exclusive_lock(out, "mvm-ingest"):           # one writer per output folder
        ...
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any thread could
    # create a file in the moment the mask is 0.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()
"""The process's umask, read once at import: the mode atomic_path gives its files."""


class OutputError(OSError):
    """An output location that cannot be written safely; the message is one line for the user."""


def _describe(error: OSError, path: Path) -> str:
    if error.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path}"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write in {path.parent}: permission denied or read-only file system"
    if error.errno == errno.ENOTDIR:
        return f"{path.parent} is not a folder"
    return f"cannot write {path}: {error.strerror or error}"


def ensure_dir(path: str | Path) -> Path:
    """Create folder `path` (and parents) if needed; refuse a symlink or a non-folder at `path`."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"refusing to write into {path}: it is a symlink (give the real folder)")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(_describe(error, path / ".")) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {path}: permission denied or read-only file system")
    return path


def _fsync_dir(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path next to `path`; on success it is fsynced and renamed to `path`.

    The folder itself must not be a symlink (checked); on any exception the temporary is removed.
    """
    path = Path(path)
    directory = ensure_dir(path.parent)
    try:
        handle, name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    except OSError as error:
        raise OutputError(_describe(error, path)) from None
    os.close(handle)
    temporary = Path(name)
    # mkstemp creates 0600; give the final file the mode a plain open() would (0666 minus umask),
    # so shards, manifests and reports in a shared folder stay readable by the group.
    os.chmod(temporary, 0o666 & ~_UMASK)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
        _fsync_dir(directory)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(_describe(error, path)) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_figure(figure, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure to `path` as PNG through `atomic_path`; the figure is closed either way."""
    import matplotlib.pyplot as plt  # imported here: only the plotting callers need matplotlib

    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    return Path(path)


def open_append(path: str | Path, binary: bool = False):
    """Open log file `path` for appending (created 0644 if missing), refusing a symlink at its name.

    Logs grow line by line, so they cannot be renamed into place; O_NOFOLLOW makes a link planted
    at the name an error instead of a write through it. The folder is checked like ensure_dir.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutputError(f"refusing to append to {path}: it is a symlink") from None
        raise OutputError(_describe(error, path)) from None
    return os.fdopen(handle, "ab" if binary else "a")


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write `data` (str is UTF-8 encoded) to `path` atomically; see the module docstring."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(payload)


LOCK_NAME = ".mvm.lock"
"""The lock file every tool takes in the folder it writes (tools skip it when listing outputs)."""


class BusyError(OutputError):
    """Another process holds the output folder's lock."""


@contextlib.contextmanager
def exclusive_lock(
    folder: str | Path, tool: str, name: str = LOCK_NAME, shared: bool = False
) -> Iterator[Path]:
    """Hold an advisory lock (flock) on `folder/name` for the block: one writer per output folder.

    A second writer gets BusyError at once (naming the holder's tool and pid, when readable)
    instead of waiting or writing over the first one's files. The lock is released by the kernel
    when the process dies, so a crash never leaves a stale lock; the file itself stays (it is
    empty but for the holder's description) and is reused by the next run. The folder is created
    and checked like ensure_dir; a symlink planted at the lock's name is refused (O_NOFOLLOW).

    shared=True takes the lock in shared mode: any number of shared holders (the parts of one
    Slurm array) hold it together, and an exclusive holder (a finalize) excludes them all.
    """
    lock_path = ensure_dir(folder) / name
    try:
        handle = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutputError(f"refusing to lock {lock_path}: it is a symlink") from None
        raise OutputError(_describe(error, lock_path)) from None
    try:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 200, 0).decode(errors="replace").strip() or "another process"
            raise BusyError(
                f"{folder} is in use by {holder}: one writer per folder (wait for it, or use another folder)"
            ) from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise OutputError(_describe(error, lock_path)) from None
            # A file system without flock (some network mounts): refusing every run there would
            # make the tools unusable, so the run goes on unguarded and says so once.
            warnings.warn(
                f"{folder}: the file system does not support locks; nothing stops a second writer",
                stacklevel=3,
            )
        # Shared holders write the same text (no pid: there are several); whatever an exclusive
        # holder that died wrote is stale once anyone holds the lock.
        os.ftruncate(handle, 0)
        description = f"{tool} (several processes)" if shared else f"{tool} (pid {os.getpid()})"
        os.pwrite(handle, description.encode(), 0)
        yield lock_path
    finally:
        os.close(handle)  # releases the flock
