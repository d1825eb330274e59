"""mvm-train: stream clip shards and pre-train a masked video model.

Single process (CPU or one GPU):
    mvm-train --shards shards/train --out runs/small --model small
DDP on one machine, K processes (gloo on CPU, NCCL on GPU; rank and world come from torchrun):
    torchrun --nproc_per_node=K -m train.cli --shards shards/train --out runs/small --model small
Multi-node under Slurm (one torchrun per node):
    srun torchrun --nnodes=$SLURM_NNODES --nproc_per_node=4 --rdzv_backend=c10d \\
        --rdzv_endpoint=$MASTER_ADDR:29500 -m train.cli --shards ... --out ...
CPU smoke test (a few seconds):
    mvm-train --shards demo/shards/train --out /tmp/smoke --model tiny --steps 20 --device cpu

The run folder RUN holds config.json, metrics.jsonl, keys-rank{R}.jsonl (the clip keys each step
consumed), loss.png, viz/step-NNNNNN.png and checkpoints/step-NNNNNN/. Rerunning the same
command resumes from the newest complete checkpoint (--resume auto) and continues the same data
stream mid-epoch.

Exit codes: 0 success; 2 usage error (bad option, unknown preset, missing shards); 1 unreadable
data; 3 stopped after too many non-finite steps in a row (a checkpoint is written first).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from train import checkpoint
from train.config import TrainConfig, apply_overrides, load_overrides, preset, to_dict
from train.data import (
    ShardError,
    batches,
    clip_shape,
    epoch_samples,
    resolve_shards,
    shard_clip_counts,
    to_video,
)
from train.diagnostics import collapse_reasons, fixed_mask, logged_step_diagnostics
from train.engine import build_optimizer, lr_at, train_step
from train.metrics import MetricsLog, peak_mem_mb, plot_curves, read_jsonl, summary_rows, truncate_after
from train.model import build_model, make_mask
from train.split import plan_epoch, steps_per_epoch
from train.viz import fixed_viz_inputs, render

EXIT_DATA, EXIT_NONFINITE = 1, 3
RUN_CONTROL_FIELDS = (
    "steps", "device", "compile", "log_every", "viz_every", "viz_shards", "viz_clips", "ckpt_every", "keep_ckpts", "max_nonfinite",
    "collapse_rankme", "collapse_time_spread", "starvation_frac", "probe_every", "probe_shards", "probe_clips", "debug_nan_at_step",
)  # fmt: skip
"""Fields a resumed run takes from the command line; everything else comes from the checkpoint."""


def resolve_config(options: dict) -> TrainConfig:
    """Preset -> --config file -> explicit flags -> data shape from the shards."""
    config = preset(options["model"])
    if options["config"]:
        config = apply_overrides(config, load_overrides(options["config"]))
    flags = {
        "steps": options["steps"], "seed": options["seed"], "device": options["device"],
        "compile": options["compile"], "log_every": options["log_every"], "viz_every": options["viz_every"],
        "viz_shards": options["viz_shards"],
        "ckpt_every": options["ckpt_every"], "keep_ckpts": options["keep_ckpts"],
        "max_nonfinite": options["max_nonfinite"], "probe_every": options["probe_every"],
        "probe_shards": options["probe_shards"], "probe_clips": options["probe_clips"],
        "model": {"mask_ratio": options["mask_ratio"], "mask_type": options["mask_type"],
                  "norm_pix_loss": options["norm_pix_loss"]},
        "data": {"shards": options["shards"], "batch_size": options["batch_size"], "workers": options["workers"],
                 "decoder": options["decoder"], "on_bad_sample": options["on_bad_sample"]},
        "optim": {"lr": options["lr"]},
    }  # fmt: skip
    given = {
        k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
        for k, v in flags.items()
    }
    config = apply_overrides(config, {k: v for k, v in given.items() if v is not None})
    clip_len, size = clip_shape(resolve_shards(config.data.shards))
    return apply_overrides(config, {"model": {"clip_len": clip_len, "image_size": size}})


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world, device) from torchrun's environment; one process when WORLD_SIZE is unset."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda but no CUDA device is available")
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world,
            device_id=device if use_cuda else None,
        )
    return rank, world, device


def load_resume_state(resume: str, run: Path) -> dict | None:
    """The checkpoint state to continue from, or None for a fresh run."""
    if resume == "never":
        if checkpoint.complete_checkpoints(run):
            raise click.UsageError(f"{run} already holds checkpoints; use --resume auto or another --out")
        return None
    if resume == "auto":
        return checkpoint.load_state(run) if checkpoint.complete_checkpoints(run) else None
    return checkpoint.load_state(resume)


def merge_resumed_config(requested: TrainConfig, saved: dict, console: Console) -> TrainConfig:
    """The checkpoint's config with run-control fields (steps, cadences, device, ...) from the command line."""
    config = apply_overrides(TrainConfig(), saved)
    config = apply_overrides(config, {name: getattr(requested, name) for name in RUN_CONTROL_FIELDS})
    wanted = to_dict(requested)
    ignored = [name for name in ("seed", "preset") if wanted[name] != saved[name]]
    for section in ("model", "data", "optim"):
        ignored += [f"{section}.{k}" for k, v in wanted[section].items() if v != saved[section][k]]
    if ignored:
        console.print(
            f"[yellow]resuming with the checkpoint's settings; ignored requested changes to: {', '.join(ignored)}"
        )
    return config


def mask_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Masks are a pure function of (seed, step, rank): a resumed run draws the same masks."""
    state = np.random.SeedSequence([seed, step, rank, 0x4D41534B]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def online_probe(config: TrainConfig):
    """train.online_probe.OnlineProbe when --probe-every is set; None otherwise."""
    if config.probe_every <= 0:
        return None
    if not config.probe_shards:
        raise click.UsageError("--probe-every needs --probe-shards")
    # Imported here: it pulls in scikit-learn, which a run without --probe-every never needs.
    from train.online_probe import OnlineProbe

    return OnlineProbe(
        resolve_shards(config.probe_shards), max_clips=config.probe_clips, decoder=config.data.decoder
    )


def train(
    config: TrainConfig, run: Path, resume_state: dict | None, stop_after: int | None, console: Console
) -> int:
    """The training loop; returns the process exit code."""
    rank, world, device = setup_distributed(config.device)
    lead = rank == 0
    urls = resolve_shards(config.data.shards)
    counts = shard_clip_counts(urls)
    cfg_m, cfg_d = config.model, config.data
    frame_shape = (cfg_m.clip_len, *cfg_m.image_size, 3)
    probe = online_probe(config) if lead else None

    torch.manual_seed(config.seed)
    model = build_model(cfg_m).to(device)
    optimizer = build_optimizer(model, config.optim)
    step, epoch, epoch_steps, consumed = 0, 0, 0, 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        checkpoint.set_rng_state(resume_state["rng"])
        step, position = resume_state["step"], resume_state["data"]
        if position["world"] == world:
            epoch, epoch_steps, consumed = (
                position["epoch"],
                position["epoch_steps"],
                position["consumed"][rank],
            )
        else:  # another world size splits the data differently: start the next epoch cleanly
            epoch = position["epoch"] + 1
    step_model = torch.compile(model) if config.compile else model
    model.train()

    run.mkdir(parents=True, exist_ok=True)
    keys_path = run / f"keys-rank{rank}.jsonl"
    truncate_after(keys_path, step)
    keys_log = MetricsLog(keys_path)
    log = None
    if lead:
        truncate_after(run / "metrics.jsonl", step)
        (run / "config.json").write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
        log = MetricsLog(run / "metrics.jsonl")
        if resume_state is not None:
            log.write({"event": "resume", "step": step, "epoch": epoch, "epoch_steps": epoch_steps})
        params = sum(p.numel() for p in model.parameters())
        console.print(
            f"mvm-train: {len(urls)} shards, {sum(counts)} clips {frame_shape[:3]}, world {world} on {device}, "
            f"preset {config.preset}, {params / 1e6:.2f}M params, steps {step} -> {config.steps}"
        )

    def save_checkpoint() -> None:
        positions = [None] * world
        if world > 1:
            dist.all_gather_object(positions, consumed)
        else:
            positions = [consumed]
        if lead:
            data = {"epoch": epoch, "epoch_steps": epoch_steps, "consumed": positions, "world": world}
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "data": data,
                     "rng": checkpoint.rng_state()}  # fmt: skip
            checkpoint.save(run, step, state, config, config.keep_ckpts)

    # The same validation clips and masks in every RUN/viz picture (train/viz.py).
    viz_inputs = fixed_viz_inputs(config, model.patches_per_frame) if lead else None
    # One mask for every clip of the batch the collapse signals are computed on (train/diagnostics.py).
    shared_mask_ids = fixed_mask(cfg_m, model.patches_per_frame, 1, config.seed)[0][0]
    window: dict[str, float] = {}
    nonfinite_run, exit_code = 0, 0
    video = mask = stats = None
    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=console, disable=not lead,
    )  # fmt: skip
    with progress:
        task = progress.add_task("train", total=config.steps, completed=step, info="")
        while step < config.steps and exit_code == 0:
            plan = plan_epoch(counts, world, cfg_d.workers, config.seed, epoch)
            epoch_total = steps_per_epoch(plan, cfg_d.batch_size)
            if epoch_total == 0:
                raise ShardError(
                    f"{sum(counts)} clips are fewer than world {world} x batch {cfg_d.batch_size} per step"
                )
            samples = epoch_samples(urls, plan[rank], consumed, cfg_d, config.seed, epoch, rank, frame_shape)
            batch_iter = batches(samples, cfg_d.batch_size)
            stream_ended = False
            while epoch_steps < epoch_total and step < config.steps:
                start = time.perf_counter()
                item = next(batch_iter, None)
                if world > 1 and cfg_d.on_bad_sample == "skip":
                    # Skipped samples can leave one rank short of a batch: all ranks end the epoch together.
                    have = torch.tensor([0.0 if item is None else 1.0], device=device)
                    dist.all_reduce(have, op=dist.ReduceOp.MIN)
                    item = item if have.item() else None
                if item is None:
                    stream_ended = True
                    break
                keys, frames, used, bad = item
                data_s = time.perf_counter() - start
                consumed, epoch_steps = consumed + used, epoch_steps + 1
                for reason in bad:
                    console.print(f"[yellow]rank {rank}: skipped bad sample: {reason}")
                    if log:
                        log.write({"event": "bad_sample", "step": step, "rank": rank, "detail": reason})
                keys_log.write({"step": step + 1, "keys": keys})

                video = to_video(frames, device)
                ids_keep, mask = make_mask(
                    video.shape[0], cfg_m.clip_len, model.patches_per_frame, cfg_m.mask_ratio, cfg_m.mask_type,
                    mask_generator(config.seed, step, rank), cfg_m.mask_tubelet,
                )  # fmt: skip
                stats = train_step(
                    step_model, optimizer, video, ids_keep.to(device), mask.to(device),
                    lr=lr_at(step, config.optim, config.steps), grad_clip=config.optim.grad_clip, world=world,
                    autocast=device.type == "cuda", poison=step == config.debug_nan_at_step,
                )  # fmt: skip
                step += 1
                step_s = time.perf_counter() - start

                if stats.finite:
                    nonfinite_run = 0
                    for name, value in (("loss", stats.loss), ("grad_norm", stats.grad_norm),
                                        ("emb_std", stats.emb_std), ("emb_norm", stats.emb_norm)):  # fmt: skip
                        window[name] = window.get(name, 0.0) + value
                    window["finite_steps"] = window.get("finite_steps", 0) + 1
                else:
                    nonfinite_run += 1
                    if log:
                        log.write({"event": "nonfinite", "step": step, "loss": stats.loss, "grad_norm": stats.grad_norm,
                                   "in_a_row": nonfinite_run})  # fmt: skip
                for name, value in (
                    ("steps", 1),
                    ("data_s", data_s),
                    ("step_s", step_s),
                    ("comm_s", stats.comm_s),
                ):
                    window[name] = window.get(name, 0.0) + value

                if step % config.log_every == 0 or step == config.steps:
                    record = log_window(
                        window,
                        step,
                        lr_at(step - 1, config.optim, config.steps),
                        world,
                        cfg_d.batch_size,
                        device,
                    )
                    if log and record:
                        record.update(logged_step_diagnostics(model, video, mask, shared_mask_ids))
                        log.write(record)
                        warn_if_unhealthy(record, config, log, console)
                        progress.update(
                            task, info=f"loss {record['loss']:.4f}  {record['clips_per_s']:.1f} clips/s"
                        )
                    window = {}
                progress.update(task, completed=step)

                if nonfinite_run >= config.max_nonfinite:
                    save_checkpoint()
                    if log:
                        log.write(
                            {
                                "event": "stopped",
                                "step": step,
                                "reason": f"{nonfinite_run} non-finite steps in a row",
                            }
                        )
                    console.print(
                        f"[red]stopped at step {step}: {nonfinite_run} non-finite steps in a row "
                        f"(loss {stats.loss}, grad norm {stats.grad_norm}); checkpoint written with the last finite "
                        "weights. Lower --lr, check the data, or raise max_nonfinite."
                    )
                    exit_code = EXIT_NONFINITE
                    break
                if probe is not None and step % config.probe_every == 0:
                    model.eval()
                    result = probe.evaluate(model)
                    model.train()
                    log.write({"step": step, **{f"probe_{name}": value for name, value in result.items()}})
                if lead and step % config.viz_every == 0:
                    render(model, *viz_inputs, step, run / "viz" / f"step-{step:06d}.png")
                if step % config.ckpt_every == 0:
                    save_checkpoint()
                if stop_after is not None and step >= stop_after:
                    console.print(
                        f"stopping after step {step} (--stop-after-steps): no final checkpoint, as a kill"
                    )
                    keys_log.close()
                    if log:
                        log.close()
                    return 0
            del batch_iter, samples
            if stream_ended or epoch_steps >= epoch_total:
                epoch, epoch_steps, consumed = epoch + 1, 0, 0

    if exit_code == 0:
        if step % config.ckpt_every:
            save_checkpoint()
        if lead and video is not None and step % config.viz_every:
            render(model, *viz_inputs, step, run / "viz" / f"step-{step:06d}.png")
    keys_log.close()
    if lead:
        log.close()
        records = read_jsonl(run / "metrics.jsonl")
        plot_curves(records, run / "loss.png")
        table = Table(title=f"mvm-train summary: {run}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in summary_rows(records):
            table.add_row(name, value)
        console.print(table)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return exit_code


def log_window(
    window: dict, step: int, lr: float, world: int, batch_size: int, device: torch.device
) -> dict | None:
    """One metrics.jsonl step line from the sums over the steps since the last line (None if all non-finite)."""
    finite = window.get("finite_steps", 0)
    if not finite:
        return None
    steps, step_s = window["steps"], window["step_s"]
    record = {
        "step": step,
        "loss": window["loss"] / finite,
        "lr": lr,
        "grad_norm": window["grad_norm"] / finite,
        "emb_std": window["emb_std"] / finite,
        "emb_norm": window["emb_norm"] / finite,
        "clips_per_s": steps * batch_size * world / step_s,
        "data_wait_frac": window["data_s"] / step_s,
        "step_time_s": step_s / steps,
        "peak_mem_mb": peak_mem_mb(device),
    }
    if world > 1:
        record["comm_frac"] = window["comm_s"] / step_s
    return record


def warn_if_unhealthy(record: dict, config: TrainConfig, log: MetricsLog, console: Console) -> None:
    """Collapse and starvation events (their own metrics.jsonl lines and a console warning)."""
    reasons = collapse_reasons(record, config.collapse_rankme, config.collapse_time_spread)
    if reasons:
        log.write({"event": "collapse", "step": record["step"], "rankme": record["rankme"],
                   "time_spread": record["time_spread"]})  # fmt: skip
        console.print(f"[yellow]step {record['step']}: encoder collapse? {'; '.join(reasons)}")
    if record["data_wait_frac"] > config.starvation_frac:
        log.write({"event": "starvation", "step": record["step"], "data_wait_frac": record["data_wait_frac"]})
        console.print(
            f"[yellow]step {record['step']}: {record['data_wait_frac']:.0%} of step time waiting for data: "
            "add --workers or faster storage"
        )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--shards",
    required=True,
    help="Shard spec: brace pattern, folder with manifest.json, glob, or comma list.",
)
@click.option(
    "--out",
    "run",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder (created; resumed if it holds checkpoints).",
)
@click.option(
    "--model",
    default="small",
    show_default=True,
    help="Preset: tiny (CPU demo), small (1 GPU), base (several GPUs).",
)
@click.option("--steps", type=int, help="Total optimizer steps.  [default: preset's]")
@click.option("--batch-size", type=int, help="Clips per step per rank.  [default: preset's]")
@click.option(
    "--workers",
    type=int,
    help="Decoder processes per rank; 0 decodes in the training process.  [default: preset's]",
)
@click.option(
    "--mask-ratio",
    type=float,
    help="Share of tokens hidden from the encoder.  [default: preset's; 0.9 for small/base]",
)
@click.option(
    "--mask-type",
    type=click.Choice(["tube", "tubelet", "random"]),
    help="Tube (same patches every frame), tubelet (same patches for mask_tubelet frames) or random "
    "space-time.  [default: preset's]",
)
@click.option(
    "--norm-pix-loss/--raw-pix-loss",
    default=None,
    help="Per-patch normalized or raw pixel targets.  [default: preset's]",
)
@click.option("--lr", type=float, help="Peak learning rate (warmup then cosine).  [default: preset's]")
@click.option("--seed", type=int, help="Root seed for init, shard order, shuffling and masks.  [default: 0]")
@click.option(
    "--resume",
    default="auto",
    show_default=True,
    help="auto: continue from RUN's newest complete checkpoint if any; never: refuse if RUN has checkpoints; or a checkpoint PATH.",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON file of nested overrides applied on the preset (see train/config.py).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="auto picks CUDA when available.  [default: auto]",
)
@click.option("--decoder", type=click.Choice(["decord", "pyav"]), help="Video decoder.  [default: decord]")
@click.option(
    "--on-bad-sample",
    type=click.Choice(["error", "skip"]),
    help="Unreadable shard/sample: stop with its name (error) or skip, count and log it (skip).  [default: error]",
)
@click.option("--log-every", type=int, help="Steps per metrics.jsonl line.  [default: preset's]")
@click.option("--viz-every", type=int, help="Steps between RUN/viz pictures.  [default: preset's]")
@click.option(
    "--viz-shards",
    help="Validation shards whose clips RUN/viz draws (fixed per run).  [default: --probe-shards, else --shards]",
)
@click.option("--ckpt-every", type=int, help="Steps between checkpoints.  [default: preset's]")
@click.option("--keep-ckpts", type=int, help="Complete checkpoints kept.  [default: 3]")
@click.option(
    "--max-nonfinite",
    type=int,
    help="Stop (with a checkpoint, exit 3) after this many non-finite steps in a row.  [default: 5]",
)
@click.option("--compile/--no-compile", default=None, help="torch.compile the model.  [default: off]")
@click.option(
    "--probe-every",
    type=int,
    help="Steps between online ego-motion probes logged to metrics.jsonl (0 = off).  [default: 0]",
)
@click.option(
    "--probe-shards", help="Shard spec the online probe reads (scenes disjoint from training shards)."
)
@click.option("--probe-clips", type=int, help="Clips the online probe reads.  [default: 256]")
@click.option(
    "--stop-after-steps",
    type=int,
    help="Testing: exit after this step without a final checkpoint, as a kill would.",
)
def main(**options) -> None:
    """Pre-train a masked video model on clip shards (single process or under torchrun).

    Exit codes: 0 success; 2 usage error; 1 unreadable data; 3 stopped after too many non-finite steps.
    """
    console = Console(stderr=True, soft_wrap=True)
    run = options["run"]
    try:
        requested = resolve_config(options)
        resume_state = load_resume_state(options["resume"], run)
    except (ValueError, FileNotFoundError) as error:
        raise click.UsageError(str(error)) from error
    config = (
        requested
        if resume_state is None
        else merge_resumed_config(requested, resume_state["config"], console)
    )
    try:
        code = train(config, run, resume_state, options["stop_after_steps"], console)
    except ShardError as error:
        # Errors raised in a DataLoader worker arrive wrapped with the worker's traceback; its last line is ours.
        message = str(error).strip().splitlines()[-1].removeprefix(f"{ShardError.__module__}.ShardError: ")
        console.print(f"[red]data error: {message}", highlight=False)
        sys.exit(EXIT_DATA)
    sys.exit(code)


if __name__ == "__main__":
    main()
