"""The training loop, top to bottom: set-up, the step loop over a data stream, logging,
pictures, checkpoints, shutdown. train/cli.py only turns options into a TrainConfig.

One process per rank (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain process is rank 0 of 1).
Per step, on every rank:
    data_stream -> (position, batch of B clips uint8 (B, T, H, W, 3))
    -> video float (B, T, 3, H, W) on the device -> mask (seeded by seed, step, rank)
    -> engine.train_step (DDP averages gradients during backward; all ranks agree to skip a
       non-finite update) -> StepStats as device tensors, kept in the logging window.
Every `log_every` steps the window is read back in one host-device transfer (the only sync on
ordinary steps) and written as one metrics.jsonl line; pictures and checkpoints follow their
own cadences. A checkpoint holds the model, optimizer, RNG states and every rank's data position,
so a resumed run continues the same data stream mid-epoch (tests/test_train_cli.py checks the clip
keys are identical to an uninterrupted run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mvm.atomic import ensure_dir, write_atomic
from mvm.report_format import dumps_json
from mvm.shards import ShardError, resolve_shards, shard_clip_counts
from mvm.tensors import to_video
from mvm.train import checkpoint
from mvm.train.config import TrainConfig, to_dict
from mvm.train.data import batches, epoch_samples
from mvm.train.diagnostics import collapse_reasons, fixed_mask, logged_step_diagnostics
from mvm.train.engine import STAT_NAMES, build_optimizer, lr_at, train_step, wrap_model
from mvm.train.metrics import (
    MetricsLog,
    peak_mem_mb,
    plot_curves,
    read_jsonl,
    summary_rows,
    tensorboard_writer,
    truncate_after,
)
from mvm.train.model import build_model, make_mask
from mvm.train.split import plan_epoch, steps_per_epoch
from mvm.train.viz import fixed_viz_inputs, render

EXIT_NONFINITE = 3
"""Exit code after too many non-finite steps in a row (a checkpoint is written first)."""


@dataclass(frozen=True)
class Position:
    """Where a rank is in the data stream after a batch: what a checkpoint stores to resume."""

    epoch: int
    epoch_steps: int
    """Steps taken in this epoch (every rank takes the same number)."""
    consumed: int
    """Samples this rank took from its epoch stream, bad ones included (skip mode)."""


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world, device) from torchrun's environment; NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
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


def data_stream(
    urls: list[str], counts: list[int], config: TrainConfig, rank: int, world: int, start: Position
) -> Iterator[tuple[Position, tuple[list[str], torch.Tensor, int, list[str]]]]:
    """Endless (position after the batch, (keys, frames uint8 (B, T, H, W, 3), used, bad reasons)).

    Each epoch is planned by mvm.train.split (the same plan on every rank, no communication) and
    every rank yields exactly `steps_per_epoch` batches, so no rank waits at a collective another
    never reaches. `start` resumes mid-epoch: already consumed samples are skipped undecoded.
    """
    cfg_d = config.data
    frame_shape = (config.model.clip_len, *config.model.image_size, 3)
    epoch, epoch_steps, consumed = start.epoch, start.epoch_steps, start.consumed
    while True:
        plan = plan_epoch(counts, world, cfg_d.workers, config.seed, epoch)
        # With repeat_aug K a step reads batch_size / K clips (each fills K rows of the batch).
        epoch_total = steps_per_epoch(plan, cfg_d.batch_size // cfg_d.repeat_aug)
        if epoch_total == 0:
            raise ShardError(
                f"{sum(counts)} clips are fewer than world {world} x batch {cfg_d.batch_size} per step"
            )
        samples = epoch_samples(urls, plan[rank], consumed, cfg_d, config.seed, epoch, rank, frame_shape)
        batch_iter = batches(samples, cfg_d.batch_size, cfg_d.repeat_aug)
        while epoch_steps < epoch_total:
            item = next(batch_iter, None)
            if world > 1 and cfg_d.on_bad_sample == "skip":
                # Skipped samples can leave one rank short of a batch: all ranks end the epoch together.
                where = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces device tensors only
                have = torch.tensor([0.0 if item is None else 1.0], device=where)
                dist.all_reduce(have, op=dist.ReduceOp.MIN)
                item = item if have.item() else None
            if item is None:
                break
            consumed, epoch_steps = consumed + item[2], epoch_steps + 1
            yield Position(epoch, epoch_steps, consumed), item
        del batch_iter, samples  # shuts the epoch's DataLoader workers down
        epoch, epoch_steps, consumed = epoch + 1, 0, 0


def start_position(resume_state: dict | None, rank: int, world: int) -> Position:
    """Where this rank's stream starts: the checkpoint's position, or the next epoch when the
    world size changed (another world splits the data differently)."""
    if resume_state is None:
        return Position(0, 0, 0)
    saved = resume_state["data"]
    if saved["world"] != world:
        return Position(saved["epoch"] + 1, 0, 0)
    return Position(saved["epoch"], saved["epoch_steps"], saved["consumed"][rank])


def mask_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Masks are a pure function of (seed, step, rank): a resumed run draws the same masks."""
    state = np.random.SeedSequence([seed, step, rank, 0x4D41534B]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def use_bf16(config: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast: on CUDA unless --precision fp32; never on CPU unless asked for."""
    return config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")


def online_probe(config: TrainConfig):
    """mvm.train.online_probe.OnlineProbe when probe_every is set; None otherwise."""
    if config.probe_every <= 0:
        return None
    # Imported here: it pulls in scikit-learn, which a run without --probe-every never needs.
    from mvm.train.online_probe import OnlineProbe

    return OnlineProbe(
        resolve_shards(config.probe_shards), max_clips=config.probe_clips, decoder=config.data.decoder
    )


def read_window(
    window: list[torch.Tensor], first_step: int, in_a_row: int
) -> tuple[dict, list[dict], int, int]:
    """Turn a logging window of StepStats.values into (means over finite steps, nonfinite events,
    longest non-finite run seen, the run still going at the end). One host-device transfer."""
    rows = torch.stack(window).cpu().tolist()  # (steps, len(STAT_NAMES)): the sync point
    events, longest, sums, finite = [], in_a_row, dict.fromkeys(STAT_NAMES[1:], 0.0), 0
    for offset, row in enumerate(rows):
        values = dict(zip(STAT_NAMES, row, strict=True))
        if values["finite"]:
            in_a_row, finite = 0, finite + 1
            for name in sums:
                sums[name] += values[name]
        else:
            in_a_row += 1
            longest = max(longest, in_a_row)
            events.append({"event": "nonfinite", "step": first_step + offset, "loss": values["loss"],
                           "grad_norm": values["grad_norm"], "in_a_row": in_a_row})  # fmt: skip
    means = {name: total / finite for name, total in sums.items()} if finite else {}
    return means, events, longest, in_a_row


def train(config: TrainConfig, run: Path, resume_state: dict | None, console: Console) -> int:
    """Run (or continue) training; returns the exit code. Closes the process group on every path."""
    rank, world, device = setup_distributed(config.device)
    try:
        return _train(config, run, resume_state, console, rank, world, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(config, run, resume_state, console, rank, world, device) -> int:
    # ---- set-up: data, model, optimizer, resume, logs ------------------------------------------------
    lead = rank == 0
    cfg_m, cfg_d = config.model, config.data
    urls = resolve_shards(config.data.shards)
    counts = shard_clip_counts(urls)
    probe = online_probe(config) if lead else None
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = build_model(cfg_m).to(device)
    optimizer = build_optimizer(model, config.optim)
    step = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        checkpoint.set_rng_state(resume_state["rng"])
        step = resume_state["step"]
    position = start_position(resume_state, rank, world)
    step_model, comm_timer = wrap_model(model, device, world, config.compile)
    model.train()
    bf16 = use_bf16(config, device)

    ensure_dir(run)
    truncate_after(run / f"keys-rank{rank}.jsonl", step)
    keys_log = MetricsLog(run / f"keys-rank{rank}.jsonl")  # the clip keys each step consumed
    log = None
    if lead:
        truncate_after(run / "metrics.jsonl", step)
        write_atomic(run / "config.json", dumps_json(to_dict(config)))
        log = MetricsLog(run / "metrics.jsonl", mirror=tensorboard_writer(run))
        if resume_state is not None:
            log.write(
                {
                    "event": "resume",
                    "step": step,
                    "epoch": position.epoch,
                    "epoch_steps": position.epoch_steps,
                }
            )
        params = sum(p.numel() for p in model.parameters())
        console.print(
            f"mvm-train: {len(urls)} shards, {sum(counts)} clips of {cfg_m.clip_len}x{cfg_m.image_size[0]}x"
            f"{cfg_m.image_size[1]}, world {world} on {device} ({'bf16' if bf16 else 'fp32'}"
            f"{', compiled' if config.compile else ''}), preset {config.preset}, {params / 1e6:.2f}M params, "
            f"steps {step} -> {config.steps}"
        )

    def save_checkpoint() -> None:
        """Every rank's stream position (a collective), then rank 0 writes the checkpoint."""
        positions = [None] * world
        if world > 1:
            dist.all_gather_object(positions, position.consumed)
        else:
            positions = [position.consumed]
        if lead:
            data = {"epoch": position.epoch, "epoch_steps": position.epoch_steps, "consumed": positions,
                    "world": world}  # fmt: skip
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "data": data, "rng": checkpoint.rng_state()}  # fmt: skip
            checkpoint.save(run, step, state, config, config.keep_ckpts)

    # The same validation clips and masks in every RUN/viz picture, so pictures compare over training
    # (train/viz.py); one mask shared by every clip of the batch the collapse signals are computed on
    # (train/diagnostics.py: with per-clip masks, embeddings would differ by their masks alone).
    viz_inputs = fixed_viz_inputs(config, model.patches_per_frame) if lead else None
    shared_ids_keep = fixed_mask(cfg_m, model.patches_per_frame, 1, config.seed)[0][0]

    def draw() -> None:
        """RUN/viz/step-NNNNNN.png of the fixed validation clips (rank 0), mirrored to TensorBoard."""
        path = render(model, *viz_inputs, step, run / "viz" / f"step-{step:06d}.png")
        log.image("viz", path, step)

    # ---- the step loop ---------------------------------------------------------------------------
    stream = data_stream(urls, counts, config, rank, world, position)
    window: list[torch.Tensor] = []  # StepStats.values of the steps since the last log line
    window_start, data_s, paused_s, in_a_row = time.perf_counter(), 0.0, 0.0, 0
    video = mask = None
    exit_code = 0
    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=console, disable=not lead,
    )  # fmt: skip
    try:
        with progress:
            task = progress.add_task("train", total=config.steps, completed=step, info="")
            fetch_start = time.perf_counter()
            for after, (keys, frames, _, bad) in stream if step < config.steps else ():
                position = after  # what save_checkpoint stores
                data_s += time.perf_counter() - fetch_start
                for reason in bad:
                    console.print(f"[yellow]rank {rank}: skipped bad sample: {reason}")
                    if log:
                        log.write({"event": "bad_sample", "step": step, "rank": rank, "detail": reason})
                keys_log.write({"step": step + 1, "keys": keys})

                video = to_video(frames, device)  # (B, T, 3, H, W) float in [0, 1]
                ids_keep, mask = make_mask(
                    video.shape[0], model.token_steps, model.patches_per_frame, cfg_m.mask_ratio, cfg_m.mask_type,
                    mask_generator(config.seed, step, rank), cfg_m.mask_tubelet,
                )  # fmt: skip  # ids_keep (B, L_vis), mask (B, L) bool, True = hidden
                stats = train_step(
                    step_model, optimizer, video, ids_keep.to(device, non_blocking=True),
                    mask.to(device, non_blocking=True), lr=lr_at(step, config.optim, config.steps),
                    grad_clip=config.optim.grad_clip, bf16=bf16,
                )  # fmt: skip
                step += 1
                window.append(stats.values)

                # ---- periodic logging: the one host-device sync of ordinary steps ----------------
                if step % config.log_every == 0 or step == config.steps:
                    means, events, longest, in_a_row = read_window(window, step - len(window) + 1, in_a_row)
                    elapsed = time.perf_counter() - window_start - paused_s
                    comm_s = comm_timer.take_seconds() if comm_timer else 0.0
                    record = None
                    if means:
                        record = {"step": step, **means, "lr": lr_at(step - 1, config.optim, config.steps),
                                  "clips_per_s": len(window) * cfg_d.batch_size * world / elapsed,
                                  "data_wait_frac": data_s / elapsed, "step_time_s": elapsed / len(window),
                                  "peak_mem_mb": peak_mem_mb(device)}  # fmt: skip
                        if world > 1:
                            record["comm_frac"] = comm_s / elapsed
                        if lead:
                            # copy_loss (what copying the nearest visible patch in time scores) and the
                            # collapse signals, from this step's batch: logged steps only (they sync).
                            record.update(logged_step_diagnostics(model, video, mask, shared_ids_keep))
                    if log:
                        for event in events:
                            log.write(event)
                        if record:
                            log.write(record)
                            warn_if_unhealthy(
                                record, config, log, console
                            )  # the collapse and starvation checks
                            info = f"loss {record['loss']:.4f}  {record['clips_per_s']:.1f} clips/s"
                            progress.update(task, info=info)
                    window, data_s, paused_s, window_start = [], 0.0, 0.0, time.perf_counter()
                    if longest >= config.max_nonfinite:
                        # Skipped updates leave the weights finite: the checkpoint holds the last good ones.
                        save_checkpoint()
                        reason = f"{longest} non-finite steps in a row"
                        if log:
                            log.write({"event": "stopped", "step": step, "reason": reason})
                        console.print(
                            f"[red]stopped at step {step}: {reason} (last: loss {events[-1]['loss']}, grad norm "
                            f"{events[-1]['grad_norm']}); checkpoint written with the last finite weights. Lower "
                            "--lr, check the data, or raise --max-nonfinite."
                        )
                        exit_code = EXIT_NONFINITE
                        break
                progress.update(task, completed=step)

                # ---- pictures, online probe, checkpoints (outside the timed window) --------------
                pause = time.perf_counter()
                if probe is not None and step % config.probe_every == 0:
                    model.eval()
                    result = probe.evaluate(model)
                    model.train()
                    log.write({"step": step, **{f"probe_{name}": value for name, value in result.items()}})
                if lead and step % config.viz_every == 0:
                    draw()
                if step % config.ckpt_every == 0:
                    save_checkpoint()
                paused_s += time.perf_counter() - pause
                if step >= config.steps:
                    break
                fetch_start = time.perf_counter()
        # the final checkpoint and picture (unless the cadence just wrote them)
        if exit_code == 0:
            if step % config.ckpt_every:
                save_checkpoint()
            if lead and video is not None and step % config.viz_every:
                draw()
    finally:
        stream.close()  # stops the DataLoader workers, also on an exception
        keys_log.close()
        if log:
            log.close()

    # ---- shutdown: summary, then every rank leaves together ------------------------------------------
    if lead:
        records = read_jsonl(run / "metrics.jsonl")
        if not plot_curves(records, run / "loss.png"):
            console.print("no loss.png: matplotlib is not installed (metrics.jsonl has the numbers)")
        table = Table(title=f"mvm-train summary: {run}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in summary_rows(records):
            table.add_row(name, value)
        console.print(table)
    if world > 1:
        # No rank leaves (and tears the group down) while rank 0 still writes. The barrier also lets
        # gloo's worker threads drop the last all-reduce (whose tensors Python has seen) while this
        # thread waits without the GIL: a worker that drops it during interpreter shutdown cannot
        # take the GIL and aborts the process (SIGABRT, "terminate called without an active
        # exception"; about 1 exit in 20 without a barrier in tests/_ddp_step.py).
        dist.barrier()
    return exit_code


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
