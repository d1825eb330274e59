"""Atomic, resumable checkpoints: RUN/checkpoints/step-NNNNNN/{state.pt, config.json, COMPLETE}.

A checkpoint is written into a `.tmp-step-NNNNNN` folder, the COMPLETE marker last, then the
folder is renamed into place; a folder without the marker (a crash mid-write) is never loaded.
A complete folder whose state.pt still fails to load (a damaged disk, a file truncated after the
fact) is reported by path and skipped for the newest earlier complete one, both when a run
resumes (`load_newest`) and when the probe loads an encoder (`load_for_eval`).
state.pt holds only tensors and plain Python values, so it loads with weights_only=True:
model, optimizer, step, data position, RNG states. The LR schedule is a pure function of the
step and the saved config (mvm.train.engine.lr_at), so restoring the step restores the schedule.
"""

from __future__ import annotations

import random
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mvm.atomic import atomic_path, ensure_dir, write_atomic
from mvm.report_format import dumps_json
from mvm.train.config import TrainConfig, apply_overrides, from_dict, to_dict
from mvm.train.model import MaskedVideoModel, build_model

MARKER = "COMPLETE"


class CheckpointError(FileNotFoundError):
    """No loadable checkpoint where one was asked for; the message names the paths tried."""


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
    folder = ensure_dir(final.parent)
    for leftover in folder.glob(".tmp-step-*"):  # a save killed mid-write (SIGKILL) left it behind
        shutil.rmtree(leftover, ignore_errors=True)
    # A fresh folder made by this process (never a name someone could have planted a link at).
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".tmp-{final.name}."))
    try:
        with atomic_path(tmp / "state.pt") as path:
            torch.save({**state, "config": to_dict(config)}, path)
        write_atomic(tmp / "config.json", dumps_json(to_dict(config)))
        write_atomic(tmp / MARKER, f"step {step}\n")
        # Re-saving a step (after a resume): move the old copy aside first, so a crash at any point
        # leaves a complete folder under the final name or the previous checkpoints untouched.
        stale = final.with_name(f".old-{final.name}")
        shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            final.rename(stale)
        tmp.rename(final)
        shutil.rmtree(stale, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def _candidates(path: Path) -> list[Path]:
    """Step folders to try, newest first: the folder itself, or a run's complete checkpoints."""
    if (path / MARKER).is_file():
        return [path]
    found = complete_checkpoints(path)
    if not found:
        raise CheckpointError(
            f"no complete checkpoint in {path} (expected {path}/checkpoints/step-NNNNNN/{MARKER})"
        )
    return found[::-1]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def load_newest(
    path: str | Path, device: str | torch.device = "cpu", warn: Callable[[str], None] = _warn
) -> tuple[dict, Path]:
    """(state, step folder) of the newest checkpoint under `path` (run or step folder) that loads.

    A complete checkpoint whose state.pt fails to load is reported through `warn` (path and
    error) and skipped for the next older one; CheckpointError when none loads.
    """
    tried = []
    for folder in _candidates(Path(path)):
        try:
            state = torch.load(folder / "state.pt", map_location=device, weights_only=True)
            for key in ("model", "config"):
                if key not in state:
                    raise KeyError(f"state.pt has no {key!r} entry")
            return state, folder
        except Exception as error:  # torch raises RuntimeError, EOFError, pickle errors ... for damage
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            warn(f"checkpoint {folder / 'state.pt'} does not load ({reason}); trying the previous one")
            tried.append(str(folder))
    raise CheckpointError(f"no loadable checkpoint under {path} (tried {', '.join(tried)})")


def load_for_eval(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MaskedVideoModel, TrainConfig, Path]:
    """(model in eval mode on `device`, its TrainConfig, the step folder it came from) from a run
    folder or a step-NNNNNN folder, loading the checkpoint once.

    Says on stderr which step it used when it had to skip a damaged newer checkpoint.
    """
    skipped = []
    state, folder = load_newest(path, device, warn=lambda message: (skipped.append(message), _warn(message)))
    if skipped:
        _warn(f"using checkpoint {folder.name} ({folder})")
    config = from_dict(state["config"])
    model = build_model(config.model)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config, folder


RUN_CONTROL_FIELDS = (
    "steps", "device", "compile", "precision", "log_every", "viz_every", "viz_shards", "viz_clips",
    "ckpt_every", "keep_ckpts", "max_nonfinite", "collapse_rankme", "collapse_time_spread",
    "starvation_frac", "probe_every", "probe_shards", "probe_clips",
)  # fmt: skip
"""Fields a resumed run takes from the command line; everything else comes from the checkpoint."""

DATA_FIELDS = ("data.shards", "model.clip_len", "model.image_size")
"""What the data stream is made of: a resume that changes these is refused (the saved stream
position would point into other data)."""


def resume_state(resume: str, run: Path, warn: Callable[[str], None] = _warn) -> dict | None:
    """The checkpoint state to continue from (--resume auto / never / PATH), or None for a fresh run.

    ValueError for `never` on a run folder that holds checkpoints; CheckpointError when a
    requested checkpoint does not load.
    """
    if resume == "never":
        if complete_checkpoints(run):
            raise ValueError(f"{run} already holds checkpoints; use --resume auto or another --out")
        return None
    if resume == "auto":
        return load_newest(run, warn=warn)[0] if complete_checkpoints(run) else None
    return load_newest(resume, warn=warn)[0]


def same_shards(a: str, b: str) -> bool:
    """Whether two shard specs name the same files (a moved or deleted old spec counts as different)."""
    from mvm.shards import ShardError, resolve_shards

    try:
        return [Path(u).resolve() for u in resolve_shards(a)] == [
            Path(u).resolve() for u in resolve_shards(b)
        ]
    except ShardError:
        return False


def resumed_config(requested: TrainConfig, saved: dict) -> tuple[TrainConfig, list[str]]:
    """(the checkpoint's config with run-control fields from the command line, requested changes ignored).

    ValueError when the request changes the data (DATA_FIELDS): the run must start over in a new
    folder.
    """
    config = from_dict(saved)
    wanted = to_dict(requested)
    changed = [] if same_shards(requested.data.shards, config.data.shards) else ["data.shards"]
    saved_fields = to_dict(config)
    changed += [
        f"model.{k}" for k in ("clip_len", "image_size") if wanted["model"][k] != saved_fields["model"][k]
    ]
    if changed:
        raise ValueError(
            f"this run folder was trained on other data ({', '.join(changed)} differ from its checkpoint); "
            "start a new run folder (another --out, with --resume never to be sure it starts fresh)"
        )
    config = apply_overrides(config, {name: getattr(requested, name) for name in RUN_CONTROL_FIELDS})
    ignored = [name for name in ("seed", "preset") if wanted[name] != saved[name]]
    for section in ("model", "data", "optim"):
        ignored += [
            f"{section}.{k}"
            for k, v in wanted[section].items()
            if f"{section}.{k}" not in DATA_FIELDS and v != saved_fields[section][k]
        ]
    return config, ignored
