"""The shard format in one place: names, the manifest, the tar writer and the ONE sample reader.

Changing the shard format touches this module and shards/README.md, nothing else outside tests:
the writer (ingest/plan.py, ingest/stage.py), the audit (ingest/audit.py), the trainer
(train/data.py), the probe (probe/data.py) and the bench (bench/storage.py) all import it.

    manifest = read_manifest(folder)                  # validated: names, counts, sha256 fields
    for path in listed_shards(folder, manifest): ...   # every path inside `folder`, by the pattern
    for sample in iter_verified(path): ...             # sha256 checked on first open in a process
    for sample in iter_samples(path): ...              # any tar in the layout, no manifest needed

A sample is a dict {"key", "url", "index" (position in the tar), "<ext>": bytes, ...}: the members
`<key>.<ext>` of one key, which must be consecutive. Every error is a ShardError naming the shard
and, where there is one, the key.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import braceexpand
import numpy as np

from mvm.atomic import ensure_dir, write_atomic

FORMAT_NAME = "mvm-shards"
FORMAT_VERSION = 2
"""Shard format version written (shards/README.md); bump when a reader would misread old shards.
Version 2 added the per-clip lidar depth target (`depth` in the json, the `depth.npy` member)."""
READABLE_VERSIONS = (1, 2)
"""Versions every reader accepts: version 1 shards are version 2 without depth targets."""
DEPTH_MEMBER = "depth.npy"
"""Extension of a clip's depth target member, `<key>.depth.npy` (version 2, only when it has one)."""
MANIFEST = "manifest.json"
"""The manifest's file name in a shard folder; it is written last and means "complete"."""
SHARD_PATTERN = re.compile(r"shard-\d{6}\.tar")
"""The only shard file names a manifest may list (no folders, no other names)."""
PATCH_SIZE = 16
"""The trainer's spatial patch side in pixels: frame sizes should be multiples of it."""
RESERVED = ("key", "url", "index", "error")
"""Sample dict fields that are not member extensions (a member may not use them)."""


class ShardError(ValueError):
    """A manifest, shard or sample that cannot be used; the message names the file (and key)."""


class DamagedShardError(ShardError):
    """A listed shard whose contents fail verification or reading (sha256, tar structure, decoding):
    the data on disk is damaged, not the request, so tools report it as a failure (exit 1)."""


class ShardWarning(UserWarning):
    """A shard spec that works but probably not as meant (a shard named twice); CLIs print it as one line."""


class NotRegularFileError(OSError):
    """A path read as a file that is a FIFO, device, socket or folder; `strerror` says which."""


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a device")


def open_regular(path: str | Path) -> BinaryIO:
    """Open `path` for binary reading; NotRegularFileError (an OSError) unless it is a regular file.

    Files named by data or by a user (manifests, shards, run configs, checkpoints) go through this:
    opening a FIFO for reading waits for a writer, so a FIFO planted at such a name would hang the
    tool forever. O_NONBLOCK makes that open return at once, and fstat on the opened descriptor
    (not a separate stat of the name, which could be swapped in between) decides.
    """
    handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(handle).st_mode
    if not stat.S_ISREG(mode):
        os.close(handle)
        raise NotRegularFileError(errno.EINVAL, f"{_file_kind(mode)}, not a regular file", str(path))
    os.set_blocking(handle, True)
    return os.fdopen(handle, "rb")


def shard_name(index: int) -> str:
    """File name of shard `index`: `shard-NNNNNN.tar`."""
    return f"shard-{index:06d}.tar"


def clip_key(scene: str, first_index: int) -> str:
    """`<scene>-<first chain position, 4 digits>`; dots would split a WebDataset key, so none."""
    return f"{scene.replace('.', '_')}-{first_index:04d}"


def shard_path(folder: str | Path, name: object) -> Path:
    """`folder / name` for a shard name read from a manifest; ShardError unless it is a plain
    `shard-NNNNNN.tar` that resolves inside `folder` (a symlink pointing out is refused too)."""
    folder = Path(folder)
    if not isinstance(name, str) or not SHARD_PATTERN.fullmatch(name):
        raise ShardError(f"{folder / MANIFEST}: shard name {name!r} is not of the form shard-NNNNNN.tar")
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise ShardError(f"{path} resolves outside {folder} ({path.resolve()}); refusing to read it")
    return path


def _json_error(path: Path, error: json.JSONDecodeError) -> str:
    return f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a shard folder, checked as data: format and version, every shard entry's
    name (see shard_path), clip count, byte count and sha256, and total_clips.

    ShardError when the folder has no manifest (not a shard folder: a usage error);
    DamagedShardError when it has one that cannot be used (not a regular file, unreadable, not
    valid JSON, wrong format or fields): the data on disk is the problem, tools exit 1.
    """
    path = Path(folder) / MANIFEST
    try:
        with open_regular(path) as handle:
            manifest = json.loads(handle.read().decode())
    except FileNotFoundError:
        raise ShardError(
            f"shard folder {path.parent} has no {MANIFEST} (ingest incomplete, or not an mvm-ingest output)"
        ) from None
    except json.JSONDecodeError as error:
        raise DamagedShardError(_json_error(path, error)) from None
    except NotRegularFileError as error:
        raise DamagedShardError(f"cannot read {path}: it is {error.strerror}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedShardError(f"cannot read {path}: {error}") from None
    if not isinstance(manifest, dict):
        raise DamagedShardError(f"{path} is not a JSON object")
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") not in READABLE_VERSIONS:
        raise DamagedShardError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('version')}, "
            f"expected {FORMAT_NAME!r} v{' or v'.join(map(str, READABLE_VERSIONS))}"
        )
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise DamagedShardError(f"{path}: 'shards' is not a list")
    names = set()
    for entry in shards:
        if not isinstance(entry, dict):
            raise DamagedShardError(f"{path}: shard entry {entry!r} is not an object")
        shard_path(folder, entry.get("name"))
        if entry["name"] in names:
            raise DamagedShardError(f"{path}: shard {entry['name']} listed twice")
        names.add(entry["name"])
        for field, kind in (("clips", int), ("bytes", int), ("sha256", str)):
            if not isinstance(entry.get(field), kind) or isinstance(entry.get(field), bool):
                raise DamagedShardError(f"{path}: shard {entry['name']} has no valid {field!r}")
        if entry["clips"] < 0 or entry["bytes"] < 0 or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
            raise DamagedShardError(
                f"{path}: shard {entry['name']} has an invalid clips, bytes or sha256 value"
            )
    if manifest.get("total_clips") != sum(entry["clips"] for entry in shards):
        raise DamagedShardError(
            f"{path}: total_clips {manifest.get('total_clips')!r} != the sum over its shards"
        )
    config = manifest.get("config")
    if not isinstance(config, dict):
        raise DamagedShardError(f"{path}: 'config' is not an object")
    return manifest


def clip_shape(manifest: dict, where: str | Path = MANIFEST) -> tuple[int, tuple[int, int]]:
    """(clip_len T, (H, W)) of a manifest's clips: the one source of these values for readers."""
    config = manifest["config"]
    try:
        clip_len, (height, width) = int(config["clip_len"]), config["size"]
        return clip_len, (int(height), int(width))
    except (KeyError, TypeError, ValueError):
        raise ShardError(f"{where}: config has no valid clip_len and size [H, W]") from None


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write DIR/manifest.json atomically (canonical JSON); call it after every shard is in place."""
    write_atomic(folder / MANIFEST, dumps(manifest))


def write_shard_folder(folder: Path, shards: list[list[list[tuple[str, bytes]]]], config: dict) -> dict:
    """folder/shard-NNNNNN.tar per entry of `shards` (a list of samples, each a list of (name, data)
    tar members), then manifest.json last; returns the manifest. For shard sets made outside
    mvm-ingest (tests, the bench): the same writers, the same manifest fields."""
    folder = ensure_dir(folder)
    entries = []
    for index, samples in enumerate(shards):
        archive = tar_bytes(member for sample in samples for member in sample)
        write_atomic(folder / shard_name(index), archive)
        entries.append(
            {
                "name": shard_name(index),
                "clips": len(samples),
                "sha256": sha256_bytes(archive),
                "bytes": len(archive),
            }
        )
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": config,
        "shards": entries,
        "total_clips": sum(entry["clips"] for entry in entries),
    }
    write_manifest(folder, manifest)
    return manifest


def listed_shards(folder: str | Path, manifest: dict) -> list[Path]:
    """Paths of the shards a (read_manifest-checked) manifest lists, in order."""
    return [shard_path(folder, entry["name"]) for entry in manifest["shards"]]


def dumps(value) -> str:
    """Canonical JSON for reproducible files: sorted keys, two-space indent, UTF-8 kept, final newline."""
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A ustar archive of (name, data) members in the given order, with fixed headers
    (mtime 0, uid/gid 0, empty user and group names, mode 0644): same members, same bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sample_members(sample: dict) -> list[tuple[str, bytes]]:
    """The (name, data) tar members of a sample from iter_samples, in their archive order."""
    return [(f"{sample['key']}.{ext}", data) for ext, data in sample.items() if ext not in RESERVED]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def iter_samples(path: str | Path) -> Iterator[dict]:
    """Samples of one tar in archive order: {"key", "url", "index", "<ext>": bytes} per key.

    Members must be regular files named `<key>.<ext>` (no folder, key without dots, ext not one of
    RESERVED), each extension once per sample; members of one key are consecutive by construction
    (a key seen again later is another sample: uniqueness is the audit's check). Anything else,
    and any tar or I/O error, raises ShardError naming the shard and the key.
    """
    url = str(path)
    current: dict | None = None
    index = 0
    try:
        with open_regular(url) as handle, tarfile.open(fileobj=handle, mode="r|") as archive:
            for member in archive:
                key, _, ext = member.name.partition(".")
                where = f"shard {url}, sample {key}"
                if not member.isfile():
                    raise DamagedShardError(f"{where}: member {member.name!r} is not a regular file")
                if not key or "/" in member.name or not ext or ext in RESERVED:
                    raise DamagedShardError(f"{where}: member {member.name!r} is not named <key>.<ext>")
                if current is not None and key != current["key"]:
                    yield current
                    index, current = index + 1, None
                if current is None:
                    current = {"key": key, "url": url, "index": index}
                if ext in current:
                    raise DamagedShardError(f"{where}: member {member.name!r} appears twice")
                current[ext] = archive.extractfile(member).read()
    except NotRegularFileError as error:
        raise DamagedShardError(f"shard {url} is {error.strerror}") from None
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DamagedShardError(
            f"shard {url} is corrupt or truncated after sample {index}: {error}"
        ) from None
    if current is not None:
        yield current


def decode_depth(sample: dict) -> np.ndarray | None:
    """The depth target of a sample from iter_samples: float32 (H/p, W/p) median metres per patch,
    NaN where too few lidar points; None when the clip has none (version 1 shards never do).
    DamagedShardError naming shard and key when the member is not a 2-D float32 .npy."""
    data = sample.get(DEPTH_MEMBER)
    if data is None:
        return None
    where = f"shard {sample.get('url')}, sample {sample.get('key')}"
    try:
        values = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DamagedShardError(f"{where}: {DEPTH_MEMBER} is not a .npy array ({error})") from None
    if values.dtype != np.float32 or values.ndim != 2:
        raise DamagedShardError(
            f"{where}: {DEPTH_MEMBER} is {values.dtype} {values.shape}, expected float32 (H/p, W/p)"
        )
    return values


_verified: dict[str, tuple[int, int]] = {}
"""Shards verified in this process: resolved path -> (size, mtime_ns) when it matched."""


_listings: dict[Path, tuple[tuple[int, int], dict[str, dict]]] = {}
"""Shard entries by name per folder, read once per manifest version (size, mtime) in a process."""


def listed_entry(path: str | Path) -> dict:
    """The manifest entry {name, clips, bytes, sha256} of a shard path; ShardError unless the
    manifest of its folder lists it (and it resolves inside that folder)."""
    path = Path(path)
    folder = path.parent.resolve()
    try:
        info = os.stat(folder / MANIFEST)
        stamp = (info.st_size, info.st_mtime_ns)
    except OSError:
        stamp = (-1, -1)  # read_manifest below names the problem
    if folder not in _listings or _listings[folder][0] != stamp:
        _listings[folder] = (stamp, {e["name"]: e for e in read_manifest(path.parent)["shards"]})
    entry = _listings[folder][1].get(path.name)
    if entry is None:
        raise ShardError(f"{path} is not listed in {path.parent / MANIFEST}; refusing to read it")
    shard_path(path.parent, path.name)
    return entry


def verify_listed(path: str | Path) -> None:
    """Check a shard against its folder's manifest: listed, inside the folder, size and sha256.

    Runs once per shard per process (again if the file's size or mtime changed); ShardError on a
    mismatch, which readers treat like a corrupt shard.
    """
    path = Path(path)
    entry = listed_entry(path)
    try:
        info = os.stat(path)
    except OSError as error:
        raise ShardError(f"shard {path} cannot be opened: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DamagedShardError(f"shard {path} is {_file_kind(info.st_mode)}, not a regular file")
    stamp = (info.st_size, info.st_mtime_ns)
    if _verified.get(str(path.resolve())) == stamp:
        return
    if info.st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
        raise DamagedShardError(
            f"shard {path} does not match its sha256 in {path.parent / MANIFEST} (damaged)"
        )
    _verified[str(path.resolve())] = stamp


def iter_verified(path: str | Path) -> Iterator[dict]:
    """iter_samples of a shard listed in its folder's manifest, verified first (verify_listed)."""
    verify_listed(path)
    yield from iter_samples(path)


# --- Shard sets: what the trainer, the probe, the sweep and the bench read -------------------------


def _split_spec(spec: str) -> list[str]:
    """The comma-separated parts of a shard spec; a comma inside braces belongs to its brace pattern.

    `dir/shard-00000{0,1}.tar,other` is two parts, the first a pattern of two shards. Splitting on
    every comma first would cut the pattern into unbalanced halves; expanding the whole spec first
    would pair each expansion with the rest of the list (`a{0,1},b` -> `a0,b` and `a1,b`).
    """
    parts, current, depth = [], [], 0
    for char in spec:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            break
        current.append(char)
    if depth != 0:
        raise ShardError(f"shard spec {spec!r} has unbalanced braces")
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _resolve_one(part: str) -> list[str]:
    """Shard paths of one spec part: braces expanded, then each a folder, a glob or a file."""
    urls = []
    for name in braceexpand.braceexpand(part):
        path = Path(name)
        if path.is_dir():
            urls += [str(url) for url in listed_shards(path, read_manifest(path))]
        elif any(char in name for char in "*?["):
            matches = sorted(glob.glob(name))
            if not matches:
                raise ShardError(f"shard pattern {name} matches no file")
            urls += matches
        else:
            urls.append(name)
    return urls


def _unique_shards(urls: list[str]) -> tuple[list[str], list[str]]:
    """(urls with each file once, first spelling kept, in order; the urls dropped as repeats).

    A file counts once however it is spelled (`a/x.tar`, `./a/x.tar`, a symlink to it). A shard
    named twice is nearly always two overlapping forms (a folder and a glob inside it), not a wish
    to weight it double: read twice, it would train on every clip twice per epoch and put the same
    clips twice in a probe split. Refusing would fail specs that merely overlap, so resolve_shards
    reads each shard once and warns (a real weighting would need an option of its own).
    """
    seen, kept, repeats = set(), [], []
    for url in urls:
        identity = os.path.realpath(url)
        if identity in seen:
            repeats.append(url)
        else:
            seen.add(identity)
            kept.append(url)
    return kept, repeats


def resolve_shards(spec: str) -> list[str]:
    """Shard paths from a folder with manifest.json, a brace pattern, a glob, or a comma list of those.

    Every shard must be a regular file listed in the manifest of its folder (so a stray or planted
    file, or a name pointing outside the folder, is refused). Raises ShardError naming every
    missing shard before any work is done. A shard named more than once is read once, with a
    ShardWarning naming the repeats (see _unique_shards).
    """
    urls = [url for part in _split_spec(spec) for url in _resolve_one(part)]
    if not urls:
        raise ShardError(f"shard spec {spec!r} names no shards")
    missing = [url for url in urls if not Path(url).exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ShardError(f"{len(missing)} of {len(urls)} shards missing: {shown}")
    for url in urls:
        if not Path(url).is_file():
            raise ShardError(f"shard {url} is {_file_kind(os.stat(url).st_mode)}, not a regular file")
        listed_entry(url)
    urls, repeats = _unique_shards(urls)
    if repeats:
        shown = ", ".join(repeats[:3]) + (f" and {len(repeats) - 3} more" if len(repeats) > 3 else "")
        warnings.warn(
            f"shard spec {spec!r} names {len(repeats)} shard(s) more than once ({shown}); reading each once",
            ShardWarning,
            stacklevel=1,  # attributed here: a spec resolved by several callers warns once per process
        )
    return urls


def shard_clip_counts(urls: list[str]) -> list[int]:
    """Clips per shard, from the manifest of each shard's folder."""
    return [listed_entry(url)["clips"] for url in urls]


def clip_shape_of(urls: list[str]) -> tuple[int, tuple[int, int]]:
    """(clip_len, (H, W)) from the manifests' config; ShardError if the shards' folders disagree."""
    shapes = {clip_shape(read_manifest(folder), folder) for folder in {Path(u).parent for u in urls}}
    if len(shapes) != 1:
        raise ShardError(f"shard folders hold clips of different shapes (clip_len, size): {sorted(shapes)}")
    return shapes.pop()
