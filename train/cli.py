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
checkpoint (--resume auto) and continues the same data stream mid-epoch.

Options that set a config field are generated from mvm.train/config.py (help = the field's
docstring, range = config.BOUNDS); `OPTIONS` lists which fields are options.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch
from rich.console import Console

from mvm.atomic import OutputError
from mvm.shards import ShardError, clip_shape_of, resolve_shards
from mvm.train.checkpoint import CheckpointError, resume_state, resumed_config
from mvm.train.config import (
    BOUNDS,
    CHOICES,
    TrainConfig,
    apply_overrides,
    bound_problem,
    field_info,
    get_field,
    load_overrides,
    preset,
    size_problem,
    validate,
)

EXIT_FAILURE, EXIT_USAGE = 1, 2
OPTIONS = (
    "data.shards", "steps", "data.batch_size", "data.repeat_aug", "data.workers", "model.mask_ratio", "model.mask_type", "model.mask_tubelet",
    "model.prediction", "model.token_frames", "model.pos_embed", "model.norm_pix_loss", "optim.lr", "seed", "device", "precision", "compile", "data.decoder",
    "data.on_bad_sample", "log_every", "viz_every", "viz_shards", "ckpt_every", "keep_ckpts", "max_nonfinite",
    "probe_every", "probe_shards", "probe_clips",
)  # fmt: skip
"""TrainConfig fields (dotted) offered as options, named after their last part (--batch-size)."""


class Bounded(click.ParamType):
    """An int or float option checked against config.BOUNDS (finite, in range) before anything runs."""

    def __init__(self, kind: type, field: str):
        self.kind, self.field, self.name = kind, field, kind.__name__

    def convert(self, value, param, ctx):
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        problem = bound_problem(self.field, number)
        if problem:
            self.fail(problem, param, ctx)
        return number


def config_option(dotted: str):
    """A click option for one TrainConfig field; its value None means "the preset's"."""
    _, doc = field_info(dotted)
    name, param = dotted.split(".")[-1].replace("_", "-"), dotted.replace(".", "__")
    kind = type(get_field(TrainConfig(), dotted))
    extra = {"required": True} if dotted == "data.shards" else {}
    if kind is bool:
        return click.option(f"--{name}/--no-{name}", param, default=None, help=f"{doc}  [default: preset's]")
    if dotted in CHOICES:
        param_type = click.Choice(CHOICES[dotted])
    elif kind in (int, float):
        param_type = Bounded(kind, dotted)
        low, high, low_open = BOUNDS.get(dotted, (None, None, False))
        if low is not None or high is not None:
            doc += f"  [{'>' if low_open else '>='} {low}" if low is not None else "  ["
            doc += f", <= {high}]" if high is not None else "]"
    else:
        param_type = click.STRING
    suffix = "" if extra else "  [default: preset's]"
    return click.option(f"--{name}", param, type=param_type, default=None, help=doc + suffix, **extra)


def config_options(command):
    for dotted in reversed(OPTIONS):
        command = config_option(dotted)(command)
    return command


def nested(flat: dict) -> dict:
    """{"data__batch_size": 4, "steps": None} -> {"data": {"batch_size": 4}} (None = not given)."""
    out: dict = {}
    for param, value in flat.items():
        if value is not None:
            *sections, name = param.split("__")
            target = out
            for section in sections:
                target = target.setdefault(section, {})
            target[name] = value
    return out


def resolve_config(model: str, config_file: str | None, fields: dict) -> TrainConfig:
    """Preset -> --config file -> explicit options -> clip length and size from the shards' manifest."""
    config = preset(model)
    if config_file:
        config = apply_overrides(config, load_overrides(config_file))
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
@click.option("--model", default="small", show_default=True, type=click.Choice(["tiny", "small", "base"]),
              help="Preset: tiny (CPU demo), small (1 GPU), base (several GPUs).")  # fmt: skip
@click.option(
    "--resume", default="auto", show_default=True,
    help="auto: continue from RUN's newest loadable checkpoint if any; never: refuse if RUN has checkpoints; "
    "or a checkpoint PATH. A resume may change run control (steps, cadences, device, precision) but not the data.",
)  # fmt: skip
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON file of nested overrides applied on the preset (see train/config.py).")  # fmt: skip
@config_options
def main(run: Path, model: str, resume: str, config_file: str | None, **fields) -> None:
    """Pre-train a masked video model on clip shards (single process or under torchrun).

    Exit codes: 0 success; 2 usage error (bad option or config value, missing shards, frame size not
    a multiple of the patch size, a resume that changes the data); 1 failure (unreadable data or
    checkpoint, unwritable run folder); 3 stopped after too many non-finite steps in a row (a
    checkpoint is written first).
    """
    console = Console(stderr=True, soft_wrap=True)

    def fail(message: str, code: int) -> None:
        console.print(f"[red]mvm-train: {message}", highlight=False)
        sys.exit(code)

    def warn(message: str) -> None:
        console.print(f"[yellow]mvm-train: {message}", highlight=False)

    try:
        config = resolve_config(model, config_file, fields)
        state = resume_state(resume, run, warn=warn)
        if state is not None:
            config, ignored = resumed_config(config, state["config"])
            if ignored:
                warn(
                    f"resuming with the checkpoint's settings; ignored requested changes to: {', '.join(ignored)}"
                )
    except CheckpointError as error:
        fail(str(error), EXIT_FAILURE)
    except (ValueError, FileNotFoundError) as error:
        raise click.UsageError(str(error)) from None

    from mvm.train.loop import train  # imported after option checks: --help and usage errors stay fast

    try:
        code = train(config, run, state, console)
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


if __name__ == "__main__":
    main()
