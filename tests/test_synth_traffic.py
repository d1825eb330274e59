"""mvm-synth's other road users: the real devkit reads their annotations (boxes at keyframes and
between them, velocities), nothing overlaps, the density option works, output is deterministic,
and the camera shows them."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from nuscenes.nuscenes import NuScenes
from pyquaternion import Quaternion
from shapely.geometry import Polygon

from mvm.ego_motion import yaw_from_quaternion
from mvm.synth import generate
from mvm.synth.camera import Camera
from mvm.synth.cli import main
from mvm.synth.dataroot import MARKER
from mvm.synth.plan import plan_scene
from mvm.synth.render import Renderer
from mvm.synth.schedule import rng_for
from mvm.synth.traffic import EGO_CENTRE_M, EGO_LENGTH_M, EGO_WIDTH_M, overlaps
from mvm.synth.world import build_world

VERSION = "v1.0-trainval"
ARGUMENTS = {
    "version": VERSION,
    "scenes": 3,
    "frames_per_scene": 40,
    "width": 160,
    "seed": 1,
    "drop_rate": 0.02,
}
TRAFFIC = 2.0
"""Busy: seed 1's first three scenes are two street scenes with moving vehicles and a lot."""


@pytest.fixture(scope="module")
def nusc(tmp_path_factory) -> NuScenes:
    root = generate(tmp_path_factory.mktemp("traffic") / "nuscenes", traffic=TRAFFIC, **ARGUMENTS)
    return NuScenes(VERSION, str(root), verbose=False)


def plan_of(nusc: NuScenes, sample_token: str):
    """The plan of a sample's scene, as generate drew it."""
    return planned(nusc.get("scene", nusc.get("sample", sample_token)["scene_token"])["name"])


@functools.cache
def planned(name: str):
    return plan_scene(name, "", ARGUMENTS["frames_per_scene"], ARGUMENTS["drop_rate"], 1, TRAFFIC)


def attribute(nusc: NuScenes, annotation: dict) -> str:
    return nusc.get("attribute", annotation["attribute_tokens"][0])["name"]


def footprint(centre, width: float, length: float, yaw: float) -> Polygon:
    """Ground rectangle of a box as a shapely polygon."""
    c, s = np.cos(yaw), np.sin(yaw)
    corners = [(a * length / 2, b * width / 2) for a, b in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
    return Polygon([(centre[0] + c * x - s * y, centre[1] + s * x + c * y) for x, y in corners])


def test_keyframe_boxes_of_moving_vehicles(nusc):
    """get_boxes at keyframes returns the annotated boxes: the plan's boxes at that time, within
    50 m of the ego, moving vehicles among them, and every instance's chain is consistent."""
    assert {s["name"] for s in nusc.scene} and len(nusc.sample_annotation) > 100
    moving_boxes = 0
    for sample in nusc.sample:
        token = sample["data"]["CAM_FRONT"]
        boxes = nusc.get_boxes(token)
        assert len(boxes) == len(sample["anns"])
        plan = plan_of(nusc, sample["token"])
        seconds = float(plan.seconds(np.array([sample["timestamp"]]))[0])
        rows = plan.traffic.boxes_at(seconds)
        ego = nusc.get("ego_pose", sample["data"]["LIDAR_TOP"])["translation"]
        for box in boxes:
            annotation = nusc.get("sample_annotation", box.token)
            index = int(np.argmin(np.linalg.norm(rows[:, :3] - box.center, axis=1)))
            assert np.allclose(rows[index, :3], box.center, atol=1e-5)
            assert np.allclose(rows[index, 3:6], box.wlh)
            assert abs(np.angle(np.exp(1j * (box.orientation.yaw_pitch_roll[0] - rows[index, 6])))) < 1e-6
            assert (box.name, attribute(nusc, annotation)) == (
                plan.traffic.categories[index],
                plan.traffic.attributes[index],
            )
            assert np.hypot(box.center[0] - ego[0], box.center[1] - ego[1]) <= 50.0
            moving_boxes += attribute(nusc, annotation) == "vehicle.moving"
    assert moving_boxes > 20
    for instance in nusc.instance:
        chain = [nusc.get("sample_annotation", instance["first_annotation_token"])]
        while chain[-1]["next"]:
            chain.append(nusc.get("sample_annotation", chain[-1]["next"]))
        assert len(chain) == instance["nbr_annotations"]
        assert chain[-1]["token"] == instance["last_annotation_token"]


def test_boxes_interpolated_between_keyframes(nusc):
    """At a non-keyframe CAM_FRONT frame the devkit interpolates the boxes: for objects annotated
    at both neighbouring keyframes that is where the plan has them at the frame's time."""
    checked = 0
    for record in nusc.sample_data:
        if record["channel"] != "CAM_FRONT" or record["is_key_frame"]:
            continue
        sample = nusc.get("sample", record["sample_token"])
        if not sample["prev"]:
            continue
        plan = plan_of(nusc, sample["token"])
        rows = plan.traffic.boxes_at(float(plan.seconds(np.array([record["timestamp"]]))[0]))
        previous = {
            nusc.get("sample_annotation", a)["instance_token"]
            for a in nusc.get("sample", sample["prev"])["anns"]
        }
        for box in nusc.get_boxes(record["token"]):
            if nusc.get("sample_annotation", box.token)["instance_token"] in previous:
                assert np.min(np.linalg.norm(rows[:, :3] - box.center, axis=1)) < 1e-4
                checked += 1
    assert checked > 100


def test_box_velocity_is_speed_along_heading(nusc):
    """box_velocity of a moving vehicle is its planned speed along its heading; parked ones stand."""
    moving, parked = 0, 0
    for annotation in nusc.sample_annotation:
        if not (annotation["prev"] and annotation["next"]):
            continue
        velocity = nusc.box_velocity(annotation["token"])[:2]
        yaw = Quaternion(annotation["rotation"]).yaw_pitch_roll[0]
        heading = np.array([np.cos(yaw), np.sin(yaw)])
        plan = plan_of(nusc, annotation["sample_token"])
        speeds = np.linalg.norm(plan.traffic.velocity, axis=1)
        if attribute(nusc, annotation) == "vehicle.moving":
            assert abs(velocity @ heading - np.linalg.norm(velocity)) < 1e-3
            assert np.min(np.abs(speeds - np.linalg.norm(velocity))) < 1e-3
            assert 5.0 < np.linalg.norm(velocity) < 13.0
            moving += 1
        elif attribute(nusc, annotation) == "vehicle.parked":
            assert np.linalg.norm(velocity) < 1e-4
            parked += 1
    assert moving > 20 and parked > 20


def test_nothing_overlaps_another_or_the_ego(nusc):
    """At every keyframe no two annotated boxes share ground (shapely polygons) and none touches
    the ego car's box."""
    for sample in nusc.sample:
        ego = nusc.get("ego_pose", sample["data"]["LIDAR_TOP"])
        yaw = float(yaw_from_quaternion(np.array(ego["rotation"])))
        centre = np.array(ego["translation"][:2]) + EGO_CENTRE_M * np.array([np.cos(yaw), np.sin(yaw)])
        shapes = [footprint(centre, EGO_WIDTH_M, EGO_LENGTH_M, yaw)]
        for token in sample["anns"]:
            annotation = nusc.get("sample_annotation", token)
            width, length, _ = annotation["size"]
            shapes.append(
                footprint(
                    annotation["translation"],
                    width,
                    length,
                    Quaternion(annotation["rotation"]).yaw_pitch_roll[0],
                )
            )
        for i, first in enumerate(shapes):
            for second in shapes[i + 1 :]:
                assert first.intersection(second).area == 0.0


def test_overlap_check_finds_overlaps():
    """The separating-axis check agrees with shapely on random rectangle pairs, overlapping or not."""
    rng = np.random.default_rng(0)
    a = np.concatenate(
        [rng.uniform(-3, 3, (400, 2)), rng.uniform(0.5, 5, (400, 2)), rng.uniform(-4, 4, (400, 1))], 1
    )
    b = np.concatenate(
        [rng.uniform(-3, 3, (400, 2)), rng.uniform(0.5, 5, (400, 2)), rng.uniform(-4, 4, (400, 1))], 1
    )
    found = overlaps(a, b)
    truth = [footprint(p[:2], *p[2:]).intersects(footprint(q[:2], *q[2:])) for p, q in zip(a, b, strict=True)]
    assert 50 < found.sum() < 350
    assert found.tolist() == truth


def test_no_traffic_and_determinism(tmp_path):
    """--traffic 0 writes empty annotation tables; the same arguments write the same table bytes;
    the marker records the density."""
    small = {**ARGUMENTS, "scenes": 2, "frames_per_scene": 24}
    empty = generate(tmp_path / "empty", traffic=0.0, **small)
    for table in ("instance", "sample_annotation"):
        assert json.loads((empty / VERSION / f"{table}.json").read_text()) == []
    result = CliRunner().invoke(
        main,
        ["--out", str(tmp_path / "b"), "--version", VERSION, "--scenes", "2", "--frames-per-scene", "24"]
        + ["--width", "160", "--seed", "1", "--drop-rate", "0.02", "--traffic", "1.5"],
    )
    assert result.exit_code == 0, result.output
    first = generate(tmp_path / "a", traffic=1.5, **small)
    assert json.loads((first / MARKER).read_text())["arguments"]["traffic"] == 1.5
    tables = sorted(p.name for p in (first / VERSION).iterdir())
    assert json.loads((first / VERSION / "sample_annotation.json").read_text())
    for name in tables:
        assert (first / VERSION / name).read_bytes() == (tmp_path / "b" / VERSION / name).read_bytes()
    assert (first / MARKER).read_bytes() == (tmp_path / "b" / MARKER).read_bytes()
    assert "--traffic" in CliRunner().invoke(main, ["--help"]).output


def test_vehicle_ahead_changes_its_pixels():
    """A car 12 m ahead of the camera changes the image where its box projects and nowhere else."""
    plan = plan_scene("scene-0001", "train", 24, 0.0, 1, 0.0)
    assert plan.layout == "streets"
    camera = Camera.cam_front(160)
    world = build_world(plan.grid, plan.trajectory.xy, plan.night, 7, rng_for(1, "test"))
    renderer = Renderer(camera, world, plan.night)
    xy, yaw = plan.trajectory.xy[0], float(plan.trajectory.yaw[0])
    ahead = xy + 12.0 * np.array([np.cos(yaw), np.sin(yaw)])
    box = np.array([[ahead[0], ahead[1], 0.85, 1.9, 4.6, 1.7, yaw]])
    empty = renderer.render(xy, yaw).astype(int)
    with_car = renderer.render(xy, yaw, box, np.array([[200.0, 20.0, 20.0]])).astype(int)
    centre = camera.project(camera.world_to_camera(np.array([ahead[0], ahead[1], 0.85]), xy, yaw))
    column, row = int(centre[0]), int(centre[1])
    assert np.abs(with_car[row, column] - empty[row, column]).sum() > 60
    changed = np.abs(with_car - empty).sum(axis=2) > 0
    # A 1.9 m wide car at ~10 m from the camera spans about fx * 1.9 / 10 = 24 px.
    rows, columns = np.nonzero(changed)
    assert 10 < columns.max() - columns.min() < 40 and abs(columns.mean() - column) < 4
    assert not changed[: row - 20].any() and not changed[row + 20 :].any()
