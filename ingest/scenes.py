"""--scenes SPEC -> the sorted scene names an ingest covers."""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from nuscenes.utils.splits import create_splits_scenes


class SceneSpecError(ValueError):
    """A --scenes value naming a split, scene or file that does not exist (a usage error)."""


@dataclass(frozen=True)
class ResolvedScenes:
    """The scenes a SPEC selects from one dataroot."""

    names: list[str]
    """Selected scene names present in the dataroot, sorted: the ingest plan's order."""
    absent_from_split: list[str]
    """Scenes of a named split that this dataroot does not hold (a partial download, or a subset)."""


def _close_matches(word: str, candidates: Collection[str]) -> str:
    matches = difflib.get_close_matches(word, sorted(candidates), n=5, cutoff=0.6)
    return f" (close matches: {', '.join(matches)})" if matches else ""


def resolve_scenes(spec: str, available: Collection[str]) -> ResolvedScenes:
    """Resolve SPEC against the scene names a dataroot holds.

    SPEC is `all`, a devkit split name (`mini_train`, `train`, `val`, ...), `@file` (one scene name
    per line; blank lines and `#` comments skipped), or a comma-separated list of scene names.
    A split selects its scenes that the dataroot holds (at least one); an explicit name must exist.
    Raises SceneSpecError naming close matches.
    """
    available = set(available)
    spec = spec.strip()
    splits = create_splits_scenes()
    if spec == "all":
        return ResolvedScenes(sorted(available), [])
    if spec in splits:
        present = sorted(set(splits[spec]) & available)
        if not present:
            raise SceneSpecError(f"split {spec!r} has no scene in this dataroot ({len(available)} scenes)")
        return ResolvedScenes(present, sorted(set(splits[spec]) - available))
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise SceneSpecError(f"scene list file {str(path)!r} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:  # unreadable, or not a text file
            raise SceneSpecError(f"scene list file {str(path)!r} is not readable text: {error}") from None
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        names = [line for line in lines if line]
        if not names:
            raise SceneSpecError(f"scene list file {str(path)!r} names no scene")
    else:
        names = [name.strip() for name in spec.split(",") if name.strip()]
        if not names:
            raise SceneSpecError("--scenes is empty")
    unknown = [name for name in names if name not in available]
    if unknown:
        vocabulary = available | set(splits) | {"all"} if len(names) == 1 else available
        details = "; ".join(f"{name!r}{_close_matches(name, vocabulary)}" for name in unknown)
        raise SceneSpecError(
            f"unknown scene or split: {details}. Splits: {', '.join(sorted(splits))}, all, @file or a comma list"
        )
    return ResolvedScenes(sorted(set(names)), [])
