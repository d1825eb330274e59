"""The audit's view of the lidar depth targets (shards/README.md, "Depth targets"): one clip's
`depth` field and `depth.npy` member checked against the contract, and the coverage statistics
and depth histogram of a shard set. Clips without a target are counted, never a failure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mvm.shards import DEPTH_MEMBER, ShardError, decode_depth

HISTOGRAM_EDGES_M = tuple(float(edge) for edge in range(0, 82, 2))
"""Bin edges (metres) of the depth histogram; values beyond the last edge count in the last bin."""
DEPTH_FIELDS = {
    "frame": int,
    "lidar_token": str,
    "lidar_timestamp": int,
    "offset_us": int,
    "points": int,
    "patch": int,
    "coverage": int | float,
}
"""The fields of a clip's `depth` object and their JSON types."""


@dataclass
class DepthStats:
    """Depth coverage over the clips that passed every check."""

    clips_with: int = 0
    clips_without: int = 0
    patches: int = 0
    """Patches of the clips with a target."""
    valued: int = 0
    """Of those, patches with a value."""
    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(HISTOGRAM_EDGES_M) - 1, np.int64))
    """Histogram of the patch values over HISTOGRAM_EDGES_M."""

    def add(self, values: np.ndarray | None) -> None:
        """Count one clip: its (H/p, W/p) depth target, or None."""
        if values is None:
            self.clips_without += 1
            return
        self.clips_with += 1
        self.patches += values.size
        finite = values[np.isfinite(values)]
        self.valued += finite.size
        clipped = np.minimum(finite, HISTOGRAM_EDGES_M[-1] - 1e-3)  # beyond the last edge: last bin
        self.counts += np.histogram(clipped, bins=HISTOGRAM_EDGES_M)[0]

    def to_json(self, manifest: dict | None) -> dict:
        """audit.json's `depth` statistics; reasons for missing targets come from the manifest."""
        clips = self.clips_with + self.clips_without
        reasons = Counter(entry.get("reason") for entry in (manifest or {}).get("depth_missing", []))
        return {
            "clips_with_depth": self.clips_with,
            "clips_without_depth": self.clips_without,
            "share_clips_with_depth": self.clips_with / clips if clips else None,
            "patch_coverage": self.valued / self.patches if self.patches else None,
            "missing_by_reason": dict(sorted(reasons.items())),
            "histogram_m": {"edges": list(HISTOGRAM_EDGES_M), "counts": self.counts.tolist()},
        }


def depth_field_problems(depth: object, meta: dict, config: dict, where: str) -> list[str]:
    """Contract violations of a clip's `depth` object (not null) against its metadata and config."""
    if not isinstance(depth, dict) or set(depth) != set(DEPTH_FIELDS):
        return [f"{where}: depth is not null or an object with fields {sorted(DEPTH_FIELDS)}"]
    wrong = [
        name
        for name, kind in DEPTH_FIELDS.items()
        if not isinstance(depth[name], kind) or isinstance(depth[name], bool)
    ]
    if wrong:
        return [f"{where}: depth fields of the wrong type: {', '.join(wrong)}"]
    problems = []
    if not 0 <= depth["frame"] < config["clip_len"]:
        return [f"{where}: depth frame {depth['frame']} is not a frame of the clip"]
    if depth["offset_us"] != depth["lidar_timestamp"] - meta["timestamps"][depth["frame"]]:
        problems.append(f"{where}: depth offset_us is not lidar_timestamp minus the frame's timestamp")
    if abs(depth["offset_us"]) > config["depth_max_offset_ms"] * 1000:
        problems.append(f"{where}: depth offset {depth['offset_us']} us beyond depth_max_offset_ms")
    if depth["patch"] != config["depth_patch"]:
        problems.append(
            f"{where}: depth patch {depth['patch']} != config depth_patch {config['depth_patch']}"
        )
    if depth["points"] < 0:
        problems.append(f"{where}: depth points {depth['points']} < 0")
    return problems


def depth_problems(
    sample: dict, meta: dict, config: dict, version: int, where: str
) -> tuple[list[str], np.ndarray | None]:
    """Contract violations of one clip's depth target, and the target (None if absent or bad).

    Version 1 clips have neither field nor member. Version 2: `depth` is null and there is no
    member, or an object and a float32 (H/p, W/p) member whose values are NaN or finite and
    positive, with `coverage` its share of values.
    """
    if version < 2:
        return (
            [f"{where}: a version-1 clip with depth"] if "depth" in meta or DEPTH_MEMBER in sample else []
        ), None
    if "depth" not in meta:
        return [f"{where}: json has no depth field (null or an object)"], None
    depth = meta["depth"]
    if depth is None:
        return (
            [f"{where}: depth is null but a {DEPTH_MEMBER} member is present"]
            if DEPTH_MEMBER in sample
            else []
        ), None
    problems = depth_field_problems(depth, meta, config, where)
    if DEPTH_MEMBER not in sample:
        return [*problems, f"{where}: depth is set but there is no {DEPTH_MEMBER} member"], None
    try:
        values = decode_depth(sample)
    except ShardError as error:
        return [*problems, str(error)], None
    patch = config["depth_patch"]
    shape = (config["size"][0] // patch, config["size"][1] // patch)
    if values.shape != shape:
        return [*problems, f"{where}: {DEPTH_MEMBER} has shape {values.shape}, expected {shape}"], None
    finite = values[np.isfinite(values)]
    if np.isinf(values).any() or (finite <= 0).any():
        problems.append(f"{where}: {DEPTH_MEMBER} holds infinite, zero or negative depths")
    elif isinstance(depth.get("coverage"), int | float) and not np.isclose(
        depth["coverage"], finite.size / values.size
    ):
        problems.append(f"{where}: depth coverage {depth['coverage']} != the share of patches with a value")
    return problems, (None if problems else values)
