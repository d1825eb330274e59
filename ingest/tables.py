"""nuScenes tables through the real devkit -> one light, picklable job per scene.

Only the main process loads the devkit; workers get SceneJobs (CAM_FRONT records and ego poses of
one scene) and never touch the tables. No file of another channel is ever named in a job.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from nuscenes.nuscenes import NuScenes

from mvm.ingest.chain import Reject, walk_chain
from mvm.ingest.names import UnsafeNameError, check_filename, check_token, scene_names

CHANNEL = "CAM_FRONT"


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
        frames = []
        for record in walked.records:
            try:
                token, filename = check_token("sample_data", record), check_filename(record)
            except UnsafeNameError as error:
                raise TablesError(str(error)) from None
            pose = self.nusc.get("ego_pose", record["ego_pose_token"])
            frames.append(
                {
                    "token": token,
                    "timestamp": int(record["timestamp"]),
                    "filename": filename,
                    "width": int(record["width"]),
                    "height": int(record["height"]),
                    "ego_translation": [float(value) for value in pose["translation"]],
                    "ego_rotation": [float(value) for value in pose["rotation"]],
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
        )
