"""The resolved options of one ingest; everything that changes the output bytes is in here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from mvm.video import DEFAULT_CRF, DEFAULT_PRESET


@dataclass(frozen=True)
class IngestConfig:
    """Every option that determines the shard bytes (not where they go or how many processes run)."""

    dataroot: str
    """Absolute path of the nuScenes dataroot (the audit reopens it to measure PSNR)."""
    version: str
    """nuScenes version folder, e.g. `v1.0-mini`."""
    scenes_spec: str
    """The --scenes argument as given (the resolved names are in the manifest's `scenes`)."""
    clip_len: int = 8
    """T, frames per clip."""
    stride: int = 1
    """s, chain positions between consecutive frames of a clip."""
    hop: int | None = None
    """Chain positions between consecutive clip starts in a segment (None: T*s, no overlap)."""
    size: tuple[int, int] = (144, 256)
    """(H, W) of the decoded frames."""
    crf: int = DEFAULT_CRF
    """x264 constant rate factor."""
    preset: str = DEFAULT_PRESET
    """x264 preset."""
    max_gap_ms: int = 125
    """Longest interval between consecutive frames that is still continuous."""
    shard_clips: int = 256
    """Clips per shard (the last shard may hold fewer)."""
    seed: int = 0
    """Seed of the clip-offset RNG (keyed further by scene name)."""

    def __post_init__(self) -> None:
        if self.hop is None:
            object.__setattr__(self, "hop", self.clip_len * self.stride)

    def to_json(self) -> dict:
        values = asdict(self)
        values["size"] = list(self.size)
        return values

    def digest(self) -> str:
        """sha256 of the canonical JSON of the config: staged files and ledgers carry it."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()
