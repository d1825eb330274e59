"""Loader throughput: clips/s in one worker process for our shards and the alternatives.

Four ways to get the same T-frame clips at the training size, as uint8 (T, H, W, 3) RGB:
(a) our shards decoded by decord, (b) our shards decoded by PyAV (both through
`train.data.iter_clips`, the trainer's own reader), (c) the naive baseline a nuScenes user writes:
a torch `Dataset` that opens T full-size CAM_FRONT JPEGs through the devkit's paths and resizes
them, and (d) a folder of JPEGs pre-resized to the training size. Every loader reads the very clips
the shards hold (same scenes, same frame indices), so only the storage and decode path differ.

"Per worker" = one process, one torch thread, no DataLoader workers: a DataLoader with W workers
gets at most W times this on W free cores.
"""

from __future__ import annotations

import json
import statistics
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RESIZED_JPEG_QUALITY = 90
"""JPEG quality of the pre-resized folder (d): visually lossless, the usual choice for such caches."""


@dataclass(frozen=True)
class ClipRef:
    """Which source frames one shard clip holds."""

    key: str
    """The shard sample key."""
    scene: str
    """Scene name."""
    frame_indices: tuple[int, ...]
    """Positions in the scene's CAM_FRONT chain, T of them."""
    sample_data_tokens: tuple[str, ...]
    """CAM_FRONT sample_data tokens of the T frames."""


def shard_paths(shard_dir: Path) -> list[Path]:
    """The shard files of a finished ingest folder, in manifest order."""
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    return [shard_dir / shard["name"] for shard in manifest["shards"]]


def clip_refs(shard_dir: Path) -> list[ClipRef]:
    """Every clip of an ingest folder, from the samples' json metadata (no video decode)."""
    refs = []
    for path in shard_paths(shard_dir):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    refs.append(
                        ClipRef(
                            key=meta["key"],
                            scene=meta["scene"],
                            frame_indices=tuple(meta["frame_indices"]),
                            sample_data_tokens=tuple(meta["sample_data_tokens"]),
                        )
                    )
    return refs


class NaiveDevkitClips(torch.utils.data.Dataset):
    """Baseline (c): what a nuScenes user writes first.

    Each item opens T full-size CAM_FRONT JPEGs through the devkit's sample_data paths, decodes
    them at full size and resizes with PIL bilinear. Item: uint8 (T, H, W, 3) RGB.
    """

    def __init__(self, dataroot: Path, version: str, clips: list[ClipRef], size: tuple[int, int]):
        from nuscenes.nuscenes import NuScenes

        self.nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
        self.clips = clips
        self.height, self.width = size

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> np.ndarray:
        frames = []
        for token in self.clips[index].sample_data_tokens:
            image = Image.open(self.nusc.get_sample_data_path(token)).convert("RGB")
            frames.append(np.asarray(image.resize((self.width, self.height), Image.BILINEAR)))
        return np.stack(frames)


def resized_frame_path(root: Path, scene: str, frame_index: int) -> Path:
    """Where the pre-resized folder (d) keeps one frame."""
    return root / scene / f"{frame_index:06d}.jpg"


def write_resized_folder(
    root: Path,
    clips: list[ClipRef],
    source_path: Callable[[str], Path],
    resize: Callable[[Path], np.ndarray],
) -> Path:
    """Write every frame of `clips` not yet in `root`, resized by `resize(path) -> uint8 (H, W, 3)`, as JPEG.

    source_path maps a sample_data token to its JPEG. Each file is written under a temporary name
    and renamed, so an interrupted run leaves no truncated frame and a rerun only adds what is missing.
    """
    for clip in clips:
        for token, frame_index in zip(clip.sample_data_tokens, clip.frame_indices, strict=True):
            path = resized_frame_path(root, clip.scene, frame_index)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(".partial")
                Image.fromarray(resize(source_path(token))).save(
                    partial, format="JPEG", quality=RESIZED_JPEG_QUALITY
                )
                partial.rename(path)
    return root


class ResizedJpegClips(torch.utils.data.Dataset):
    """Alternative (d): T JPEGs per clip already at the training size. Item: uint8 (T, H, W, 3)."""

    def __init__(self, root: Path, clips: list[ClipRef]):
        self.root = root
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> np.ndarray:
        clip = self.clips[index]
        return np.stack(
            [
                np.asarray(Image.open(resized_frame_path(self.root, clip.scene, i)).convert("RGB"))
                for i in clip.frame_indices
            ]
        )


def shard_clips(urls: list[str], decoder: str) -> Iterator[np.ndarray]:
    """(a)/(b): the trainer's own single-process shard reader. Yields uint8 (T, H, W, 3)."""
    from train.data import iter_clips

    for _key, frames, _meta in iter_clips(urls, decoder=decoder):
        yield frames


def dataset_items(dataset: torch.utils.data.Dataset) -> Iterator[np.ndarray]:
    """Items of a map-style dataset in index order, as a DataLoader with num_workers=0 reads them."""
    return (dataset[index] for index in range(len(dataset)))


@dataclass(frozen=True)
class Rate:
    """Throughput of one timed pass."""

    items: int
    """Items consumed while timing."""
    wall_s: float
    """Wall seconds."""
    cpu_s: float
    """CPU seconds of this process (all its threads)."""

    @property
    def per_s(self) -> float:
        """Items per wall second."""
        return self.items / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        """Items per CPU second: robust to other processes stealing the cores."""
        return self.items / max(self.cpu_s, 1e-9)


def time_items(
    make_items: Callable[[], Iterable], min_seconds: float, min_items: int, warmup: int = 1
) -> Rate:
    """Consume `make_items()` (restarted when exhausted) for at least min_seconds and min_items.

    The first `warmup` items are not timed (they pay for opening files and first-call setup).
    """
    items = iter(make_items())
    for _ in range(warmup):
        next(items, None)
    count = 0
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    while True:
        for _ in items:
            count += 1
            if count >= min_items and time.perf_counter() - wall_start >= min_seconds:
                return Rate(count, time.perf_counter() - wall_start, time.process_time() - cpu_start)
        items = iter(make_items())


@dataclass(frozen=True)
class LoaderSetup:
    """Inputs of the loader benchmark."""

    shard_dir: Path
    """A finished ingest folder at the training size."""
    dataroot: Path
    """The nuScenes dataroot the shards were made from."""
    version: str
    """Its version folder."""
    resized_dir: Path
    """Pre-resized JPEG folder (d), built by write_resized_folder."""
    size: tuple[int, int]
    """Training size (H, W)."""


def loader_sources(setup: LoaderSetup, clips: list[ClipRef]) -> dict[str, Callable[[], Iterable[np.ndarray]]]:
    """name -> factory of a fresh pass over all clips, for each of the four loaders."""
    urls = [str(path) for path in shard_paths(setup.shard_dir)]
    naive = NaiveDevkitClips(setup.dataroot, setup.version, clips, setup.size)
    resized = ResizedJpegClips(setup.resized_dir, clips)
    return {
        "shards_decord": lambda: shard_clips(urls, "decord"),
        "shards_pyav": lambda: shard_clips(urls, "pyav"),
        "naive_devkit_jpeg": lambda: dataset_items(naive),
        "resized_jpeg": lambda: dataset_items(resized),
    }


LOADER_LABELS = {
    "shards_decord": "(a) shards, decord",
    "shards_pyav": "(b) shards, PyAV",
    "naive_devkit_jpeg": "(c) devkit full-size JPEGs + resize",
    "resized_jpeg": "(d) pre-resized JPEG folder",
}
BASELINE = "naive_devkit_jpeg"


def check_same_shape(sources: dict[str, Callable[[], Iterable[np.ndarray]]], size: tuple[int, int]) -> int:
    """Every loader yields uint8 (T, H, W, 3) at `size` with the same T; returns T."""
    shapes = {name: next(iter(make())).shape for name, make in sources.items()}
    if len(set(shapes.values())) != 1 or next(iter(shapes.values()))[1:3] != tuple(size):
        raise RuntimeError(f"loaders disagree on the clip shape (want H, W = {size}): {shapes}")
    return next(iter(shapes.values()))[0]


def bench_loaders(setup: LoaderSetup, min_seconds: float, rounds: int) -> dict:
    """Clips/s per worker of the four loaders, as ratios to the naive devkit baseline.

    Loaders are timed round-robin `rounds` times and the median kept, so a burst of load from
    other processes hits every loader alike.
    """
    torch.set_num_threads(1)
    clips = clip_refs(setup.shard_dir)
    sources = loader_sources(setup, clips)
    clip_len = check_same_shape(sources, setup.size)
    samples: dict[str, list[Rate]] = {name: [] for name in sources}
    for _ in range(rounds):
        for name, make in sources.items():
            samples[name].append(time_items(make, min_seconds, min_items=min(len(clips), 4)))
    base = statistics.median(rate.per_s for rate in samples[BASELINE])
    rows = []
    for name, rates in samples.items():
        per_s = statistics.median(rate.per_s for rate in rates)
        per_cpu_s = statistics.median(rate.per_cpu_s for rate in rates)
        rows.append(
            {
                "loader": name,
                "label": LOADER_LABELS[name],
                "clips_per_s": per_s,
                "clips_per_cpu_s": per_cpu_s,
                "frames_per_s": per_s * clip_len,
                "vs_baseline": per_s / base,
            }
        )
    return {
        "clip_len": clip_len,
        "size": list(setup.size),
        "clips": len(clips),
        "rounds": rounds,
        "min_seconds": min_seconds,
        "baseline": BASELINE,
        "resized_jpeg_quality": RESIZED_JPEG_QUALITY,
        "rows": rows,
    }
