"""The 13 nuScenes tables of a synthetic dataroot, as lists of JSON-ready records.

Record fields follow the devkit's schema (docs/schema_nuscenes.md). Tokens are md5 digests of
(seed, version, what the record is), so they are stable across runs and unique per dataroot.
The other road users (mvm.synth.traffic) are annotated as nuScenes does: at every keyframe one
`sample_annotation` per object whose centre is within ANNOTATION_RANGE_M of the ego (box
centre, size, yaw, attribute; prev/next through the object's annotations), one `instance` per
annotated object. `num_lidar_pts` is 0 until the lidar writer counts the points in each box
(`TableBuilder.set_lidar_counts`); `num_radar_pts` is 0 (no radar); the visibility is not
computed (every annotation says v80-100). The category, attribute and visibility tables hold
nuScenes' usual vocabulary, and the map masks are small placeholders.
"""

from __future__ import annotations

import numpy as np

from mvm.synth.camera import (
    CAM_FRONT_ROTATION,
    CAM_FRONT_TRANSLATION,
    LIDAR_TOP_ROTATION,
    LIDAR_TOP_TRANSLATION,
    Camera,
)
from mvm.synth.plan import ScenePlan
from mvm.synth.schedule import next_sample_index, token
from mvm.synth.trajectory import poses_at, yaw_quaternion

CHANNELS = {"CAM_FRONT": "camera", "LIDAR_TOP": "lidar"}
"""Channels written, with their modality. Keyframe LIDAR_TOP files hold ray-cast point clouds
(mvm.synth.lidar); the non-keyframe sweeps are empty placeholders."""
CATEGORIES = (
    "human.pedestrian.adult",
    "vehicle.bicycle",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.motorcycle",
    "vehicle.truck",
    "movable_object.barrier",
    "movable_object.trafficcone",
)
ATTRIBUTES = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "pedestrian.moving",
    "pedestrian.standing",
)
VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
ANNOTATION_RANGE_M = 50.0
"""Objects whose centre is this near the ego pose (on the ground) at a keyframe are annotated."""


class TableBuilder:
    """Accumulates the records of all scenes of one dataroot."""

    def __init__(self, version: str, seed: int):
        self.version, self.seed = version, seed
        self.tables: dict[str, list[dict]] = {
            "category": [
                {"token": self.token("category", n), "name": n, "description": n.replace(".", " ")}
                for n in CATEGORIES
            ],
            "attribute": [
                {"token": self.token("attribute", n), "name": n, "description": n.replace(".", " ")}
                for n in ATTRIBUTES
            ],
            "visibility": [
                {"token": t, "level": level, "description": f"visibility of whole object is {level[1:]}%"}
                for t, level in VISIBILITY
            ],
            "sensor": [
                {"token": self.token("sensor", ch), "channel": ch, "modality": modality}
                for ch, modality in CHANNELS.items()
            ],
        }
        filled_per_scene = (
            "instance",
            "sample_annotation",
            "calibrated_sensor",
            "ego_pose",
            "log",
            "scene",
            "sample",
            "sample_data",
            "map",
        )
        self.tables.update({name: [] for name in filled_per_scene})
        self.logs_by_location: dict[str, list[str]] = {}

    def token(self, *parts: object) -> str:
        return token(self.seed, self.version, *parts)

    def map_filename(self, location: str) -> str:
        """Where the map mask PNG of a location goes, relative to the dataroot."""
        return f"maps/{self.token('map', location)}.png"

    def add_scene(self, plan: ScenePlan, camera: Camera) -> tuple[list[dict], list[dict]]:
        """Add one scene's records; returns its CAM_FRONT and its LIDAR_TOP sample_data records,
        each in time order (with `ego_translation`/`ego_rotation`, the ego pose at the record's
        timestamp that the renderer and the lidar caster use, not part of the table)."""
        log_token = self.token("log", plan.name)
        self.tables["log"].append(
            {
                "token": log_token,
                "logfile": plan.logfile,
                "vehicle": plan.vehicle,
                "date_captured": plan.date_captured,
                "location": plan.location,
            }
        )
        self.logs_by_location.setdefault(plan.location, []).append(log_token)
        sample_tokens = self._samples(plan)
        self._annotations(plan, sample_tokens)
        camera_records = self._channel(plan, "CAM_FRONT", plan.times.camera_ticks, sample_tokens, camera)
        lidar_records = self._channel(plan, "LIDAR_TOP", plan.times.lidar_ticks, sample_tokens, camera)
        self.tables["scene"].append(
            {
                "token": self.token("scene", plan.name),
                "name": plan.name,
                "description": plan.description,
                "log_token": log_token,
                "nbr_samples": len(sample_tokens),
                "first_sample_token": sample_tokens[0],
                "last_sample_token": sample_tokens[-1],
            }
        )
        return camera_records, lidar_records

    def _samples(self, plan: ScenePlan) -> list[str]:
        ticks = plan.times.sample_ticks
        tokens = [self.token("sample", plan.name, int(t)) for t in ticks]
        for index, timestamp in enumerate(plan.lidar_timestamps(ticks)):
            self.tables["sample"].append(
                {
                    "token": tokens[index],
                    "timestamp": int(timestamp),
                    "scene_token": self.token("scene", plan.name),
                    "prev": tokens[index - 1] if index > 0 else "",
                    "next": tokens[index + 1] if index + 1 < len(tokens) else "",
                }
            )
        return tokens

    def _annotations(self, plan: ScenePlan, sample_tokens: list[str]) -> None:
        """sample_annotation records of the objects near the ego at each keyframe, linked per
        object, and one instance record per annotated object."""
        ticks = plan.times.sample_ticks
        seconds = plan.seconds(plan.lidar_timestamps(ticks))
        ego, _ = poses_at(plan.trajectory, seconds)
        traffic = plan.traffic
        by_object: dict[str, list[dict]] = {}
        for sample_token, tick, time_s, ego_xyz in zip(
            sample_tokens, ticks.tolist(), seconds, ego, strict=True
        ):
            boxes, ids = traffic.boxes_at(float(time_s)), traffic.ids_at(float(time_s))
            rotations = np.round(yaw_quaternion(boxes[:, 6]), 12) + 0.0
            near = np.hypot(boxes[:, 0] - ego_xyz[0], boxes[:, 1] - ego_xyz[1]) <= ANNOTATION_RANGE_M
            for index in np.flatnonzero(near).tolist():
                object_id = ids[index]
                by_object.setdefault(object_id, []).append(
                    {
                        "token": self.annotation_token(plan.name, object_id, tick),
                        "sample_token": sample_token,
                        "instance_token": self.token("instance", plan.name, object_id),
                        "visibility_token": VISIBILITY[-1][0],
                        "attribute_tokens": [self.token("attribute", traffic.attributes[index])],
                        "translation": (np.round(boxes[index, :3], 6) + 0.0).tolist(),
                        "size": boxes[index, 3:6].tolist(),
                        "rotation": rotations[index].tolist(),
                        "prev": "",
                        "next": "",
                        "num_lidar_pts": 0,
                        "num_radar_pts": 0,
                    }
                )
        category_of = dict(zip(traffic.ids, traffic.categories, strict=True))
        for object_id, records in by_object.items():
            for before, after in zip(records, records[1:], strict=False):
                before["next"], after["prev"] = after["token"], before["token"]
            self.tables["sample_annotation"].extend(records)
            self.tables["instance"].append(
                {
                    "token": records[0]["instance_token"],
                    "category_token": self.token("category", category_of[object_id]),
                    "nbr_annotations": len(records),
                    "first_annotation_token": records[0]["token"],
                    "last_annotation_token": records[-1]["token"],
                }
            )

    def annotation_token(self, scene: str, object_id: str, tick: int) -> str:
        """The sample_annotation token of an object of `scene` at the keyframe of lidar tick `tick`."""
        return self.token("sample_annotation", scene, object_id, tick)

    def set_lidar_counts(self, counts: dict[str, int]) -> None:
        """The lidar hook: set num_lidar_pts of sample_annotation records (annotation token ->
        number of points of the keyframe's LIDAR_TOP sweep inside the box); others stay 0.
        Each record's box is its translation, size [w, l, h] and rotation (global frame)."""
        for record in self.tables["sample_annotation"]:
            if record["token"] in counts:
                record["num_lidar_pts"] = int(counts[record["token"]])

    def _channel(
        self, plan: ScenePlan, channel: str, ticks: np.ndarray, sample_tokens: list[str], camera: Camera
    ) -> list[dict]:
        is_camera = CHANNELS[channel] == "camera"
        calibration_token = self.token("calibrated_sensor", plan.name, channel)
        self.tables["calibrated_sensor"].append(
            {
                "token": calibration_token,
                "sensor_token": self.token("sensor", channel),
                "translation": list(CAM_FRONT_TRANSLATION if is_camera else LIDAR_TOP_TRANSLATION),
                "rotation": list(CAM_FRONT_ROTATION if is_camera else LIDAR_TOP_ROTATION),
                "camera_intrinsic": camera.intrinsic.tolist() if is_camera else [],
            }
        )
        timestamps = plan.camera_timestamps(ticks) if is_camera else plan.lidar_timestamps(ticks)
        translations, rotations = poses_at(plan.trajectory, plan.seconds(timestamps))
        sample_index = next_sample_index(ticks, plan.times.sample_ticks)
        is_key = np.isin(ticks, plan.times.sample_ticks)
        tokens = [self.token("sample_data", plan.name, channel, int(t)) for t in ticks]
        extension = "jpg" if is_camera else "pcd.bin"
        records = []
        for index, timestamp in enumerate(timestamps.tolist()):
            folder = "samples" if is_key[index] else "sweeps"
            record = {
                "token": tokens[index],
                "sample_token": sample_tokens[sample_index[index]],
                "ego_pose_token": tokens[index],
                "calibrated_sensor_token": calibration_token,
                "timestamp": timestamp,
                "fileformat": "jpg" if is_camera else "pcd",
                "is_key_frame": bool(is_key[index]),
                "height": camera.height if is_camera else 0,
                "width": camera.width if is_camera else 0,
                "filename": f"{folder}/{channel}/{plan.logfile}__{channel}__{timestamp}.{extension}",
                "prev": tokens[index - 1] if index > 0 else "",
                "next": tokens[index + 1] if index + 1 < len(tokens) else "",
            }
            pose = {
                "token": tokens[index],
                "timestamp": timestamp,
                "translation": translations[index].tolist(),
                "rotation": rotations[index].tolist(),
            }
            self.tables["sample_data"].append(record)
            self.tables["ego_pose"].append(pose)
            records.append(
                {**record, "ego_translation": pose["translation"], "ego_rotation": pose["rotation"]}
            )
        return records

    def finish(self) -> dict[str, list[dict]]:
        """All 13 tables, with one map record per location that has logs."""
        self.tables["map"] = [
            {
                "token": self.token("map", location),
                "category": "semantic_prior",
                "filename": self.map_filename(location),
                "log_tokens": log_tokens,
            }
            for location, log_tokens in sorted(self.logs_by_location.items())
        ]
        return self.tables
