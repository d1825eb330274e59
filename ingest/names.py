"""What a name read from the dataroot may be before it names a file: tables are data.

Scene names become `staging/<name>.tar` and clip keys; sample_data filenames are opened under
the dataroot. Both are checked here, as pure functions over the table records, before any file is
named after them. Real nuScenes passes unchanged: scene names look like `scene-0061`, filenames
like `samples/CAM_FRONT/n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927612460.jpg`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

SCENE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A scene name usable as a file name and a clip-key prefix: no separator, no leading dot."""


class UnsafeNameError(ValueError):
    """A table record whose name or filename cannot be used (the message names the record)."""


def _record_label(table: str, record: Mapping) -> str:
    token = record.get("token")
    return (
        f"{table} record {token!r}"
        if isinstance(token, str) and token
        else f"a {table} record without a token"
    )


def check_token(table: str, record: Mapping) -> str:
    """The record's token: a non-empty string."""
    token = record.get("token")
    if not isinstance(token, str) or not token:
        raise UnsafeNameError(
            f"{_record_label(table, record)}: token must be a non-empty string, got {token!r}"
        )
    return token


def scene_names(records: Iterable[Mapping]) -> dict[str, Mapping]:
    """scene.json records by name, every name checked: a string matching SCENE_NAME without `..`,
    unique. A missing, malformed or repeated name raises UnsafeNameError naming the record(s)."""
    by_name: dict[str, Mapping] = {}
    for record in records:
        if not isinstance(record, Mapping):
            raise UnsafeNameError(f"scene.json holds a record that is not an object: {record!r:.80}")
        check_token("scene", record)
        name = record.get("name")
        if not isinstance(name, str):
            missing = "has no name" if name is None else f"has a name that is not a string ({name!r:.80})"
            raise UnsafeNameError(f"{_record_label('scene', record)} {missing}")
        if not SCENE_NAME.fullmatch(name) or ".." in name:
            raise UnsafeNameError(
                f"{_record_label('scene', record)} has the name {name!r:.80}, which cannot name a file "
                f"(allowed: {SCENE_NAME.pattern}, no '..')"
            )
        if name in by_name:
            raise UnsafeNameError(
                f"scene name {name!r} is used by two records: {by_name[name]['token']!r} and {record['token']!r}"
            )
        by_name[name] = record
    return by_name


def check_filename(record: Mapping) -> str:
    """A sample_data record's `filename`: relative to the dataroot and staying inside it.

    Checked on the text (no `..` part, not absolute), not by resolving links: a dataroot whose
    `samples/` is a symlink to another disk is a common, legitimate setup.
    """
    filename = record.get("filename")
    where = _record_label("sample_data", record)
    if not isinstance(filename, str) or not filename:
        raise UnsafeNameError(f"{where}: filename must be a non-empty string, got {filename!r:.80}")
    path = PurePosixPath(filename)
    if path.is_absolute() or ".." in path.parts or "\\" in filename or "\0" in filename:
        raise UnsafeNameError(f"{where}: filename {filename!r:.120} points outside the dataroot")
    return filename
