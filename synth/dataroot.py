"""Write a synthetic nuScenes-format dataroot: tables, rendered CAM_FRONT JPEGs, ray-cast LIDAR_TOP.

Layout (as real nuScenes): `<out>/<version>/*.json`, `<out>/samples/<CHANNEL>/` (keyframes),
`<out>/sweeps/<CHANNEL>/` (non-keyframes), `<out>/maps/*.png`, plus the marker file
`<out>/mvm-synth.json` that identifies the folder as this generator's output (so a later run
may replace it) and records the arguments and whether the run completed.

Keyframe LIDAR_TOP files (`samples/LIDAR_TOP/*.pcd.bin`) are ray-cast point clouds
(mvm.synth.lidar), about 26 thousand points (0.5 MB) each; the non-keyframe sweeps
(`sweeps/LIDAR_TOP/`) are empty placeholders, since nothing downstream reads them.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mvm.atomic import atomic_path, ensure_dir, write_atomic
from mvm.ego_motion import yaw_from_quaternion
from mvm.synth.camera import Camera, quaternion_matrix
from mvm.synth.lidar import cast_sweep, lidar_pose, points_in_boxes
from mvm.synth.plan import ScenePlan, plan_scene
from mvm.synth.render import Renderer
from mvm.synth.schedule import TICK_US, VERSIONS, rng_for, scene_names
from mvm.synth.tables import TableBuilder
from mvm.synth.world import World, build_lot_world, build_world

MARKER = "mvm-synth.json"
"""Marker file name in the dataroot."""
JPEG_QUALITY = 90
DEFAULT_DROP_RATE = 0.005
"""Chance that a CAM_FRONT non-keyframe is dropped (about one frame per 200: one or two per scene)."""
DEFAULT_TRAFFIC = 1.0
"""Density of other road users: a realistic mix of empty, light and busy scenes."""
OUTPUT_ENTRIES = ("samples", "sweeps", "maps", MARKER, *VERSIONS)
"""Top-level names this generator may write, and the only ones it ever removes."""


class OutputFolderError(RuntimeError):
    """The output folder cannot be used without risking files that are not ours."""


def check_output(out: Path) -> bool:
    """Whether `out` holds a previous synth output (True) or is new or empty (False).

    Raises OutputFolderError for anything else: a file, or a non-empty folder without the marker.
    """
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    marker = out / MARKER
    if not marker.is_file() or _marker_generator(marker) != "mvm-synth":
        raise OutputFolderError(
            f"--out {out} is not empty and is not an mvm-synth output (no {MARKER}); "
            "refusing to write there. Choose an empty or new folder."
        )
    return True


def prepare_output(out: Path) -> None:
    """Make `out` an empty place for a dataroot: create it, or clear a previous synth output.

    A previous output (it holds the marker) loses exactly the entries this generator writes;
    anything else in the folder is left alone. Any other non-empty folder is refused, and so is a
    symlink or a file at `out` (mvm.atomic.OutputError).
    """
    ensure_dir(out)  # before clearing anything: never through a symlink
    if check_output(out):
        for name in OUTPUT_ENTRIES:
            entry = out / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()


def _marker_generator(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        return None


def _write_json(path: Path, value) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def generate(
    out,
    *,
    version: str = "v1.0-mini",
    scenes: int = 10,
    frames_per_scene: int = 240,
    width: int = 1600,
    seed: int = 0,
    drop_rate: float = DEFAULT_DROP_RATE,
    traffic: float = DEFAULT_TRAFFIC,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a synthetic nuScenes-format dataroot that `NuScenes(version, out)` loads; return its path.

    out: dataroot folder; must be new, empty, or a previous mvm-synth output (replaced).
    version: v1.0-mini (scenes from mini_train/mini_val, at most 10) or v1.0-trainval (scenes
        from mvm.train/val). About 30% of the scenes carry val names (at least one from two scenes
        on), the first names of the sorted split lists, independent of the seed.
    scenes: number of scenes (one log each).
    frames_per_scene: CAM_FRONT frames per scene (real nuScenes: about 240 in 20 s).
    width: image width, a multiple of 32; height = width · 9/16 (1600 -> 900).
    seed: everything random derives from (seed, scene name); same arguments, same bytes.
    drop_rate: chance that a CAM_FRONT non-keyframe is dropped (leaving an interval >= 150 ms).
    traffic: how many other road users (mvm.synth.traffic), >= 0: 0 none, 1 a realistic mix.
    progress: called with 1 after each rendered CAM_FRONT frame.

    Raises ValueError on invalid numbers and OutputFolderError for an unusable `out`.
    """
    out = Path(out)
    names = scene_names(version, scenes)
    camera = Camera.cam_front(width)
    if frames_per_scene < 1:
        raise ValueError(f"frames_per_scene must be >= 1, got {frames_per_scene}")
    if not 0.0 <= drop_rate <= 0.5:
        raise ValueError(f"drop_rate must be in [0, 0.5], got {drop_rate}")
    if not traffic >= 0.0:
        raise ValueError(f"traffic must be >= 0, got {traffic}")
    prepare_output(out)
    arguments = {
        "version": version,
        "scenes": scenes,
        "frames_per_scene": frames_per_scene,
        "width": width,
        "seed": seed,
        "drop_rate": drop_rate,
        "traffic": traffic,
    }
    _write_json(out / MARKER, {"generator": "mvm-synth", "complete": False, "arguments": arguments})
    builder = TableBuilder(version, seed)
    for name, split in names:
        plan = plan_scene(name, split, frames_per_scene, drop_rate, seed, traffic)
        camera_records, lidar_records = builder.add_scene(plan, camera)
        world = _build_world(plan, seed)
        _render_scene(out, world, plan, camera_records, camera, progress)
        counts = _cast_lidar(out, world, plan, lidar_records, seed)
        builder.set_lidar_counts(
            {
                builder.annotation_token(plan.name, object_id, tick): n
                for (object_id, tick), n in counts.items()
            }
        )
    tables = builder.finish()
    _write_placeholders(out, tables)
    ensure_dir(out / version)
    for table_name, records in tables.items():
        _write_json(out / version / f"{table_name}.json", records)
    _write_json(out / MARKER, {"generator": "mvm-synth", "complete": True, "arguments": arguments})
    return out


def _build_world(plan: ScenePlan, seed: int) -> World:
    rng = rng_for(seed, plan.name, "world")
    builder = build_lot_world if plan.layout == "lot" else build_world
    return builder(plan.grid, plan.trajectory.xy, plan.night, int(rng.integers(0, 2**62)), rng)


def _render_scene(
    out: Path,
    world: World,
    plan: ScenePlan,
    records: list[dict],
    camera: Camera,
    progress: Callable[[int], None] | None,
) -> None:
    renderer = Renderer(camera, world, plan.night)
    for record in records:
        # Render from the pose exactly as written to ego_pose.
        translation = np.array(record["ego_translation"])
        yaw = float(yaw_from_quaternion(np.array(record["ego_rotation"])))
        seconds = float(plan.seconds(np.array([record["timestamp"]]))[0])
        image = renderer.render(translation[:2], yaw, plan.traffic.boxes_at(seconds), plan.traffic.colors)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        write_atomic(out / record["filename"], buffer.getvalue())
        if progress is not None:
            progress(1)


def _cast_lidar(
    out: Path, world: World, plan: ScenePlan, records: list[dict], seed: int
) -> dict[tuple[str, int], int]:
    """Write the keyframe LIDAR_TOP point clouds of one scene: little-endian float32 x y z
    intensity ring per point, in the sensor frame, from the ego pose written to ego_pose, with the
    scene's traffic at the sweep's time. Returns (object id, lidar tick) -> points inside its box
    (the annotations' num_lidar_pts)."""
    counts = {}
    for record in records:
        if not record["is_key_frame"]:
            continue
        translation, rotation = lidar_pose(record["ego_translation"], record["ego_rotation"])
        seconds = float(plan.seconds(np.array([record["timestamp"]]))[0])
        tick = (record["timestamp"] - plan.start_us) // TICK_US
        rng = rng_for(seed, plan.name, "lidar", str(tick))
        boxes = plan.traffic.boxes_at(seconds)
        points = cast_sweep(world, boxes, translation, rotation, rng)
        write_atomic(out / record["filename"], points.astype("<f4").tobytes())
        in_global = points[:, :3].astype(np.float64) @ quaternion_matrix(rotation).T + translation
        inside = points_in_boxes(in_global, boxes)
        counts |= {
            (object_id, tick): int(n)
            for object_id, n in zip(plan.traffic.ids_at(seconds), inside, strict=True)
        }
    return counts


def _write_placeholders(out: Path, tables: dict[str, list[dict]]) -> None:
    """Empty point clouds for the non-keyframe lidar sweeps and a small blank mask per map."""
    for record in tables["sample_data"]:
        if record["fileformat"] == "pcd" and not record["is_key_frame"]:
            write_atomic(out / record["filename"], b"")
    for record in tables["map"]:
        with atomic_path(out / record["filename"]) as path:
            Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(path, format="PNG")
