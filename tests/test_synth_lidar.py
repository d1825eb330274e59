"""mvm-synth's LIDAR_TOP: ray-cast geometry against closed forms, the devkit loads and projects
the written sweeps, output is deterministic and the camera images do not change with it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes, NuScenesExplorer
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion
from scipy.stats import spearmanr

import mvm.synth.dataroot as dataroot
from mvm.synth import generate
from mvm.synth.lidar import (
    AZIMUTH_STEPS,
    BEAM_ELEVATIONS,
    DROPOUT,
    RANGE_M,
    cast_sweep,
    lidar_pose,
    points_in_boxes,
)
from mvm.synth.plan import plan_scene
from mvm.synth.schedule import TICK_US, rng_for
from mvm.synth.trajectory import yaw_quaternion
from mvm.synth.world import World

HEIGHT = 1.84
SMALL = {"version": "v1.0-mini", "scenes": 2, "frames_per_scene": 24, "width": 64, "seed": 5}


def empty_world(road_quads=None, line_quads=None, crowns=None) -> World:
    """A World with nothing but the given ground quads (N, 4, 3) and crowns (O, 4)."""
    none = np.zeros((0, 4, 3))
    return World(
        texture=np.zeros(0, dtype=np.uint8),
        sky=np.zeros((1, 1), dtype=np.uint8),
        road_quads=none if road_quads is None else np.asarray(road_quads, dtype=float),
        line_quads=none if line_quads is None else np.asarray(line_quads, dtype=float),
        line_colors=np.zeros((0 if line_quads is None else len(line_quads), 3), dtype=np.uint8),
        face_quads=none,
        face_normals=np.zeros((0, 3)),
        face_colors=np.zeros((0, 3)),
        face_object=np.zeros(0, dtype=np.int64),
        object_centers=np.zeros((0, 3)),
        crowns=np.zeros((0, 4)) if crowns is None else np.asarray(crowns, dtype=float),
        crown_colors=np.zeros((0 if crowns is None else len(crowns), 3)),
    )


def level_pose(yaw: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """An untilted sensor HEIGHT above (5, -3): sensor axes = global axes turned by yaw."""
    return np.array([5.0, -3.0, HEIGHT]), yaw_quaternion(np.array([yaw]))[0]


def rectangle(x0, x1, y0, y1) -> np.ndarray:
    return np.array([[x0, y0, 0.0], [x1, y0, 0.0], [x1, y1, 0.0], [x0, y1, 0.0]])


def test_flat_ground_ranges_are_the_analytic_depth():
    translation, rotation = level_pose(0.7)
    points = cast_sweep(empty_world(), np.zeros((0, 7)), translation, rotation, np.random.default_rng(0))
    assert points.dtype == np.float32 and points.shape[1] == 5
    ring = points[:, 4].astype(int)
    assert np.array_equal(points[:, 4], ring)
    elevation = BEAM_ELEVATIONS[ring]
    assert (elevation < 0).all(), "nothing above the horizon to hit"
    distance = np.linalg.norm(points[:, :3].astype(np.float64), axis=1)
    np.testing.assert_allclose(distance, HEIGHT / np.sin(-elevation), rtol=1e-6)
    np.testing.assert_allclose(points[:, 2], -HEIGHT, atol=1e-5)
    # Every downward beam that meets the ground within range returns, less the dropouts.
    reaching = (HEIGHT / np.sin(-BEAM_ELEVATIONS[BEAM_ELEVATIONS < 0]) <= RANGE_M).sum()
    kept = len(points) / (reaching * AZIMUTH_STEPS)
    assert 1 - 2 * DROPOUT < kept < 1 - DROPOUT / 2


def test_tilted_sensor_ground_points_lie_on_the_ground():
    translation, rotation = lidar_pose([100.0, 50.0, 0.0], yaw_quaternion(np.array([-2.0]))[0])
    points = cast_sweep(empty_world(), np.zeros((0, 7)), translation, rotation, np.random.default_rng(1))
    sensor_to_global = Quaternion(rotation).rotation_matrix
    world_points = points[:, :3].astype(np.float64) @ sensor_to_global.T + translation
    assert len(points) > 20_000
    np.testing.assert_allclose(world_points[:, 2], 0.0, atol=1e-4)
    assert np.hypot(*(world_points[:, :2] - translation[:2]).T).max() <= RANGE_M


def test_box_and_crown_are_hit_at_their_distance():
    translation, rotation = level_pose(0.0)
    box = np.array([[translation[0] + 22.0, translation[1], 1.5, 2.0, 4.0, 3.0, 0.0]])  # near face at 20 m
    crown = [[translation[0] - 15.0, translation[1], HEIGHT, 2.0]]  # nearest point 13 m behind
    points = cast_sweep(empty_world(crowns=crown), box, translation, rotation, np.random.default_rng(2))
    x, y, z = points[:, :3].astype(np.float64).T
    ahead = (x > 0) & (np.abs(y) < 1.01) & (z > -HEIGHT + 0.01)
    assert ahead.sum() > 50
    np.testing.assert_allclose(x[ahead], 20.0, atol=1e-4)
    assert not ((x > 20.01) & (np.abs(y) < 0.9)).any(), "the box shadows what lies behind it"
    level = (points[:, 4] == np.argmin(np.abs(BEAM_ELEVATIONS))) & (x < 0) & (np.abs(y) < 0.05)
    assert level.any()
    np.testing.assert_allclose(-x[level], 13.0, atol=2e-3)
    world_points = points[:, :3].astype(np.float64) + translation
    assert points_in_boxes(world_points, box)[0] == ahead.sum()


def test_points_in_turned_boxes():
    rng = np.random.default_rng(3)
    points = rng.uniform(-10, 10, (5000, 3))
    boxes = np.array([[1.0, 2.0, 0.5, 2.0, 6.0, 3.0, np.pi / 4], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    along = (points[:, 0] - 1) * c + (points[:, 1] - 2) * s
    across = -(points[:, 0] - 1) * s + (points[:, 1] - 2) * c
    first = (np.abs(along) < 3) & (np.abs(across) < 1) & (np.abs(points[:, 2] - 0.5) < 1.5)
    second = (np.abs(points) < 0.5).all(axis=1)
    assert points_in_boxes(points, boxes, margin=0.0).tolist() == [first.sum(), second.sum()]
    assert points_in_boxes(points, np.zeros((0, 7))).shape == (0,)


def test_markings_are_brighter_than_road_and_road_darker_than_grass():
    translation, rotation = level_pose(0.0)
    road = [rectangle(-100, 100, -8, 2)]
    marking = [rectangle(-100, 100, -3.2, -2.8)]
    world = empty_world(road_quads=road, line_quads=marking)
    points = cast_sweep(world, np.zeros((0, 7)), translation, rotation, np.random.default_rng(4))
    y = points[:, 1] + translation[1]
    on_marking, on_road = np.abs(y + 3) < 0.15, (y > -7.5) & (y < 1.5) & (np.abs(y + 3) > 0.3)
    on_grass = (y > 2.5) | (y < -8.5)
    assert on_marking.sum() > 20 and on_road.sum() > 1000 and on_grass.sum() > 1000
    intensity = points[:, 3]
    assert np.median(intensity[on_marking]) > 3 * np.median(intensity[on_grass])
    assert np.median(intensity[on_grass]) > 2 * np.median(intensity[on_road])


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, NuScenes]:
    root = generate(tmp_path_factory.mktemp("lidar") / "nuscenes", **SMALL)
    return root, NuScenes(SMALL["version"], str(root), verbose=False)


def keyframe_lidar(nusc: NuScenes) -> list[dict]:
    return [r for r in nusc.sample_data if r["channel"] == "LIDAR_TOP" and r["is_key_frame"]]


def test_devkit_loads_the_sweeps_the_caster_gives(synth):
    root, nusc = synth
    records = keyframe_lidar(nusc)
    assert len(records) == sum(len(s["data"]) > 0 for s in nusc.sample)
    sweeps = [r for r in nusc.sample_data if r["channel"] == "LIDAR_TOP" and not r["is_key_frame"]]
    assert all(Path(nusc.get_sample_data_path(r["token"])).stat().st_size == 0 for r in sweeps)
    record = records[len(records) // 2]
    path = nusc.get_sample_data_path(record["token"])
    cloud = LidarPointCloud.from_file(path)
    raw = np.fromfile(path, dtype="<f4").reshape(-1, 5)
    assert cloud.points.shape == (4, len(raw)) and len(raw) > 10_000
    np.testing.assert_array_equal(cloud.points, raw[:, :4].T)
    # Cast again from the pose the devkit's tables give (composed with pyquaternion): same points.
    pose = nusc.get("ego_pose", record["ego_pose_token"])
    calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    ego = Quaternion(pose["rotation"])
    translation = np.array(pose["translation"]) + ego.rotate(calibration["translation"])
    rotation = (ego * Quaternion(calibration["rotation"])).elements
    scene = nusc.get("scene", nusc.get("sample", record["sample_token"])["scene_token"])
    plan = plan_scene(scene["name"], "", SMALL["frames_per_scene"], dataroot.DEFAULT_DROP_RATE, SMALL["seed"])
    world = dataroot._build_world(plan, SMALL["seed"])
    rng = rng_for(SMALL["seed"], plan.name, "lidar", str((record["timestamp"] - plan.start_us) // TICK_US))
    boxes = plan.traffic.boxes_at(float(plan.seconds(np.array([record["timestamp"]]))[0]))
    again = cast_sweep(world, boxes, translation, rotation, rng)
    np.testing.assert_allclose(again, raw, atol=1e-4)
    # In the global frame (the devkit's own transforms) the ground is at z = 0 and nothing below it.
    cloud.rotate(Quaternion(calibration["rotation"]).rotation_matrix)
    cloud.translate(np.array(calibration["translation"]))
    cloud.rotate(ego.rotation_matrix)
    cloud.translate(np.array(pose["translation"]))
    z = cloud.points[2]
    assert (z > -1e-3).all() and (np.abs(z) < 1e-3).mean() > 0.5


def test_keyframe_lidar_projects_into_cam_front(synth):
    _, nusc = synth
    explorer = NuScenesExplorer(nusc)
    for sample in nusc.sample[:: max(1, len(nusc.sample) // 6)]:
        pixels, depth, image = explorer.map_pointcloud_to_image(
            sample["data"]["LIDAR_TOP"], sample["data"]["CAM_FRONT"]
        )
        assert image.size == (SMALL["width"], SMALL["width"] * 9 // 16)
        assert pixels.shape[1] > 2000, "a fifth of the sweep lies in CAM_FRONT's view"
        # Below the horizon the ground dominates: the higher in the image, the farther.
        cy = nusc.get(
            "calibrated_sensor",
            nusc.get("sample_data", sample["data"]["CAM_FRONT"])["calibrated_sensor_token"],
        )["camera_intrinsic"][1][2]
        below = pixels[1] > cy + 3
        assert below.sum() > 1000
        assert spearmanr(pixels[1, below], depth[below]).statistic < -0.8


def digest(root: Path, pattern: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
    }


def test_same_seed_same_lidar_bytes_and_lidar_leaves_images_alone(synth, tmp_path, monkeypatch):
    root, _ = synth
    again = generate(tmp_path / "again", **SMALL)
    assert digest(again, "*.pcd.bin") == digest(root, "*.pcd.bin")
    # The same dataroot without casting any lidar has the same images and tables, but for the
    # annotations' num_lidar_pts.
    monkeypatch.setattr(dataroot, "_cast_lidar", lambda *arguments: {})
    without = generate(tmp_path / "without", **SMALL)
    assert digest(without, "*.jpg") == digest(root, "*.jpg") != {}
    tables = {
        name: value for name, value in digest(root, "*.json").items() if "sample_annotation" not in name
    }
    assert {name: value for name, value in digest(without, "*.json").items() if name in tables} == tables


def test_num_lidar_pts_agrees_with_the_devkits_points_in_box(synth):
    """Each annotation's num_lidar_pts against the devkit's own count: its keyframe sweep loaded with
    LidarPointCloud.from_file, its box from get_sample_data (sensor frame), geometry_utils.points_in_box."""
    root, nusc = synth
    checked = hit = 0
    for record in keyframe_lidar(nusc):
        points = LidarPointCloud.from_file(str(root / record["filename"])).points[:3]
        _, boxes, _ = nusc.get_sample_data(record["token"])
        for box in boxes:
            expected = nusc.get("sample_annotation", box.token)["num_lidar_pts"]
            inside = int(points_in_box(box, points).sum())
            # grown by at least the 2 cm margin mvm.synth.lidar.points_in_boxes allows on every side
            grown = int(points_in_box(box, points, wlh_factor=1 + 0.05 / min(box.wlh)).sum())
            # every hit lies on the box's surface: float32 storage puts some just outside it
            assert inside <= expected <= grown, (box.token, inside, expected, grown)
            checked += 1
            hit += expected > 0
    assert checked > 20 and hit > 5
