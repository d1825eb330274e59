"""Loader throughput: clips/s in one worker process for our shards and the alternatives.

Ways to get the same T-frame clips at the training size, all through `mvm.train.data.iter_clips` (the
trainer's own reader) for the shards: (a) PyAV I420 planes, uint8 (T, 3H/2, W), what the trainer's
workers hand over when the batch is converted to RGB on the GPU; (b) PyAV, (b2) decord and (b3)
torchcodec RGB, uint8 (T, H, W, 3), for each decoder installed here; (c) the naive baseline a
nuScenes user writes: a torch `Dataset` that opens T full-size CAM_FRONT JPEGs through the devkit's
paths and resizes them; (d) a folder of JPEGs pre-resized to the training size; and (a) with
`--repeat-aug 2` (training rows/s: each decoded clip fills two batch rows). Every loader reads the
very clips the shards hold (same scenes, same frame indices), so only the storage and decode
path differ. The I420 -> RGB conversion of (a) is timed separately on this CPU (on a GPU it is a
few elementwise kernels on the batch).

"Per worker" = one process, one torch thread, no DataLoader workers: a DataLoader with W workers
gets at most W times this on W free cores. Ratios are of clips per CPU-second (the wall rate is
reported too): on a shared host the wall rate also measures the other jobs.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvm.atomic import atomic_path
from mvm.shards import iter_samples, listed_shards, read_manifest

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
    return listed_shards(shard_dir, read_manifest(shard_dir))


def clip_refs(shard_dir: Path) -> list[ClipRef]:
    """Every clip of an ingest folder, from the samples' json metadata (no video decode)."""
    refs = []
    for path in shard_paths(shard_dir):
        for sample in iter_samples(path):
            meta = json.loads(sample["json"])
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
                with atomic_path(path) as partial:
                    Image.fromarray(resize(source_path(token))).save(
                        partial, format="JPEG", quality=RESIZED_JPEG_QUALITY
                    )
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


def shard_clips(urls: list[str], decoder: str, i420: bool = False) -> Iterator[np.ndarray]:
    """(a)/(b): the trainer's own single-process shard reader. Yields uint8 (T, H, W, 3), or
    uint8 (T, 3H/2, W) I420 planes with i420."""
    from mvm.train.data import iter_clips

    for _key, frames, _meta in iter_clips(urls, decoder=decoder, i420=i420):
        yield frames


def repeated_rows(urls: list[str], repeat_aug: int, batch_size: int = 8) -> Iterator[torch.Tensor]:
    """(a) with repeated sampling: the training rows `mvm.train.data.batches` makes of the I420 stream."""
    from mvm.train.data import batches

    samples = (
        {"key": str(i), "frames": torch.from_numpy(f)} for i, f in enumerate(shard_clips(urls, "pyav", True))
    )
    for _keys, frames, _used in batches(samples, batch_size, repeat_aug):
        yield from frames


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


REPEAT_AUG = 2
"""Repeats of the repeat-aug row (the issue reports --repeat-aug 2 separately)."""
LOADER_LABELS = {
    "shards_pyav_i420": "(a) shards, PyAV I420 planes (trainer on GPU)",
    "shards_pyav": "(b) shards, PyAV RGB",
    "shards_decord": "(b2) shards, decord RGB",
    "shards_torchcodec": "(b3) shards, torchcodec RGB",
    "naive_devkit_jpeg": "(c) devkit full-size JPEGs + resize",
    "resized_jpeg": "(d) pre-resized JPEG folder",
    "shards_pyav_i420_repeat_aug": f"(a) with --repeat-aug {REPEAT_AUG} (rows/s)",
}
BASELINE = "naive_devkit_jpeg"
SHARD_PATHS = ("shards_pyav_i420", "shards_pyav", "shards_decord", "shards_torchcodec")
"""The shard loaders without repeated sampling: the best of them is compared with (c) and (d)."""


def loader_sources(setup: LoaderSetup, clips: list[ClipRef]) -> dict[str, Callable[[], Iterable[np.ndarray]]]:
    """name -> factory of a fresh pass over all clips, for every loader that runs here."""
    from mvm.video import available_decoders

    urls = [str(path) for path in shard_paths(setup.shard_dir)]
    naive = NaiveDevkitClips(setup.dataroot, setup.version, clips, setup.size)
    resized = ResizedJpegClips(setup.resized_dir, clips)
    sources = {"shards_pyav_i420": lambda: shard_clips(urls, "pyav", i420=True)}
    for decoder in available_decoders():
        sources[f"shards_{decoder}"] = lambda decoder=decoder: shard_clips(urls, decoder)
    sources["naive_devkit_jpeg"] = lambda: dataset_items(naive)
    sources["resized_jpeg"] = lambda: dataset_items(resized)
    sources["shards_pyav_i420_repeat_aug"] = lambda: repeated_rows(urls, REPEAT_AUG)
    return sources


def check_same_shape(sources: dict[str, Callable[[], Iterable[np.ndarray]]], size: tuple[int, int]) -> int:
    """Every loader yields the same T at `size`: uint8 (T, H, W, 3), or (T, 3H/2, W) for I420; returns T."""
    height, width = size
    shapes = {name: tuple(next(iter(make())).shape) for name, make in sources.items()}
    clip_len = shapes[BASELINE][0]
    for name, shape in shapes.items():
        want = (clip_len, height * 3 // 2, width) if "i420" in name else (clip_len, height, width, 3)
        if shape != want:
            raise RuntimeError(f"loader {name} yields {shape}, want {want}: {shapes}")
    return clip_len


def conversion_ms_per_clip(setup: LoaderSetup, min_seconds: float) -> float:
    """CPU ms per clip of mvm.tensors.i420_to_rgb on a batch of 16 I420 clips (one thread)."""
    from mvm.tensors import i420_to_rgb

    urls = [str(path) for path in shard_paths(setup.shard_dir)]
    clips = [
        torch.from_numpy(clip) for clip, _ in zip(shard_clips(urls, "pyav", True), range(16), strict=False)
    ]
    batch = torch.stack(clips)
    rate = time_items(lambda: (i420_to_rgb(batch) for _ in range(4)), min_seconds, min_items=4)
    return 1000 / (rate.per_cpu_s * len(clips))


def bench_loaders(setup: LoaderSetup, min_seconds: float, rounds: int) -> dict:
    """Clips/s per worker of every loader, as ratios to the naive devkit baseline.

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
    # Ratios use CPU time: with other jobs on the host, wall time measures the scheduler as much as
    # the loader, while every loader here is one thread reading page-cached files.
    base = statistics.median(rate.per_cpu_s for rate in samples[BASELINE])
    resized = statistics.median(rate.per_cpu_s for rate in samples["resized_jpeg"])
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
                "vs_baseline": per_cpu_s / base,
                "vs_resized": per_cpu_s / resized,
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
        "repeat_aug": REPEAT_AUG,
        "i420_to_rgb_cpu_ms_per_clip": conversion_ms_per_clip(setup, min_seconds / 2),
        "rows": rows,
    }
