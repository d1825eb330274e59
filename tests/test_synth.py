"""mvm-synth: the real devkit loads its dataroot, timing and poses are nuScenes-like, the images
show the ego motion written in ego_pose, output is deterministic, bad input is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from nuscenes.nuscenes import NuScenes
from nuscenes.utils import splits
from PIL import Image
from sklearn.model_selection import GroupKFold

from mvm.ego_motion import EGO_MOTION_CLASSES, clip_motion, ego_motion_label, yaw_from_quaternion
from mvm.probe.linear import fit_head, predict
from mvm.probe.stats import balanced_accuracy
from mvm.probe.tasks import make_task
from mvm.synth import generate
from mvm.synth.cli import main
from mvm.synth.dataroot import MARKER
from mvm.synth.plan import plan_scene
from mvm.synth.schedule import TICK_US, scene_names, sensor_times
from mvm.synth.trajectory import poses_at

WIDTH = 256
FRAMES = 120
DROP_RATE = 0.02


@pytest.fixture(scope="module")
def nusc(tmp_path_factory) -> NuScenes:
    root = generate(
        tmp_path_factory.mktemp("synth") / "nuscenes",
        scenes=3,
        frames_per_scene=FRAMES,
        width=WIDTH,
        seed=0,
        drop_rate=DROP_RATE,
    )
    return NuScenes("v1.0-mini", str(root), verbose=False)


def channel_chain(nusc: NuScenes, scene: dict, channel: str) -> list[dict]:
    """All sample_data of one channel in a scene, following prev/next from the first keyframe."""
    record = nusc.get("sample_data", nusc.get("sample", scene["first_sample_token"])["data"][channel])
    while record["prev"]:
        record = nusc.get("sample_data", record["prev"])
    chain = [record]
    while chain[-1]["next"]:
        chain.append(nusc.get("sample_data", chain[-1]["next"]))
    return chain


def camera_frames(nusc: NuScenes, scene: dict):
    """CAM_FRONT of a scene: timestamps (F,) µs, xy (F, 2), yaw (F,), grey images (F, H, W)."""
    chain = channel_chain(nusc, scene, "CAM_FRONT")
    poses = [nusc.get("ego_pose", r["ego_pose_token"]) for r in chain]
    timestamps = np.array([r["timestamp"] for r in chain])
    xy = np.array([p["translation"][:2] for p in poses])
    yaw = np.unwrap(yaw_from_quaternion(np.array([p["rotation"] for p in poses])))
    images = np.stack(
        [np.asarray(Image.open(nusc.get_sample_data_path(r["token"])).convert("L")) for r in chain]
    )
    return timestamps, xy, yaw, images.astype(np.float32)


def test_devkit_loads_consistent_tables(nusc):
    assert len(nusc.scene) == 3
    names = {s["name"] for s in nusc.scene}
    assert names <= set(splits.mini_train) | set(splits.mini_val)
    assert names & set(splits.mini_val), "a val scene among three"
    assert {r["channel"] for r in nusc.sample_data} == {"CAM_FRONT", "LIDAR_TOP"}
    for record in nusc.sample_data:
        assert record["ego_pose_token"] == record["token"]
        pose = nusc.get("ego_pose", record["token"])
        assert pose["timestamp"] == record["timestamp"] > 1.5e15  # µs since 1970
        assert pose["translation"][2] == 0.0
        assert np.isclose(np.linalg.norm(pose["rotation"]), 1.0)
        assert (Path(nusc.dataroot) / record["filename"]).is_file()
        folder = "samples" if record["is_key_frame"] else "sweeps"
        assert record["filename"].startswith(f"{folder}/{record['channel']}/")
    for scene in nusc.scene:
        log = nusc.get("log", scene["log_token"])
        assert log["location"] in {
            "singapore-onenorth",
            "singapore-hollandvillage",
            "singapore-queenstown",
            "boston-seaport",
        }
        for record in channel_chain(nusc, scene, "CAM_FRONT"):
            assert Path(record["filename"]).name.startswith(
                f"{log['logfile']}__CAM_FRONT__{record['timestamp']}"
            )
    for record in nusc.map:
        assert (Path(nusc.dataroot) / record["filename"]).is_file()


def test_cam_front_intrinsics_and_image_size(nusc):
    calibration = next(c for c in nusc.calibrated_sensor if c["camera_intrinsic"])
    intrinsic = np.array(calibration["camera_intrinsic"])
    scale = WIDTH / 1600
    np.testing.assert_allclose(
        intrinsic[[0, 1, 0, 1], [0, 1, 2, 2]], np.array([1266.4, 1266.4, 816.3, 491.5]) * scale, rtol=1e-3
    )
    assert 1.4 < calibration["translation"][2] < 1.6
    record = next(r for r in nusc.sample_data if r["channel"] == "CAM_FRONT")
    with Image.open(nusc.get_sample_data_path(record["token"])) as image:
        assert image.size == (record["width"], record["height"]) == (WIDTH, WIDTH * 9 // 16)


def test_timing_like_real_nuscenes(nusc):
    drops = 0
    for scene in nusc.scene:
        chain = channel_chain(nusc, scene, "CAM_FRONT")
        assert len(chain) == FRAMES
        timestamps = np.array([r["timestamp"] for r in chain])
        intervals_ms = np.diff(timestamps) / 1000
        regular = np.isin(intervals_ms, [50, 100])
        assert np.all(regular | (intervals_ms >= 150)), "only 50/100 ms, or a drop of >= 150 ms"
        drops += int((~regular).sum())
        assert len(set(timestamps % TICK_US)) == 1, "one sub-50 ms offset per log"
        # Keyframes at 2 Hz; a non-keyframe belongs to the next sample in time.
        keyframes = [r for r in chain if r["is_key_frame"]]
        assert chain[-1]["is_key_frame"]
        assert set(np.diff([k["timestamp"] for k in keyframes]).tolist()) == {500_000}
        assert len(keyframes) == scene["nbr_samples"]
        key_times = np.array([k["timestamp"] for k in keyframes])
        for record in chain:
            expected = keyframes[int(np.searchsorted(key_times, record["timestamp"]))]
            assert record["sample_token"] == expected["sample_token"]
        lidar = channel_chain(nusc, scene, "LIDAR_TOP")
        assert set(np.diff([r["timestamp"] for r in lidar]).tolist()) == {50_000}, "LIDAR_TOP at 20 Hz"
    assert drops >= 1, f"drop rate {DROP_RATE} over {3 * FRAMES} frames plants drops"


def test_schedule_without_drops_is_the_trigger_pattern():
    times = sensor_times(240, 0.0, np.random.default_rng(0))
    intervals_ms = np.diff(times.camera_ticks) * 50
    assert set(intervals_ms.tolist()) == {50, 100}
    assert abs(intervals_ms.mean() - 1000 / 12) < 1.0
    dropped = sensor_times(240, 0.2, np.random.default_rng(0))
    assert len(dropped.camera_ticks) == 240 and (np.diff(dropped.camera_ticks) * 50 >= 150).any()


def test_images_show_the_ego_motion(nusc):
    """Stopped frames are near-identical, moving ones are not, and the far scene content slides
    sideways by fx · Δyaw pixels in the direction of the turn (left turn: content moves right)."""
    fx = 1266.417203046554 * WIDTH / 1600
    stopped, moving, shift_errors = [], [], []
    for scene in nusc.scene:
        timestamps, xy, yaw, images = camera_frames(nusc, scene)
        seconds = np.diff(timestamps) / 1e6
        speed = np.linalg.norm(np.diff(xy, axis=0), axis=1) / seconds
        yaw_rate = np.diff(yaw) / seconds
        change = np.abs(np.diff(images, axis=0)).mean(axis=(1, 2))
        stopped += change[speed == 0].tolist()
        moving += change[speed > 3].tolist()
        horizon = int(491.5 * WIDTH / 1600)
        for i in np.flatnonzero(np.abs(yaw_rate) > 0.2)[::5]:
            expected = fx * (yaw[i + 1] - yaw[i])
            shift = sky_shift(images[i, : horizon - 5], images[i + 1, : horizon - 5], 816.3 * WIDTH / 1600)
            shift_errors.append(shift - expected)
    assert len(stopped) > 5 and max(stopped) < 0.5
    assert len(moving) > 5 and min(moving) > 0.8  # open lots show little texture at 3 m/s
    # Near objects add translation parallax and starry night skies match poorly: judge the bulk.
    shift_errors = np.array(shift_errors)
    assert len(shift_errors) >= 10
    assert abs(np.median(shift_errors)) <= 0.7
    assert np.mean(np.abs(shift_errors) <= 1.5) >= 0.8, shift_errors


def sky_shift(before: np.ndarray, after: np.ndarray, centre: float, search: int = 24) -> int:
    """Horizontal shift s (pixels) with after[:, x + s] ≈ before[:, x], by least squares over the
    middle third of the columns around `centre` (off-centre a pinhole rotation shifts content more)."""
    half = before.shape[1] // 6
    low, high = int(centre) - half, int(centre) + half
    errors = {
        s: np.mean((after[:, low + s : high + s] - before[:, low:high]) ** 2)
        for s in range(-search, search + 1)
    }
    return min(errors, key=errors.get)


def test_poses_follow_the_planned_maneuvers(nusc):
    """Inside the plan's left turns the yaw rate is positive, inside right turns negative, and
    the car stands still through its stops; night scenes are dark."""
    for scene in nusc.scene:
        plan = plan_scene(scene["name"], "", FRAMES, DROP_RATE, 0)
        timestamps, xy, yaw, images = camera_frames(nusc, scene)
        seconds = plan.seconds(timestamps)
        for maneuver in plan.maneuvers:
            # Frames well inside the stretch, so the frame intervals lie wholly within it.
            inside = np.flatnonzero(
                (seconds > maneuver.start_s + 0.15)
                & (seconds < maneuver.start_s + maneuver.duration_s - 0.15)
            )
            if len(inside) < 2:
                continue
            rate = np.diff(yaw[inside]) / np.diff(seconds[inside])
            if maneuver.kind == "left":
                assert np.all(rate > 0)
            elif maneuver.kind == "right":
                assert np.all(rate < 0)
            elif maneuver.kind == "stop":
                assert np.all(xy[inside] == xy[inside[0]])
            else:
                assert np.all(np.abs(rate) < 0.05)
        night = scene["description"].startswith("Night")
        assert (images.mean() < 60) == night, (scene["name"], images.mean())


def test_scene_names_split_about_thirty_percent_val():
    mini = scene_names("v1.0-mini", 10)
    assert sorted(n for n, s in mini if s == "val") == sorted(splits.mini_val)
    trainval = scene_names("v1.0-trainval", 20)
    val = [n for n, s in trainval if s == "val"]
    assert len(val) == 6 and set(val) <= set(splits.val)
    assert {n for n, s in trainval if s == "train"} <= set(splits.train)
    assert len({n for n, _ in scene_names("v1.0-trainval", 850)}) == 850
    with pytest.raises(ValueError):
        scene_names("v1.0-mini", 11)


def test_every_plan_has_all_motion_kinds_in_both_layouts():
    """Over a demo-sized set of plans, both layouts occur and clips of every ego-motion class
    come from both (8-frame clips, labelled as the probe labels them)."""
    kinds = {}
    for name, split in scene_names("v1.0-trainval", 16):
        plan = plan_scene(name, split, 160, DROP_RATE, 0)
        timestamps = plan.camera_timestamps(plan.times.camera_ticks)
        translation, rotation = poses_at(plan.trajectory, plan.seconds(timestamps))
        for start in range(0, len(timestamps) - 7, 8):
            clip = slice(start, start + 8)
            label = ego_motion_label(*clip_motion(timestamps[clip], translation[clip], rotation[clip]))
            kinds.setdefault(plan.layout, set()).add(label)
    assert kinds == {"streets": set(EGO_MOTION_CLASSES), "lot": set(EGO_MOTION_CLASSES)}


@pytest.mark.slow
def test_turn_direction_is_not_in_a_still_frame(tmp_path):
    """Left and right turns look alike in a single frame and differ in the motion.

    On a small trainval dataroot, 8-frame clips labelled left or right (mvm.ego_motion) are
    classified by a logistic regression (mvm.probe.linear.fit_head) in scene-grouped
    cross-validation: from grey thumbnails of the first frame (8x14 and 16x28) the balanced
    accuracy stays near chance; from a pixel motion feature (the horizontal image flow of each
    region, by least squares over the clip's frame differences) it is high.
    """
    root = generate(
        tmp_path / "lr", version="v1.0-trainval", scenes=10, frames_per_scene=120, width=128, seed=5
    )
    nusc = NuScenes("v1.0-trainval", str(root), verbose=False)
    statics, flows, labels, groups = [], [], [], []
    for scene in nusc.scene:
        chain = channel_chain(nusc, scene, "CAM_FRONT")
        poses = [nusc.get("ego_pose", r["ego_pose_token"]) for r in chain]
        timestamps = np.array([r["timestamp"] for r in chain])
        translation = np.array([p["translation"] for p in poses])
        rotation = np.array([p["rotation"] for p in poses])
        images = [Image.open(nusc.get_sample_data_path(r["token"])).convert("L") for r in chain]
        for start in range(0, len(chain) - 7, 4):
            clip = slice(start, start + 8)
            label = ego_motion_label(*clip_motion(timestamps[clip], translation[clip], rotation[clip]))
            if label not in ("left", "right"):
                continue
            first = images[start]
            statics.append(np.concatenate([thumbnail(first, 14, 8), thumbnail(first, 28, 16)]))
            flows.append(region_flow(np.stack([np.asarray(i, dtype=np.float32) for i in images[clip]])))
            labels.append(label)
            groups.append(scene["name"])
    labels, groups = np.array(labels), np.array(groups)
    assert min(np.sum(labels == "left"), np.sum(labels == "right")) >= 30
    static_score = grouped_score(np.array(statics), labels, groups)
    motion_score = grouped_score(np.array(flows), labels, groups)
    assert static_score < 0.65, static_score
    assert motion_score > 0.85, motion_score


def thumbnail(image: Image.Image, width: int, height: int) -> np.ndarray:
    """Grey box-filtered thumbnail, flattened: (height * width,) float."""
    return np.asarray(image.resize((width, height), Image.BOX), dtype=np.float64).ravel()


def region_flow(frames: np.ndarray, rows: int = 2, columns: int = 4) -> np.ndarray:
    """Horizontal image motion (pixels per frame, + = content moving right) of each region of a
    grid, least squares over all frame pairs: frames (T, H, W) grey -> (rows * columns,)."""
    gradient = np.gradient(frames, axis=2)[:-1]
    change = np.diff(frames, axis=0)
    height, width = frames.shape[1] // rows, frames.shape[2] // columns
    flow = []
    for r in range(rows):
        for c in range(columns):
            region = (slice(None), slice(r * height, (r + 1) * height), slice(c * width, (c + 1) * width))
            gx, gt = gradient[region], change[region]
            flow.append(-np.sum(gx * gt) / (np.sum(gx * gx) + 1e-6))
    return np.array(flow)


def grouped_score(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Balanced accuracy of mvm.probe.linear.fit_head's logistic regression in scene-grouped 5-fold CV."""
    task = make_task("ego-motion")
    predicted = np.empty(len(labels), dtype=labels.dtype)
    for train, test in GroupKFold(n_splits=5).split(features, labels, groups):
        head = fit_head(task, features[train], labels[train], groups[train])
        predicted[test] = predict(head, features[test])
    return balanced_accuracy(labels, predicted)


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_deterministic_bytes(tmp_path):
    arguments = {"version": "v1.0-trainval", "scenes": 2, "frames_per_scene": 20, "width": 192, "seed": 3}
    first = digest_tree(generate(tmp_path / "a", **arguments))
    second = digest_tree(generate(tmp_path / "b", **arguments))
    assert first == second
    other = digest_tree(generate(tmp_path / "c", **{**arguments, "seed": 4}))
    assert other != first


def test_cli_refuses_foreign_folder_and_replaces_its_own_output(tmp_path):
    runner = CliRunner()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = runner.invoke(
        main, ["--out", str(foreign), "--scenes", "1", "--frames-per-scene", "6", "--width", "64"]
    )
    assert result.exit_code == 1 and "not an mvm-synth output" in result.output
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "root"
    small = ["--out", str(out), "--frames-per-scene", "6", "--width", "64"]
    assert runner.invoke(main, [*small, "--scenes", "2"]).exit_code == 0
    (out / "user-notes.txt").write_text("not ours")
    result = runner.invoke(main, [*small, "--scenes", "1"])
    assert result.exit_code == 0, result.output
    nusc = NuScenes("v1.0-mini", str(out), verbose=False)
    assert len(nusc.scene) == 1
    on_disk = {str(p.relative_to(out)) for p in (out / "samples").rglob("*") if p.is_file()}
    on_disk |= {str(p.relative_to(out)) for p in (out / "sweeps").rglob("*") if p.is_file()}
    assert on_disk == {r["filename"] for r in nusc.sample_data}, "no files left from the previous run"
    assert (out / "user-notes.txt").read_text() == "not ours"
    assert (out / MARKER).is_file()


@pytest.mark.parametrize(
    "arguments",
    [
        ["--scenes", "0"],
        ["--width", "-32"],
        ["--width", "100"],
        ["--frames-per-scene", "0"],
        ["--scenes", "11"],
        ["--version", "v1.0-test"],
        ["--drop-rate", "0.9"],
    ],
)
def test_cli_usage_errors(tmp_path, arguments):
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "x"), *arguments])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "x").exists()


def test_cli_help_documents_options_and_exit_codes():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--out",
        "--version",
        "--scenes",
        "--frames-per-scene",
        "--width",
        "--seed",
        "--drop-rate",
    ):
        assert option in result.output
    assert "Exit codes" in result.output
