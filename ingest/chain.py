"""A scene's CAM_FRONT frames in `next`-chain order, and their split into continuous segments.

Pure functions over sample_data-like records (dicts with token, timestamp, prev, next): the devkit
glue lives in ingest/tables.py. A violation never aborts a scene; it ends the current segment and
is recorded as a reject with one of REJECT_REASONS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

REJECT_REASONS = (
    "gap",
    "duplicate_timestamp",
    "non_monotonic",
    "broken_chain",
    "missing_file",
    "corrupt_file",
    "too_short",
)


@dataclass(frozen=True)
class Reject:
    """One rejected frame, interval, chain link or segment of a scene."""

    frame_index: int
    """Position in the scene's walked chain of the frame the reject is about (-1 if none)."""
    timestamp: int
    """µs timestamp of that frame."""
    reason: str
    """One of REJECT_REASONS."""
    detail: str
    """Human-readable specifics (interval length, file name, ...)."""


@dataclass(frozen=True)
class WalkedChain:
    """The records reachable along a scene's CAM_FRONT chain, in chain order."""

    records: list[Mapping]
    """sample_data records in walk order."""
    breaks: frozenset[int]
    """Positions in `records` that start over after a broken link (a segment must end before them)."""
    rejects: list[Reject]
    """One `broken_chain` reject per broken link."""


def walk_chain(
    lookup: Callable[[str], Mapping | None],
    keyframe_tokens: Sequence[str],
    in_scene: Callable[[Mapping], bool],
) -> WalkedChain:
    """Walk a scene's CAM_FRONT `next` chain, starting over at the next keyframe after a broken link.

    lookup: sample_data token -> record, or None if the table has no such token.
    keyframe_tokens: the scene's CAM_FRONT keyframe sample_data tokens in sample order; the walk
    starts at the first, goes back via `prev` to the chain's start, then forward via `next`.
    in_scene: whether a record belongs to this scene (a chain running into another scene ends).
    A link is broken when `next` names a missing record, the next record's `prev` does not point
    back, or the chain loops. The walk then starts over at the first keyframe not yet visited,
    again going back via `prev` as far as the links hold, so frames past a break are not lost.
    """
    records: list[Mapping] = []
    breaks: set[int] = set()
    rejects: list[Reject] = []
    visited: set[str] = set()

    def linked_prev(record: Mapping) -> Mapping | None:
        previous = lookup(record["prev"]) if record["prev"] else None
        if previous is None or previous["next"] != record["token"] or previous["token"] in visited:
            return None
        return previous if in_scene(previous) else None

    for keyframe_token in keyframe_tokens:
        current = lookup(keyframe_token)
        if keyframe_token in visited or current is None:
            continue
        while (previous := linked_prev(current)) is not None:
            current = previous
        if records:
            breaks.add(len(records))
        while True:
            visited.add(current["token"])
            records.append(current)
            if not current["next"]:
                break
            following = lookup(current["next"])
            if following is None or following["prev"] != current["token"] or following["token"] in visited:
                why = "missing record" if following is None else "prev does not point back or loop"
                rejects.append(
                    Reject(
                        len(records) - 1,
                        current["timestamp"],
                        "broken_chain",
                        f"next {current['next']}: {why}",
                    )
                )
                break
            if not in_scene(following):
                break
            current = following
    return WalkedChain(records, frozenset(breaks), rejects)


def split_segments(
    timestamps: Sequence[int],
    breaks: frozenset[int] | set[int],
    bad_frames: Mapping[int, tuple[str, str]],
    max_gap_us: int,
) -> tuple[list[list[int]], list[Reject]]:
    """Split a walked chain into continuous segments of good frames.

    timestamps: (F,) µs per chain position; breaks: positions that start over after a broken link;
    bad_frames: position -> (reason, detail) for frames whose file is missing or corrupt;
    max_gap_us: the longest interval that still counts as continuous.
    Returns (segments as lists of chain positions, rejects). Every accepted timestamp is greater
    than every earlier accepted one, so a frame at or before the latest accepted time is rejected
    (`duplicate_timestamp` if equal, `non_monotonic` if earlier). Each violation ends the segment.
    """
    segments: list[list[int]] = []
    rejects: list[Reject] = []
    current: list[int] = []
    latest: int | None = None

    def close() -> None:
        nonlocal current
        if current:
            segments.append(current)
        current = []

    for position, timestamp in enumerate(timestamps):
        if position in bad_frames:
            reason, detail = bad_frames[position]
            rejects.append(Reject(position, timestamp, reason, detail))
            close()
            continue
        if latest is not None and timestamp <= latest:
            reason = "duplicate_timestamp" if timestamp == latest else "non_monotonic"
            rejects.append(Reject(position, timestamp, reason, f"{timestamp} after {latest}"))
            close()
            continue
        if position in breaks:
            close()
        elif current and timestamp - timestamps[current[-1]] > max_gap_us:
            interval_ms = (timestamp - timestamps[current[-1]]) / 1000
            rejects.append(
                Reject(position, timestamp, "gap", f"{interval_ms:g} ms > {max_gap_us / 1000:g} ms")
            )
            close()
        current.append(position)
        latest = timestamp
    close()
    return segments, rejects
