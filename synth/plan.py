"""Everything random about one synthetic scene, drawn up front from (seed, scene name).

A ScenePlan fixes the log (vehicle, location, date and time of day), day or night, the sensor
timestamps, the layout (a street grid, or an open lot around the start), the ego trajectory
through it and the other road users (mvm.synth.traffic, from their own generator, so the density
never changes the rest); rendering and table writing only read it. World and trajectory both derive from
the layout, never one from the other (only the lot's extent and its lamp posts, kept off the
route, look at the trajectory).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from mvm.synth.grid import StreetGrid, draw_grid
from mvm.synth.lot import MAX_LOT_SPEED, integrate, plan_segments
from mvm.synth.schedule import TICK_US, SensorTimes, rng_for, sensor_times
from mvm.synth.traffic import Traffic, plan_traffic
from mvm.synth.trajectory import PHRASES, Maneuver, Trajectory, drive, maneuvers_of, plan_route

LOCATIONS = {
    "singapore-onenorth": ("n015", 8),
    "singapore-hollandvillage": ("n015", 8),
    "singapore-queenstown": ("n015", 8),
    "boston-seaport": ("n008", -4),
}
"""nuScenes locations with the vehicle that drove there and the local UTC offset in hours."""
MAX_ROUTE_SPEED = 14.0
"""Planned route length per second of scene (m/s): more than the car can drive."""
LOT_SHARE = 0.5
"""Chance that a scene drives on an open lot instead of the street grid."""
NIGHT_FRACTION = 0.3
"""Chance that a scene is recorded at night."""


@dataclass(frozen=True)
class ScenePlan:
    """One scene of a synthetic dataroot."""

    name: str
    """Scene name from the devkit's split lists, e.g. scene-0061."""
    split: str
    """train or val (mini scenes: the split of their name in mini_train/mini_val)."""
    night: bool
    """Rendered at night (dark, headlight-lit); the description then starts with "Night"."""
    location: str
    """One of LOCATIONS."""
    vehicle: str
    """Vehicle name, the prefix of the log file."""
    logfile: str
    """Log name like n015-2018-07-24-11-22-45+0800; image file names start with it."""
    date_captured: str
    """YYYY-MM-DD of the log."""
    start_us: int
    """Timestamp (µs) of tick 0: LIDAR_TOP fires at start_us + k · TICK_US."""
    camera_delay_us: int
    """CAM_FRONT fires this long after the lidar tick it belongs to (the shared sub-50 ms offset)."""
    times: SensorTimes
    """Tick schedule of the sensors."""
    layout: str
    """"streets" (a street grid, turns at crossings) or "lot" (an open paved lot, free driving)."""
    grid: StreetGrid
    """The streets the world is built from and the route follows (for a lot: its centre and orientation)."""
    maneuvers: tuple[Maneuver, ...]
    """The driving, in order."""
    trajectory: Trajectory
    """Ego motion; its time 0 is the first lidar tick."""
    traffic: Traffic
    """Other road users, in the trajectory's time."""

    @property
    def description(self) -> str:
        """nuScenes-style free text naming the driving in order ("Night, turn left, cruise, ...")."""
        phrases = list(dict.fromkeys(PHRASES[m.kind] for m in self.maneuvers))
        return ", ".join((["Night"] if self.night else []) + phrases).capitalize()

    def seconds(self, timestamps_us: np.ndarray) -> np.ndarray:
        """Trajectory time (s) of absolute timestamps (µs). (N,) int64 -> (N,) float64."""
        first_us = self.start_us + int(self.times.lidar_ticks[0]) * TICK_US
        return (np.asarray(timestamps_us, dtype=np.int64) - first_us) / 1e6

    def lidar_timestamps(self, ticks: np.ndarray) -> np.ndarray:
        """(N,) ticks -> (N,) int64 µs timestamps of LIDAR_TOP (and of samples)."""
        return self.start_us + np.asarray(ticks, dtype=np.int64) * TICK_US

    def camera_timestamps(self, ticks: np.ndarray) -> np.ndarray:
        """(N,) ticks -> (N,) int64 µs timestamps of CAM_FRONT."""
        return self.lidar_timestamps(ticks) + self.camera_delay_us


def plan_scene(
    name: str, split: str, frames: int, drop_rate: float, seed: int, traffic: float = 1.0
) -> ScenePlan:
    """Draw a scene from (seed, name) alone: the same name and seed always give the same scene.
    `traffic` >= 0 scales how many other road users there are (0: none)."""
    rng = rng_for(seed, name)
    location = str(rng.choice(sorted(LOCATIONS)))
    vehicle, utc_offset = LOCATIONS[location]
    night = bool(rng.random() < NIGHT_FRACTION)
    hour = int(rng.integers(19, 23)) if night else int(rng.integers(8, 18))
    local_zone = timezone(timedelta(hours=utc_offset))
    started = datetime(
        2018, int(rng.integers(7, 10)), int(rng.integers(1, 29)), hour, 0, 0, tzinfo=local_zone
    )
    started += timedelta(seconds=int(rng.integers(0, 3600)))
    logfile = f"{vehicle}-{started.strftime('%Y-%m-%d-%H-%M-%S')}{utc_offset * 100:+05d}"
    log_start_us = int(started.timestamp()) * 1_000_000
    first_tick_us = log_start_us + int(rng.integers(20, 1200)) * 1_000_000
    start_us = first_tick_us - first_tick_us % TICK_US + int(rng.integers(0, TICK_US))
    times = sensor_times(frames, drop_rate, rng)
    duration_s = (times.lidar_ticks[-1] - times.lidar_ticks[0] + 1) * TICK_US / 1e6 + 0.1
    grid = draw_grid((float(rng.uniform(300.0, 1500.0)), float(rng.uniform(300.0, 1500.0))), rng)
    layout = "lot" if rng.random() < LOT_SHARE else "streets"
    if layout == "streets":
        pieces, stops, start_m, start_speed = plan_route(grid, duration_s * MAX_ROUTE_SPEED, rng)
        trajectory = drive(pieces, stops, start_m, start_speed, duration_s)
    else:
        start_speed = float(rng.uniform(0.0, MAX_LOT_SPEED))
        segments = plan_segments(duration_s, start_speed, rng)
        trajectory = integrate(segments, grid.origin, float(rng.uniform(-np.pi, np.pi)), start_speed)
    return ScenePlan(
        name=name,
        split=split,
        night=night,
        location=location,
        vehicle=vehicle,
        logfile=logfile,
        date_captured=started.strftime("%Y-%m-%d"),
        start_us=start_us,
        camera_delay_us=int(rng.integers(0, TICK_US)),
        times=times,
        layout=layout,
        grid=grid,
        maneuvers=tuple(maneuvers_of(trajectory)),
        trajectory=trajectory,
        traffic=plan_traffic(
            grid,
            layout,
            trajectory,
            location.startswith("singapore"),
            traffic,
            rng_for(seed, name, "traffic"),
        ),
    )
