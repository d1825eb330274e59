"""The street grid of a synthetic scene: straight one-way streets crossing at right angles.

Crossings sit every `spacing_m` along two perpendicular street directions (rotated by
`rotation` in the global frame); each has a large paved square (16-22 m half side, streets are
5.25 m half wide), so a turn is an arc well inside the square and the view into a crossing is the
same whichever way the car will leave it. Turn radii stay below 0.55 of the half side: with
wider arcs the car is near the square's edge when it starts and ends a turn, and in a still
frame "crossing ahead, turned left" vs "street ahead, turned right" gave the direction away
(measured on a demo-sized dataroot: first-frame 16x28 thumbnails separated left from right
at 0.72-0.78 balanced accuracy with 9-12 m squares and radii of 0.75-1 half side). The car
drives on the centre line (the middle lane of three), so left and right turns are mirror
images. World (mvm.synth.world) and route (mvm.synth.trajectory) are both built from the
grid and never from each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LANE_M = 3.5
"""Lane width; streets have three lanes."""
STREET_HALF_M = 1.5 * LANE_M
"""Half the width of a street's asphalt."""


@dataclass(frozen=True)
class StreetGrid:
    """Crossing positions and street sizes of one scene."""

    origin: tuple[float, float]
    """Global position (m) of crossing (0, 0)."""
    rotation: float
    """Heading (rad) of the grid's first street direction."""
    spacing_m: float
    """Distance between neighbouring crossings."""
    crossing_half_m: float
    """Half the side of a crossing's paved square (larger than STREET_HALF_M: cut corners)."""

    @property
    def street_half_m(self) -> float:
        return STREET_HALF_M

    @property
    def min_turn_radius_m(self) -> float:
        """Tightest turn: from the centre line, still inside the crossing square."""
        return 6.0

    @property
    def max_turn_radius_m(self) -> float:
        """Widest turn: well inside the square, so the square looks alike entering and leaving a turn."""
        return 0.55 * self.crossing_half_m

    def direction_xy(self, direction: int) -> np.ndarray:
        """Unit vector (2,) of grid direction 0..3 (0 = rotation, counter-clockwise in 90° steps)."""
        heading = self.heading(direction)
        return np.array([math.cos(heading), math.sin(heading)])

    def heading(self, direction: int) -> float:
        return self.rotation + direction * math.pi / 2

    @staticmethod
    def direction_steps(direction: int) -> np.ndarray:
        """Grid index step (2,) of one crossing along direction 0..3."""
        return np.array([(1, 0), (0, 1), (-1, 0), (0, -1)][direction % 4])

    def node_xy(self, node) -> np.ndarray:
        """Global position (2,) of crossing (i, j)."""
        i, j = node
        return np.array(self.origin) + self.spacing_m * (i * self.direction_xy(0) + j * self.direction_xy(1))

    def uv_of(self, xy: np.ndarray) -> np.ndarray:
        """Global points (..., 2) -> grid-plane (u, v) metres (..., 2): from crossing (0, 0) along
        directions 0 and 1."""
        relative = np.asarray(xy, dtype=np.float64) - np.array(self.origin)
        return np.stack([relative @ self.direction_xy(0), relative @ self.direction_xy(1)], axis=-1)

    def xy_of(self, uv: np.ndarray) -> np.ndarray:
        """Grid-plane (u, v) metres (..., 2) -> global points (..., 2)."""
        return np.array(self.origin) + np.asarray(uv) @ np.stack([self.direction_xy(0), self.direction_xy(1)])


def draw_grid(near_xy: tuple[float, float], rng: np.random.Generator) -> StreetGrid:
    """A grid with a crossing near `near_xy`, random orientation, block size and crossing size."""
    crossing_half = float(rng.uniform(16.0, 22.0))
    return StreetGrid(
        origin=(float(near_xy[0]), float(near_xy[1])),
        rotation=float(rng.uniform(-math.pi, math.pi)),
        spacing_m=2 * crossing_half + float(rng.uniform(8.0, 16.0)),
        crossing_half_m=crossing_half,
    )
