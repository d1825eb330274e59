"""The resolved options of one ingest; everything that changes the output bytes is in here.

Each field is declared once with `option` (mvm/options.py): its range or choices, and whether
mvm-ingest generates its flag from it (help = the docstring under the field).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from mvm.options import option
from mvm.video import DEFAULT_CRF, DEFAULT_PRESET, x264_params

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
"""The x264 presets, fastest first."""


@dataclass(frozen=True)
class IngestConfig:
    """Every option that determines the shard bytes (not where they go or how many processes run).

    dataroot, version, scenes_spec and size are declared by hand in ingest/cli.py (flag=False):
    the CLI resolves the dataroot to an absolute path, resolves --scenes against the dataroot's
    tables and parses --size HxW before they become these values.
    """

    dataroot: str = option(free_text=True, flag=False)
    """Absolute path of the nuScenes dataroot (the audit reopens it to measure PSNR)."""
    version: str = option(free_text=True, flag=False)
    """nuScenes version folder, e.g. `v1.0-mini`."""
    scenes_spec: str = option(free_text=True, flag=False)
    """The --scenes argument as given (the resolved names are in the manifest's `scenes`)."""
    clip_len: int = option(8, low=2)
    """T: frames per clip."""
    stride: int = option(1, low=1)
    """s: chain positions between a clip's frames."""
    hop: int | None = option(None, low=1)
    """Chain positions between clip starts in a segment (default: clip-len x stride, no overlap)."""
    size: tuple[int, int] = option((144, 256), low=2, flag=False)
    """(H, W) of the decoded frames."""
    crf: int = option(DEFAULT_CRF, low=0, high=51)
    """x264 constant rate factor (lower = better, bigger)."""
    preset: str = option(DEFAULT_PRESET, choices=X264_PRESETS)
    """x264 preset."""
    max_gap_ms: int = option(125, low=1)
    """Longest interval between consecutive frames that is still continuous; a longer one splits the
    scene (CAM_FRONT intervals are 50/100 ms, a dropped frame gives 150)."""
    shard_clips: int = option(256, low=1)
    """Clips per shard (the last shard may hold fewer)."""
    seed: int = option(0, low=0)
    """Seed of the clip-start offsets (keyed further by scene name)."""
    depth_patch: int = option(16, low=1)
    """Side in pixels (at --size) of the square patches of the lidar depth target; must divide H and W
    (the depth probe needs it equal to the encoder's patch)."""
    depth_min_points: int = option(3, low=1)
    """Projected lidar points a patch needs for a depth value (fewer: NaN)."""
    depth_max_offset_ms: int = option(50, low=0)
    """Largest |lidar - camera| time between a clip frame and the LIDAR_TOP keyframe of its depth
    target (keyframe pairs are a few ms apart in nuScenes; beyond it the clip has no target)."""

    def __post_init__(self) -> None:
        if self.hop is None:
            object.__setattr__(self, "hop", self.clip_len * self.stride)
        problem = depth_patch_problem(self.size, self.depth_patch)
        if problem:
            raise ValueError(problem)

    def to_json(self) -> dict:
        """The manifest's `config`: the fields, plus `x264_params`, the encoder settings they imply."""
        values = asdict(self)
        values["size"] = list(self.size)
        values["x264_params"] = x264_params(self.clip_len)
        return values

    def digest(self) -> str:
        """sha256 of the canonical JSON of the config: staged files and ledgers carry it."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


def depth_patch_problem(size: tuple[int, int], patch: int) -> str | None:
    """Why `patch` cannot tile frames of size (H, W) (with the patches that would), or None."""
    height, width = size
    if height % patch == 0 and width % patch == 0:
        return None
    divisors = [d for d in range(1, min(height, width) + 1) if height % d == 0 and width % d == 0]
    return (
        f"depth patch {patch} does not divide the frame size {height}x{width}; "
        f"patches that do: {', '.join(map(str, divisors))}"
    )
