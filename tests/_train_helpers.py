"""Small shard folders in the contract format (shards/README.md) for the trainer tests.

Clips are a random texture sliding by a per-clip velocity, encoded with mvm.video.encode_clip,
so the decoder, the tar layout and the manifest are the real ones; only the content is made up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mvm.shards import FORMAT_VERSION, clip_key, write_shard_folder
from mvm.train.config import ModelConfig
from mvm.video import encode_clip

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"


def small_model(**overrides) -> ModelConfig:
    """A 2-block d=32 model on 4-frame 32x48 clips (2x3 patches of 16 px) for fast CPU tests."""
    fields = dict(
        clip_len=4, image_size=(32, 48), patch_size=16, stem_channels=8, embed_dim=32, depth=2, num_heads=2,
        decoder_dim=32, decoder_depth=1, decoder_heads=2, mask_type="random", mask_ratio=0.75, norm_pix_loss=True,
    )  # fmt: skip
    return ModelConfig(**{**fields, **overrides})


def moving_clip(rng: np.random.Generator, clip_len: int, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """A texture translating horizontally: (frames uint8 (T, H, W, 3), velocity in px/frame)."""
    height, width = size
    velocity = float(rng.choice([-3, -1, 0, 1, 3]))
    texture = rng.integers(0, 256, (height // 4 + 1, (width + 4 * clip_len * 3) // 4 + 1, 3), dtype=np.uint8)
    texture = texture.repeat(4, axis=0).repeat(4, axis=1)
    origin = clip_len * 3
    frames = [
        texture[:height, origin + int(velocity * t) : origin + int(velocity * t) + width]
        for t in range(clip_len)
    ]
    return np.ascontiguousarray(np.stack(frames)), velocity


def write_shards(folder: Path, counts: list[int], clip_len: int = 8, size=(32, 64), seed: int = 0) -> Path:
    """folder/shard-NNNNNN.tar with counts[i] moving clips each (10 per scene), plus manifest.json."""
    rng = np.random.default_rng(seed)
    shards, clip = [], 0
    for count in counts:
        samples = []
        for _ in range(count):
            frames, velocity = moving_clip(rng, clip_len, size)
            scene = f"scene-{clip // 10:04d}"
            key = clip_key(scene, (clip % 10) * clip_len)
            meta = {"version": FORMAT_VERSION, "depth": None, "key": key, "scene": scene, "clip_len": clip_len, "size": list(size),
                    "speed_mps": abs(velocity), "yaw_rate_rps": 0.0}  # fmt: skip
            samples.append(
                [
                    (f"{key}.mp4", encode_clip(frames)),
                    (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
                ]
            )
            clip += 1
        shards.append(samples)
    write_shard_folder(folder, shards, {"clip_len": clip_len, "size": list(size)})
    return Path(folder)


def tiny_config(path: Path, **overrides) -> Path:
    """A --config JSON making the tiny preset even smaller (test-sized shapes, fast steps)."""
    config = {
        "model": {"embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_dim": 32,
                  "decoder_depth": 1, "decoder_heads": 2, "stem_channels": 8},
        "data": {"batch_size": 4, "workers": 0, "shuffle_buffer": 8},
        "log_every": 1, "viz_every": 1000, "ckpt_every": 1000,
    }  # fmt: skip
    for section, values in overrides.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path.write_text(json.dumps(config))
    return path


FAULTS = Path(__file__).resolve().parent / "_train_faults.py"


def run_train(
    args: list[str],
    nproc: int = 1,
    timeout: float = 120,
    env_extra: dict | None = None,
    faults: dict | None = None,
):
    """Run mvm-train (under torchrun when nproc > 1) with one thread per process; returns CompletedProcess.

    faults: {"NAN_AT_STEP": n, "KILL_AT_STEP": n, "CHILDREN_FILE": path} runs it through
    tests/_train_faults.py, which injects them (see there).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env_extra or {})}
    env.update({f"MVM_FAULT_{name}": str(value) for name, value in (faults or {}).items()})
    target = [str(FAULTS)] if faults else ["-m", "mvm.train.cli"]
    if nproc > 1:
        command = [str(VENV_BIN / "torchrun"), f"--nproc_per_node={nproc}", "--standalone", *target]
    else:
        command = [sys.executable, *target]
    return subprocess.run(command + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def read_keys(run: Path, rank: int = 0) -> list[tuple[int, list[str]]]:
    """(step, keys) per line of RUN/keys-rank{rank}.jsonl."""
    lines = (Path(run) / f"keys-rank{rank}.jsonl").read_text().splitlines()
    return [(record["step"], record["keys"]) for record in map(json.loads, lines)]
