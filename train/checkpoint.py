"""Atomic, resumable checkpoints: RUN/checkpoints/step-NNNNNN/{state.pt, config.json, COMPLETE}.

A checkpoint is written into a `.tmp-step-NNNNNN` folder, the COMPLETE marker last, then the
folder is renamed into place; a folder without the marker (a crash mid-write) is never loaded.
A complete folder whose state.pt still fails to load (a damaged disk, a file truncated after the
fact, weights that do not fit the model its config builds) is reported by path and skipped for
the newest earlier complete one, both when a run resumes (`load_newest`) and when the probe loads
an encoder (`load_for_eval`). A symlink at a step folder's name is never loaded nor deleted.
A checkpoint also records the shard set it was trained on (`shard_set_identity`: per shard its
manifest sha256 and absolute path), so a resume compares data by content, not by spelling.
state.pt holds only tensors and plain Python values, so it loads with weights_only=True:
model, optimizer, step, data position, RNG states. The LR schedule is a pure function of the
step and the saved config (mvm.train.engine.lr_at), so restoring the step restores the schedule.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mvm.atomic import OutputError, atomic_path, ensure_dir, write_atomic
from mvm.options import leaves, nest
from mvm.report_format import dumps_json
from mvm.shards import ShardError, listed_entry, open_regular, resolve_shards
from mvm.train.config import TrainConfig, apply_overrides, from_dict, get_field, resume_fields, to_dict
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
    """Write state (model, optimizer, step, data, rng ...) atomically; delete all but the newest `keep`.

    OutputError (one line: the disk is full, the folder is not writable ...) when the checkpoint
    cannot be written; the previous checkpoints and the run folder are left as they were.
    """
    final = step_dir(run, step)
    folder = ensure_dir(final.parent)
    for leftover in folder.glob(".tmp-step-*"):  # a save killed mid-write (SIGKILL) left it behind
        _remove(leftover)
    tmp = folder / f".tmp-{final.name}"
    try:
        # Created here, exclusively (mkdir fails on anything at the name, a planted symlink too);
        # its mode follows the umask like every other output.
        os.mkdir(tmp)
    except OSError as error:
        raise OutputError(f"cannot write checkpoint {final}: {error.strerror or error} ({tmp})") from None
    try:
        with atomic_path(tmp / "state.pt") as path, open(path, "wb") as handle:
            _save_tensors({**state, "config": to_dict(config)}, handle)
        write_atomic(tmp / "config.json", dumps_json(to_dict(config)))
        write_atomic(tmp / MARKER, f"step {step}\n")
        # Re-saving a step (after a resume): move the old copy aside first, so a crash at any point
        # leaves a complete folder under the final name or the previous checkpoints untouched.
        stale = final.with_name(f".old-{final.name}")
        _remove(stale)
        if final.is_symlink() or final.exists():
            final.rename(stale)  # a planted symlink is moved aside, never followed
        tmp.rename(final)
        _remove(stale)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, OutputError):  # a failed rename
            raise OutputError(f"cannot write checkpoint {final}: {error.strerror or error}") from None
        raise
    for old in complete_checkpoints(run)[:-keep] if keep > 0 else []:
        _remove(old)
    return final


def _save_tensors(payload: dict, handle) -> None:
    """torch.save to an open file. torch reports a failed write (disk full) as a RuntimeError
    "[enforce fail at inline_container.cc]"; the OSError behind it is raised instead, which
    atomic_path turns into a one-line OutputError ("no space left on the device while writing ...")."""
    try:
        torch.save(payload, handle)
    except RuntimeError as error:
        if isinstance(error.__context__, OSError):
            raise error.__context__ from None
        raise


def _remove(path: Path) -> None:
    """Delete a folder we wrote, or unlink a symlink or file planted at its name (never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def complete_checkpoints(run: Path, warn: Callable[[str], None] | None = None) -> list[Path]:
    """Complete step folders of a run, oldest first.

    A symlink at a step name (checkpoints are always real folders) is never listed, so it is
    neither loaded nor pruned; `warn`, when given, names it.
    """
    folder = Path(run) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if not _STEP_DIR.match(path.name):
            continue
        if path.is_symlink():
            if warn is not None:
                warn(f"ignoring {path}: a symlink, not a checkpoint folder written by mvm-train")
            continue
        if (path / MARKER).is_file():
            found.append(path)
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def _candidates(path: Path, warn: Callable[[str], None]) -> list[Path]:
    """Step folders to try, newest first: the folder itself, or a run's complete checkpoints."""
    if (path / MARKER).is_file():
        return [path]
    found = complete_checkpoints(path, warn)
    if not found:
        raise CheckpointError(
            f"no complete checkpoint in {path} (expected {path}/checkpoints/step-NNNNNN/{MARKER})"
        )
    return found[::-1]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


EVAL_ENTRIES = ("model", "config")
"""What state.pt must hold for the probe; a resume needs RESUME_ENTRIES."""
RESUME_ENTRIES = (*EVAL_ENTRIES, "optimizer", "step", "data", "rng")


def load_newest(
    path: str | Path,
    device: str | torch.device = "cpu",
    warn: Callable[[str], None] = _warn,
    entries: tuple[str, ...] = EVAL_ENTRIES,
) -> tuple[dict, Path]:
    """(state, step folder) of the newest checkpoint under `path` (run or step folder) that loads.

    A complete checkpoint whose state.pt fails to load, lacks one of `entries`, or whose weights
    do not fit the model its config builds, is reported through `warn` (path and error) and
    skipped for the next older one; CheckpointError when none loads.
    """
    tried = []
    for folder in _candidates(Path(path), warn):
        try:
            with open_regular(folder / "state.pt") as handle:  # a FIFO there would block torch.load forever
                state = torch.load(handle, map_location=device, weights_only=True)
            for key in entries:
                if key not in state:
                    raise KeyError(f"state.pt has no {key!r} entry")
            check_weights(state)
            return state, folder
        except Exception as error:  # torch raises RuntimeError, EOFError, pickle errors ... for damage
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            warn(f"checkpoint {folder / 'state.pt'} does not load ({reason}); trying the previous one")
            tried.append(str(folder))
    raise CheckpointError(f"no loadable checkpoint under {path} (tried {', '.join(tried)})")


def check_weights(state: dict) -> None:
    """ValueError naming the first mismatch unless state["model"] loads into the model that
    state["config"] builds (built on the meta device: shapes only, no memory, no copy)."""
    config = from_dict(state["config"])
    with torch.device("meta"):
        model = build_model(config.model)
    try:
        model.load_state_dict(state["model"], assign=True)
    except RuntimeError as error:
        # "Error(s) in loading state_dict for ...:" then one tab-indented line per mismatch.
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise ValueError(f"weights do not match its config: {lines[0] if lines else error}{more}") from None


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


RUN_CONTROL_FIELDS = resume_fields()
"""Fields a resumed run takes from the command line (declared `resume_may_change` in
train/config.py); everything else comes from the checkpoint."""

DATA_FIELDS = ("data.shards", "model.clip_len", "model.image_size")
"""What the data stream is made of: a resume that changes these is refused (the saved stream
position would point into other data). data.shards is compared by content (`check_same_data`)."""


def shard_set_identity(urls: list[str]) -> dict:
    """What a run trains on, by content: {"digest", "shards": [{"name", "sha256", "path"}]}.

    One entry per shard in stream order, its sha256 from its folder's manifest and its absolute
    path (to say what changed); digest = sha256 over the names and sha256 values in order, so the
    same files named by another path have the same digest and re-ingested files another one.
    """
    shards = [{"name": Path(url).name, "sha256": listed_entry(url)["sha256"], "path": str(Path(url).resolve())}
              for url in urls]  # fmt: skip
    lines = "".join(f"{shard['name']} {shard['sha256']}\n" for shard in shards)
    return {"digest": hashlib.sha256(lines.encode()).hexdigest(), "shards": shards}


def shard_set_changes(current: dict, saved: object) -> list[str]:
    """What differs between the shard set named now and the one a checkpoint recorded (both from
    shard_set_identity; `saved` was read from a file, so its shape is checked); [] when the same."""
    try:
        if saved["digest"] == current["digest"]:
            return []
        before = [(str(s["name"]), str(s["sha256"]), str(s["path"])) for s in saved["shards"]]
    except (KeyError, TypeError):
        return ["its checkpoint's record of the shards is unreadable"]
    now = [(s["name"], s["sha256"], s["path"]) for s in current["shards"]]
    changes = [f"{len(now)} shards instead of {len(before)}"] if len(now) != len(before) else []
    differ = [f"{path} holds other data" + ("" if path == old_path else f" than {old_path} did")
              for (name, sha, path), (old_name, old_sha, old_path) in zip(now, before, strict=False)
              if (name, sha) != (old_name, old_sha)]  # fmt: skip
    changes += differ[:3] + ([f"{len(differ) - 3} more shards differ"] if len(differ) > 3 else [])
    return changes or ["its recorded digest differs"]  # a record edited by hand


def check_same_data(requested: TrainConfig, state: dict) -> None:
    """ValueError saying what changed unless the requested shards hold the data the checkpoint's
    run trained on (same content and order, wherever and however they are named now)."""
    saved_config = from_dict(state["config"])
    if "shards" in state:
        shards = shard_set_changes(shard_set_identity(resolve_shards(requested.data.shards)), state["shards"])
    elif not same_shards(requested.data.shards, saved_config.data.shards):
        shards = ["other files"]  # a checkpoint from before shard identities: compared by path
    else:
        shards = []
    changed = [f"data.shards: {', '.join(shards)}"] if shards else []
    changed += [f"model.{name} differs" for name in ("clip_len", "image_size")
                if getattr(requested.model, name) != getattr(saved_config.model, name)]  # fmt: skip
    if changed:
        raise ValueError(
            f"this run folder was trained on other data ({'; '.join(changed)}); "
            "start a new run folder (another --out, with --resume never to be sure it starts fresh)"
        )


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
        return load_newest(run, warn=warn, entries=RESUME_ENTRIES)[0] if complete_checkpoints(run) else None
    return load_newest(resume, warn=warn, entries=RESUME_ENTRIES)[0]


def same_shards(a: str, b: str) -> bool:
    """Whether two shard specs name the same files (a moved or deleted old spec counts as different)."""
    try:
        return [Path(u).resolve() for u in resolve_shards(a)] == [
            Path(u).resolve() for u in resolve_shards(b)
        ]
    except ShardError:
        return False


def resumed_config(requested: TrainConfig, saved: dict) -> tuple[TrainConfig, list[str]]:
    """(the checkpoint's config with run-control fields from the command line, requested changes ignored).

    Call check_same_data first: data.shards is taken as given now (it names the same content,
    perhaps by another path or from another working folder).
    """
    config = apply_overrides(from_dict(saved), {"data": {"shards": requested.data.shards}})
    ignored = [
        name
        for name in (item.name for item in leaves(TrainConfig))
        if name not in (*RUN_CONTROL_FIELDS, *DATA_FIELDS)
        and get_field(requested, name) != get_field(config, name)
    ]
    config = apply_overrides(config, nest({name: get_field(requested, name) for name in RUN_CONTROL_FIELDS}))
    return config, ignored
