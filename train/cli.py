"""mvm-train: stream clip shards and pre-train a masked video model (the loop is train/loop.py).

Single process (CPU or one GPU):
    mvm-train --shards shards/train --out runs/small --model small
DDP on one machine, K processes (gloo on CPU, NCCL on GPU; rank and world come from torchrun):
    torchrun --nproc_per_node=K -m mvm.train.cli --shards shards/train --out runs/small --model small
Multi-node under Slurm (one torchrun per node): slurm/train_ddp.sbatch.
CPU smoke test (a few seconds):
    mvm-train --shards demo/shards/train --out /tmp/smoke --model tiny --steps 20 --device cpu

The run folder RUN holds config.json, metrics.jsonl, keys-rank{R}.jsonl (the clip keys each step
consumed), loss.png, viz/step-NNNNNN.png, checkpoints/step-NNNNNN/ and, with the optional
tensorboard package, tensorboard/. Rerunning the same command resumes from the newest loadable
checkpoint (--resume auto) and continues the same data stream mid-epoch, if the shards hold the
same content (compared by sha256, not by path). One mvm-train writes a run folder at a time
(RUN/.mvm.lock, held by rank 0 for the whole run).

Options that set a config field are generated from the TrainConfig fields declared with `flag`
(train/config.py, mvm/options.py): help = the field's docstring, range and choices = its declaration.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click
import torch
from rich.console import Console

from mvm.atomic import OutputError, exclusive_lock
from mvm.options import click_options, nest
from mvm.shards import DamagedShardError, ShardError, clip_shape_of, resolve_shards
from mvm.train.checkpoint import CheckpointError, check_same_data, resume_state, resumed_config
from mvm.train.config import (
    PRESET_NAMES,
    TrainConfig,
    apply_config_file,
    apply_overrides,
    preset,
    size_problem,
    validate,
)

EXIT_FAILURE, EXIT_USAGE = 1, 2


def nested(flat: dict) -> dict:
    """{"data__batch_size": 4, "steps": None} -> {"data": {"batch_size": 4}} (None = not given)."""
    return nest({param.replace("__", "."): value for param, value in flat.items() if value is not None})


def resolve_config(model: str, config_file: str | None, fields: dict) -> TrainConfig:
    """Preset -> --config file -> explicit options -> clip length and size from the shards' manifest."""
    config = preset(model)
    if config_file:
        config = apply_config_file(config, config_file)
    config = apply_overrides(config, nested(fields))
    clip_len, size = clip_shape_of(resolve_shards(config.data.shards))
    problem = size_problem(size, config.model.patch_size)
    if problem:
        raise ValueError(problem)
    config = apply_overrides(config, {"model": {"clip_len": clip_len, "image_size": size}})
    validate(config)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    return config


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--out",
    "run",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder (created; resumed if it holds checkpoints).",
)
@click.option("--model", default="small", show_default=True, type=click.Choice(PRESET_NAMES),
              help="Preset: tiny (CPU demo), small (1 GPU), base (several GPUs).")  # fmt: skip
@click.option(
    "--resume", default="auto", show_default=True,
    help="auto: continue from RUN's newest loadable checkpoint if any; never: refuse if RUN has checkpoints; "
    "or a checkpoint PATH. A resume may change run control (steps, cadences, device, precision) but not the data.",
)  # fmt: skip
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON file of nested overrides applied on the preset (see train/config.py).")  # fmt: skip
@click_options(TrainConfig, preset_defaults=True)
def main(run: Path, model: str, resume: str, config_file: str | None, **fields) -> None:
    """Pre-train a masked video model on clip shards (single process or under torchrun).

    Exit codes: 0 success; 2 usage error (bad option or config value, missing shards, frame size not
    a multiple of the patch size, a resume that changes the data); 1 failure (unreadable or damaged
    data, manifest or checkpoint, unwritable run folder or full disk, the run folder in use by
    another mvm-train); 3 stopped after too many non-finite steps in a row (a checkpoint is written
    first).
    """
    console = Console(stderr=True, soft_wrap=True)

    def fail(message: str, code: int) -> None:
        console.print(f"[red]mvm-train: {message}", highlight=False)
        sys.exit(code)

    def warn(message: str) -> None:
        console.print(f"[yellow]mvm-train: {message}", highlight=False)

    try:
        config = resolve_config(model, config_file, fields)
    except DamagedShardError as error:  # a damaged manifest: the data on disk, not the request
        fail(f"data error: {error}", EXIT_FAILURE)
    except (ValueError, FileNotFoundError) as error:
        raise click.UsageError(str(error)) from None

    # One writer per run folder: the lead process (rank 0 under torchrun; the other ranks write only
    # their keys-rank{R}.jsonl) holds the lock for the whole run, before it reads a checkpoint or
    # writes anything. A second mvm-train on the folder exits 1 at once (BusyError names the holder).
    lead = int(os.environ.get("RANK", "0")) == 0
    try:
        with exclusive_lock(run, "mvm-train") if lead else contextlib.nullcontext():
            config, state = resumed(config, resume, run, warn)
            from mvm.train.loop import train  # imported late: --help and usage errors stay fast

            code = train(config, run, state, console)
    except CheckpointError as error:
        fail(str(error), EXIT_FAILURE)
    except ShardError as error:
        # Errors raised in a DataLoader worker arrive wrapped with the worker's traceback; its last line is ours.
        last = str(error).strip().splitlines()[-1]
        message = last.split("ShardError: ", 1)[-1]  # drop "mvm.shards.[Damaged]ShardError: " if wrapped
        fail(f"data error: {message}", EXIT_FAILURE)
    except OutputError as error:
        fail(str(error), EXIT_FAILURE)
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to resume from the newest checkpoint", 130)
    sys.exit(code)


def resumed(config: TrainConfig, resume: str, run: Path, warn) -> tuple[TrainConfig, dict | None]:
    """(config to train with, checkpoint state or None) for --resume; click.UsageError when the resume
    is refused (`never` on a folder with checkpoints, other data than the checkpoint's run)."""
    try:
        state = resume_state(resume, run, warn=warn)
        if state is None:
            return config, None
        check_same_data(config, state)
    except CheckpointError:
        raise
    except (ValueError, FileNotFoundError) as error:
        raise click.UsageError(str(error)) from None
    config, ignored = resumed_config(config, state["config"])
    if ignored:
        warn(f"resuming with the checkpoint's settings; ignored requested changes to: {', '.join(ignored)}")
    return config, state


if __name__ == "__main__":
    main()
