"""Atomic, resumable checkpoints: RUN/checkpoints/step-NNNNNN/{state.pt, config.json, COMPLETE}.

A checkpoint is written into a `.tmp-step-NNNNNN` folder, the COMPLETE marker last, then the
folder is renamed into place; a folder without the marker (a crash mid-write) is never loaded.
state.pt holds only tensors and plain Python values, so it loads with weights_only=True:
model, optimizer, step, data position, RNG states. The LR schedule is a pure function of the
step and the saved config (train.engine.lr_at), so restoring the step restores the schedule.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from train.config import TrainConfig, from_dict, to_dict
from train.model import MaskedVideoModel, build_model

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def step_dir(run: Path, step: int) -> Path:
    """RUN/checkpoints/step-NNNNNN."""
    return Path(run) / "checkpoints" / f"step-{step:06d}"


def rng_state() -> dict:
    """Python, NumPy and torch CPU generator states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    """Inverse of rng_state."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


def save(run: Path, step: int, state: dict, config: TrainConfig, keep: int) -> Path:
    """Write state (model, optimizer, step, data, rng ...) atomically; delete all but the newest `keep`."""
    final = step_dir(run, step)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({**state, "config": to_dict(config)}, tmp / "state.pt")
    (tmp / "config.json").write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
    (tmp / MARKER).write_text(f"step {step}\n")
    # Re-saving a step (after a resume): move the old copy aside first, so a crash at any point
    # leaves a complete folder under the final name or the previous checkpoints untouched.
    stale = final.with_name(f".old-{final.name}")
    shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        final.rename(stale)
    tmp.rename(final)
    shutil.rmtree(stale, ignore_errors=True)
    for old in complete_checkpoints(run)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def complete_checkpoints(run: Path) -> list[Path]:
    """Complete step folders of a run, oldest first."""
    folder = Path(run) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _STEP_DIR.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def resolve(path: str | Path) -> Path:
    """A step folder from a run folder (its newest complete checkpoint) or a step folder itself."""
    path = Path(path)
    if (path / MARKER).is_file():
        return path
    found = complete_checkpoints(path)
    if not found:
        raise FileNotFoundError(
            f"no complete checkpoint in {path} (expected {path}/checkpoints/step-NNNNNN/{MARKER})"
        )
    return found[-1]


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The state dict of a checkpoint (run folder or step folder), loaded with weights_only=True."""
    return torch.load(resolve(path) / "state.pt", map_location=device, weights_only=True)


def load_for_eval(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MaskedVideoModel, TrainConfig]:
    """(model in eval mode on `device`, its TrainConfig) from a run folder or a step-NNNNNN folder."""
    state = load_state(path, device)
    config = from_dict(state["config"])
    model = build_model(config.model)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config
