"""nuScenes tables through the real devkit -> one light, picklable job per scene.

Only the main process loads the devkit; workers get SceneJobs (CAM_FRONT records and ego poses of
one scene, plus the LIDAR_TOP keyframes its depth targets read) and never touch the tables. No file
of another channel is ever named in a job.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nuscenes.nuscenes import NuScenes
from pyquaternion import Quaternion

from mvm.ingest.chain import Reject, walk_chain
from mvm.ingest.depth import Pose
from mvm.ingest.names import UnsafeNameError, check_filename, check_token, scene_names

CHANNEL = "CAM_FRONT"
LIDAR = "LIDAR_TOP"


class DatarootError(ValueError):
    """The dataroot or its version folder does not exist (a usage error)."""


class TablesError(ValueError):
    """The version folder exists but its tables cannot be loaded (a failure: the message names the file)."""


def _broken_table(table_root: Path, error: json.JSONDecodeError) -> str:
    """Name the table file whose JSON is invalid (only parsed again on this error path)."""
    for path in sorted(table_root.glob("*.json")):
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as found:
            return f"{path} is not valid JSON (line {found.lineno}, column {found.colno}: {found.msg})"
        except (OSError, UnicodeDecodeError) as found:
            return f"cannot read {path}: {found}"
    return f"a table in {table_root} is not valid JSON ({error})"


@dataclass(frozen=True)
class SceneJob:
    """Everything a worker needs to turn one scene into clips."""

    name: str
    """Scene name, e.g. `scene-0061`."""
    token: str
    """Scene token."""
    description: str
    """scene.description."""
    location: str
    """log.location."""
    dataroot: str
    """Absolute dataroot; frame files are `dataroot / frame["filename"]`."""
    frames: list[dict] = field(default_factory=list)
    """CAM_FRONT frames in walked-chain order: token, timestamp, filename, width, height (the image
    size the table records), ego_translation, ego_rotation."""
    breaks: frozenset[int] = frozenset()
    """Chain positions that start over after a broken link."""
    chain_rejects: list[Reject] = field(default_factory=list)
    """`broken_chain` rejects found while walking."""
    cameras: dict[str, dict] = field(default_factory=dict)
    """CAM_FRONT calibrated_sensor records by token: `pose` (a Pose, camera -> ego) and
    `intrinsic` (3x3 list)."""
    lidar_keyframes: list[dict] = field(default_factory=list)
    """The scene's LIDAR_TOP keyframes (sample['data']['LIDAR_TOP']) in time order: token, timestamp,
    filename, `sensor` (Pose, lidar -> ego) and `ego` (Pose, ego -> global at the lidar time)."""


def open_nuscenes(dataroot: str | Path, version: str) -> NuScenes:
    """Load the devkit tables, with a clear DatarootError when the folders are missing."""
    root = Path(dataroot)
    if not root.is_dir():
        raise DatarootError(f"dataroot {str(root)!r} does not exist or is not a folder")
    if not (root / version).is_dir():
        present = sorted(
            path.name for path in root.iterdir() if path.is_dir() and path.name.startswith("v1.0")
        )
        raise DatarootError(
            f"version folder {str(root / version)!r} does not exist; this dataroot has: {', '.join(present) or 'none'}"
        )
    try:
        return NuScenes(version=version, dataroot=str(root.resolve()), verbose=False)
    except json.JSONDecodeError as error:
        raise TablesError(_broken_table(root / version, error)) from None
    except UnicodeDecodeError as error:
        raise TablesError(f"a table in {root / version} is not UTF-8 text ({error})") from None
    except OSError as error:
        raise TablesError(f"cannot load the nuScenes tables: {error}") from None
    except Exception as error:  # the devkit indexes records with plain [] and asserts: any is a bad table
        raise TablesError(
            f"the nuScenes tables in {root / version} are inconsistent ({type(error).__name__}: {error})"
        ) from None


class SceneTables:
    """Per-scene access to a loaded NuScenes: scene names and SceneJobs."""

    def __init__(self, nusc: NuScenes):
        """Raises TablesError naming the record when a scene's name or token cannot be used."""
        self.nusc = nusc
        try:
            self.scenes = scene_names(nusc.scene)
        except UnsafeNameError as error:
            raise TablesError(f"{Path(nusc.dataroot) / nusc.version / 'scene.json'}: {error}") from None
        self._samples_by_scene: dict[str, list[dict]] = defaultdict(list)
        for sample in nusc.sample:
            self._samples_by_scene[sample["scene_token"]].append(sample)

    def _lookup(self, token: str) -> dict | None:
        try:
            return self.nusc.get("sample_data", token)
        except KeyError:
            return None

    def job(self, name: str) -> SceneJob:
        """Walk the CAM_FRONT chain of scene `name` (see mvm.ingest.chain.walk_chain).

        Raises TablesError naming the record when a frame's token or filename cannot be used (a
        filename outside the dataroot is never opened).
        """
        scene = self.scenes[name]
        samples = sorted(self._samples_by_scene[scene["token"]], key=lambda sample: sample["timestamp"])
        keyframes = [sample["data"][CHANNEL] for sample in samples if CHANNEL in sample["data"]]
        sample_scene = {sample["token"]: scene["token"] for sample in samples}

        def in_scene(record: dict) -> bool:
            return (
                record.get("channel") == CHANNEL
                and sample_scene.get(record["sample_token"]) == scene["token"]
            )

        walked = walk_chain(self._lookup, keyframes, in_scene)
        frames, cameras = [], {}
        for record in walked.records:
            try:
                token, filename = check_token("sample_data", record), check_filename(record)
            except UnsafeNameError as error:
                raise TablesError(str(error)) from None
            pose = self.nusc.get("ego_pose", record["ego_pose_token"])
            calibration = record["calibrated_sensor_token"]
            if calibration not in cameras:
                cameras[calibration] = self._camera(calibration)
            frames.append(
                {
                    "token": token,
                    "timestamp": int(record["timestamp"]),
                    "filename": filename,
                    "width": int(record["width"]),
                    "height": int(record["height"]),
                    "ego_translation": [float(value) for value in pose["translation"]],
                    "ego_rotation": [float(value) for value in pose["rotation"]],
                    "calibrated_sensor_token": calibration,
                }
            )
        log = self.nusc.get("log", scene["log_token"])
        return SceneJob(
            name=name,
            token=scene["token"],
            description=scene["description"],
            location=log["location"],
            dataroot=str(Path(self.nusc.dataroot).resolve()),
            frames=frames,
            breaks=walked.breaks,
            chain_rejects=walked.rejects,
            cameras=cameras,
            lidar_keyframes=[
                self._lidar(sample["data"][LIDAR]) for sample in samples if LIDAR in sample["data"]
            ],
        )

    def _pose(self, table: str, token: str) -> Pose:
        """The Pose of a calibrated_sensor or ego_pose record; TablesError naming it if malformed."""
        record = self.nusc.get(table, token)
        try:
            translation = tuple(float(value) for value in record["translation"])
            rotation = tuple(float(value) for value in record["rotation"])
            if (
                len(translation) != 3
                or len(rotation) != 4
                or not np.isfinite([*translation, *rotation]).all()
            ):
                raise ValueError("not 3 + 4 finite numbers")
            Quaternion(rotation)  # a zero quaternion cannot be a rotation
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
            raise TablesError(f"{table} record {token!r}: translation/rotation unusable ({error})") from None
        return Pose(translation, rotation)

    def _camera(self, token: str) -> dict:
        """A camera calibrated_sensor record as {pose, intrinsic}; TablesError naming it if malformed."""
        intrinsic = self.nusc.get("calibrated_sensor", token).get("camera_intrinsic")
        if np.shape(intrinsic) != (3, 3) or not np.isfinite(np.asarray(intrinsic, dtype=float)).all():
            raise TablesError(
                f"calibrated_sensor record {token!r}: camera_intrinsic is not a finite 3x3 matrix"
            )
        return {
            "pose": self._pose("calibrated_sensor", token),
            "intrinsic": [[float(v) for v in row] for row in intrinsic],
        }

    def _lidar(self, token: str) -> dict:
        """A LIDAR_TOP keyframe for SceneJob.lidar_keyframes, its token and filename checked."""
        record = self.nusc.get("sample_data", token)
        try:
            token, filename = check_token("sample_data", record), check_filename(record)
        except UnsafeNameError as error:
            raise TablesError(str(error)) from None
        return {
            "token": token,
            "timestamp": int(record["timestamp"]),
            "filename": filename,
            "sensor": self._pose("calibrated_sensor", record["calibrated_sensor_token"]),
            "ego": self._pose("ego_pose", record["ego_pose_token"]),
        }
