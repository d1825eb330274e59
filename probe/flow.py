"""The no-learning motion reference: how far each patch moves between consecutive frames.

Why it is in the report: ego-motion shows up in the frames as image motion (in the embedded world
a left or right turn moves the picture sideways by about two pixels per frame at 64x112; the
ego's speed makes the road flow outwards). `pixels` cannot express that direction linearly, so
it is a weak floor for a motion task. `flow` asks how much of the task a classical motion
estimate gives away with no learning at all: exhaustive block matching, one displacement per
encoder patch and frame pair, through the same grid and temporal pooling and the same heads as
every other source. It is a reference row of the controls, not part of the gate or of
`strength` (both stay as issue 10 defines them), and it does not take part in the choice of the
pooling grid.

Measured on development data (`mvm-synth --seed 2`, never the demo's seed 0; probe heads on 22
training scenes, scored on 1440 clips of 74 other scenes, 4x7 grid): flow 0.958 balanced
accuracy, against pixels 0.744, random encoders 0.716-0.733, the round-5 `tiny` preset 0.713 (the camera-motion preset: 0.902) and the
same encoder trained on the labels 0.790 (0.961 with horizontal flips); with heads on all 67 training scenes, scored on the 29
validation scenes: flow 0.977, the label-trained encoder 0.972, random encoders 0.795-0.829. The
frames carry the label plainly; what the report measures is whether an encoder learned to
extract it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RADIUS_PER_PATCH = 0.25
"""Search radius as a share of the patch side: +-4 pixels for 16-pixel patches."""


def candidate_shifts(radius: int) -> list[tuple[int, int]]:
    """Every (dx, dy) with |dx|, |dy| <= radius, nearest to (0, 0) first (ties in flat patches go to small shifts)."""
    span = range(-radius, radius + 1)
    return sorted(((dx, dy) for dy in span for dx in span), key=lambda s: (abs(s[0]) + abs(s[1]), s[1], s[0]))


def block_matching_flow(video: torch.Tensor, patch_size: int, radius: int) -> torch.Tensor:
    """video (B, T, 3, H, W) in [0, 1] -> (B, T - 1, H / p, W / p, 2) float32 displacements (dx, dy) in pixels.

    For each patch of frame t, the integer shift d with the least mean squared grey-level
    difference between frame t and frame t + 1 read at x + d over the patch: content at x moves
    to x + d (dx > 0: the picture moves right, as in a left turn). Frame t + 1 is edge-padded by
    `radius`. Among equal costs the shift nearest to zero wins, so a still or flat patch reads (0, 0).
    """
    batch, frames, _, height, width = video.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"frame size {height}x{width} is not divisible by the patch size {patch_size}")
    grey = video.float().mean(dim=2)  # (B, T, H, W)
    now, later = grey[:, :-1], grey[:, 1:]  # (B, T - 1, H, W)
    padded = F.pad(later.reshape(-1, 1, height, width), (radius,) * 4, mode="replicate")
    padded = padded.reshape(batch, frames - 1, height + 2 * radius, width + 2 * radius)
    rows, cols = height // patch_size, width // patch_size
    shifts = candidate_shifts(radius)
    costs = []
    for dx, dy in shifts:
        moved = padded[:, :, radius + dy : radius + dy + height, radius + dx : radius + dx + width]
        error = (moved - now) ** 2  # (B, T - 1, H, W)
        costs.append(error.reshape(batch, frames - 1, rows, patch_size, cols, patch_size).mean(dim=(3, 5)))
    best = torch.stack(costs, dim=-1).argmin(dim=-1)  # (B, T - 1, R, C): first minimum = nearest shift
    table = torch.tensor(shifts, dtype=torch.float32, device=video.device)  # (S, 2)
    return table[best]


class FlowSource:
    """The `flow` reference as a probe source: block-matching displacements as a (B, T - 1, R, C, 2) token grid."""

    def __init__(self, patch_size: int):
        self.patch_size = patch_size
        self.radius = max(1, round(patch_size * RADIUS_PER_PATCH))

    def token_grid(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, T, 3, H, W) in [0, 1] -> (B, T - 1, H / p, W / p, 2): one step per frame pair."""
        return block_matching_flow(video, self.patch_size, self.radius)
