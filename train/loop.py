"""The training loop, top to bottom: set-up, the step loop over a data stream, logging,
pictures, checkpoints, shutdown. train/cli.py only turns options into a TrainConfig.

One process per rank (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain process is rank 0 of 1).
Per step, on every rank:
    data_stream -> (position, batch of B clips uint8 (B, T, H, W, 3))
    -> video float (B, T, 3, H, W) on the device
    -> engine.step_on_batch: masks (seeded by seed, step, rank), train_step (DDP averages gradients
       during backward; all ranks agree to skip a non-finite update)
    -> StepStats as device tensors, kept in the logging window (train/log_window.py).
Every `log_every` steps the window is read back in one host-device transfer (the only sync on
ordinary steps) and written as one metrics.jsonl line; pictures and checkpoints (`Checkpointer`)
follow their own cadences. A checkpoint holds the model, optimizer, RNG states and every rank's data position,
so a resumed run continues the same data stream mid-epoch (tests/test_train_cli.py checks the clip
keys are identical to an uninterrupted run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
from mvm.train.data import EpochPlans, batches, rank_reader
from mvm.train.diagnostics import fixed_mask, logged_step_diagnostics
from mvm.train.engine import build_optimizer, load_optimizer_state, lr_at, step_on_batch, wrap_model
from mvm.train.heldout import HeldoutMonitor, heldout_collapse_reason
from mvm.train.log_window import LogWindow, write_window
from mvm.train.masks import hidden_fraction
from mvm.train.metrics import (
    MetricsLog,
    plot_curves,
    read_jsonl,
    summary_rows,
    tensorboard_writer,
    truncate_after,
)
from mvm.train.model import build_model, renamed_keys
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
    urls: list[str],
    counts: list[int],
    config: TrainConfig,
    rank: int,
    world: int,
    start: Position,
    on_bad: Callable[[str], None],
    pin_memory: bool = False,
) -> Iterator[tuple[Position, tuple[list[str], torch.Tensor, int]]]:
    """Endless (position after the batch, (keys, frames uint8 (B, T, H, W, 3), used)); each skipped
    bad sample's reason goes to `on_bad` when it is read (mvm.train.data.batches); batches pinned for a CUDA device.

    Each epoch is planned by mvm.train.split (the same plan on every rank, no communication) and
    every rank yields exactly `steps_per_epoch` batches, so no rank waits at a collective another
    never reaches. `start` resumes mid-epoch: already consumed samples are skipped undecoded. One set of
    DataLoader workers, two steps' clips ahead, serves every epoch until this generator is closed.
    """
    cfg_d = config.data
    frame_shape = (config.model.clip_len, *config.model.image_size, 3)
    plans = EpochPlans(tuple(counts), world, cfg_d.workers, config.seed, rank)
    reader = rank_reader(urls, plans, cfg_d, config.seed, rank, start.epoch, start.consumed, frame_shape)
    epoch, epoch_steps, consumed = start.epoch, start.epoch_steps, start.consumed
    while True:
        plan = plan_epoch(counts, world, cfg_d.workers, config.seed, epoch)
        # With repeat_aug K a step reads batch_size / K clips (each fills K rows of the batch).
        epoch_total = steps_per_epoch(plan, cfg_d.batch_size // cfg_d.repeat_aug)
        if epoch_total == 0:
            raise ShardError(
                f"{sum(counts)} clips are fewer than world {world} x batch {cfg_d.batch_size} per step"
            )
        batch_iter = batches(reader.samples(epoch), cfg_d.batch_size, cfg_d.repeat_aug, on_bad, pin_memory)
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


def build_training(
    config: TrainConfig, device: torch.device, resume_state: dict | None
) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
    """(model, optimizer, steps taken): fresh seeded weights, the same on every rank, or the
    checkpoint's model, optimizer, RNG states and step when resuming."""
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = build_model(config.model).to(device)
    optimizer = build_optimizer(model, config.optim)
    if resume_state is None:
        return model, optimizer, 0
    model.load_state_dict(resume_state["model"])
    load_optimizer_state(
        optimizer, model, resume_state["optimizer"], list(renamed_keys(resume_state["model"]))
    )
    checkpoint.set_rng_state(resume_state["rng"])
    return model, optimizer, resume_state["step"]


def open_logs(
    config: TrainConfig, run: Path, rank: int, step: int, resumed_at: Position | None
) -> tuple[MetricsLog, MetricsLog | None]:
    """(this rank's log of the clip keys each step consumed, rank 0's metrics.jsonl or None), both
    cut back to `step` (a resumed run rewrites what came after its checkpoint). Rank 0 also writes
    RUN/config.json and, resuming at `resumed_at`, a resume event."""
    ensure_dir(run)
    truncate_after(run / f"keys-rank{rank}.jsonl", step)
    keys_log = MetricsLog(run / f"keys-rank{rank}.jsonl")
    if rank != 0:
        return keys_log, None
    truncate_after(run / "metrics.jsonl", step)
    write_atomic(run / "config.json", dumps_json(to_dict(config)))
    log = MetricsLog(run / "metrics.jsonl", mirror=tensorboard_writer(run))
    if resumed_at is not None:
        log.write({"event": "resume", "step": step, "epoch": resumed_at.epoch,
                   "epoch_steps": resumed_at.epoch_steps})  # fmt: skip
    return keys_log, log


def banner(config: TrainConfig, urls: list[str], clips: int, world: int, device: torch.device, bf16: bool,
           model: torch.nn.Module, step: int) -> str:  # fmt: skip
    """The line mvm-train starts with: data, world, precision, model size, objective, steps."""
    cfg_m, params = config.model, sum(p.numel() for p in model.parameters())
    return (
        f"mvm-train: {len(urls)} shards, {clips} clips of {cfg_m.clip_len}x{cfg_m.image_size[0]}x"
        f"{cfg_m.image_size[1]}, world {world} on {device} ({'bf16' if bf16 else 'fp32'}"
        f"{', compiled' if config.compile else ''}), preset {config.preset}, {params / 1e6:.2f}M params, "
        f"{cfg_m.mask_type} mask hiding {hidden_fraction(cfg_m):.2f} of the tokens, {cfg_m.prediction} "
        f"prediction, steps {step} -> {config.steps}"
    )


@dataclass
class Checkpointer:
    """Saves RUN's checkpoints: every rank's stream position (a collective), then rank 0 writes the
    model, optimizer, step, data positions, RNG states and the shard set's identity."""

    run: Path
    config: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    rank: int
    world: int
    shard_set: dict
    """checkpoint.shard_set_identity of the training shards: what a resume must find again."""

    def save(self, step: int, position: Position) -> None:
        positions = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(positions, position.consumed)
        else:
            positions = [position.consumed]
        if self.rank == 0:
            data = {"epoch": position.epoch, "epoch_steps": position.epoch_steps, "consumed": positions,
                    "world": self.world}  # fmt: skip
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": step,
                     "data": data, "rng": checkpoint.rng_state(), "shards": self.shard_set}  # fmt: skip
            checkpoint.save(self.run, step, state, self.config, self.config.keep_ckpts)


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
    urls = resolve_shards(config.data.shards)
    counts = shard_clip_counts(urls)
    shard_set = checkpoint.shard_set_identity(urls)  # what a resume must find again (by content)
    probe = online_probe(config) if lead else None
    model, optimizer, step = build_training(config, device, resume_state)
    position = start_position(resume_state, rank, world)
    step_model, comm_timer = wrap_model(model, device, world, config.compile, config.compile_mode)
    model.train()
    bf16 = use_bf16(config, device)
    keys_log, log = open_logs(config, run, rank, step, position if resume_state is not None else None)
    if lead:
        console.print(banner(config, urls, sum(counts), world, device, bf16, model, step))
    checkpointer = Checkpointer(run, config, model, optimizer, rank, world, shard_set)
    # The same validation clips and masks in every RUN/viz picture, so pictures compare over training
    # (train/viz.py); one mask shared by every clip of the batch the collapse signals are computed on
    # (train/diagnostics.py: with per-clip masks, embeddings would differ by their masks alone).
    viz_inputs = fixed_viz_inputs(config) if lead else None
    shared_ids_keep = fixed_mask(config.model, 1, config.seed)[0][0]
    # Token-level RankMe on fixed clips against its value at step 0: a slow collapse (train/heldout.py).
    heldout = HeldoutMonitor.open(config, read_jsonl(run / "metrics.jsonl")) if lead else None
    if lead:
        console.print(f"held-out RankMe and emb_std: {heldout.source}")

    def draw() -> None:
        """RUN/viz/step-NNNNNN.png of the fixed validation clips (rank 0), mirrored to TensorBoard."""
        log.image("viz", render(model, *viz_inputs, step, run / "viz" / f"step-{step:06d}.png"), step)

    def measure_heldout() -> None:
        """RUN/metrics.jsonl's held-out line (rank 0), and a collapse event when its ratio is low."""
        record = heldout.measure(model, step, config.data.batch_size)
        log.write(record)
        reason = heldout_collapse_reason(record, config.collapse_rankme_ratio)
        if reason:
            log.write({"event": "collapse", "step": step, "rankme_heldout": record["rankme_heldout"],
                       "rankme_heldout_ratio": record["rankme_heldout_ratio"]})  # fmt: skip
            console.print(f"[yellow]step {step}: encoder collapse? {reason}")

    def skipped_sample(reason: str) -> None:
        """A bad sample (--on-bad-sample skip) read while filling the batch of step + 1."""
        console.print(f"[yellow]rank {rank}: skipped bad sample: {reason}", highlight=False)
        if log:
            log.write({"event": "bad_sample", "step": step, "rank": rank, "detail": reason})

    # ---- the step loop ---------------------------------------------------------------------------
    pin = device.type == "cuda"
    stream = data_stream(urls, counts, config, rank, world, position, skipped_sample, pin_memory=pin)
    window = LogWindow(config.data.batch_size * world, device, comm_timer)
    video = mask = None
    exit_code = 0
    if lead and step == 0:
        measure_heldout()  # the reference every later held-out line is judged against
    try:
        with progress_bar(console, lead) as progress:
            task = progress.add_task("train", total=config.steps, completed=step, info="")
            fetch_start = time.perf_counter()
            for after, (keys, frames, _) in stream if step < config.steps else ():
                position = after  # what a checkpoint stores
                window.data_s += time.perf_counter() - fetch_start
                keys_log.write({"step": step + 1, "keys": keys})
                video = to_video(frames, device)  # (B, T, 3, H, W) float in [0, 1]
                stats, mask = step_on_batch(step_model, optimizer, video, config, step, rank, bf16=bf16)
                step += 1
                window.add(stats)
                if step % config.log_every == 0 or step == config.steps:  # the one sync of ordinary steps
                    record, events, longest = window.flush(step, lr_at(step - 1, config.optim, config.steps))
                    if record and lead:
                        # copy_loss (what copying the nearest visible patch in time scores) and the
                        # collapse signals, from this step's batch: logged steps only (they sync).
                        record.update(logged_step_diagnostics(model, video, mask, shared_ids_keep))
                    if log:
                        write_window(log, record, events, config, console)
                    if record:
                        progress.update(
                            task, info=f"loss {record['loss']:.4f}  {record['clips_per_s']:.1f} clips/s"
                        )
                    window.restart()
                    if longest >= config.max_nonfinite:
                        # Skipped updates leave the weights finite: the checkpoint holds the last good ones.
                        checkpointer.save(step, position)
                        report_stop(longest, events[-1], step, log, console)
                        exit_code = EXIT_NONFINITE
                        break
                progress.update(task, completed=step)
                with window.paused():  # pictures, online probe, checkpoints: not step time
                    if probe is not None and step % config.probe_every == 0:
                        log.write({"step": step, **probe_metrics(probe, model)})
                    if lead and step % config.viz_every == 0:
                        draw()
                        measure_heldout()
                    if step % config.ckpt_every == 0:
                        checkpointer.save(step, position)
                if step >= config.steps:
                    break
                fetch_start = time.perf_counter()
        if exit_code == 0:  # the final checkpoint and picture (unless the cadence just wrote them)
            if step % config.ckpt_every:
                checkpointer.save(step, position)
            if lead and video is not None and step % config.viz_every:
                draw()
                measure_heldout()
    finally:
        stream.close()  # stops the DataLoader workers, also on an exception
        keys_log.close()
        if log:
            log.close()

    # ---- shutdown: summary, then every rank leaves together ------------------------------------------
    if lead:
        print_summary(run, console)
    if world > 1:
        leave_together()
    return exit_code


def progress_bar(console: Console, lead: bool) -> Progress:
    """The step counter, time left and the last logged loss and speed (rank 0 only)."""
    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=console, disable=not lead,
    )  # fmt: skip


def leave_together() -> None:
    """A barrier before the process group is torn down.

    No rank leaves (and tears the group down) while rank 0 still writes. The barrier also lets
    gloo's worker threads drop the last all-reduce (whose tensors Python has seen) while this
    thread waits without the GIL: a worker that drops it during interpreter shutdown cannot
    take the GIL and aborts the process (SIGABRT, "terminate called without an active
    exception"; about 1 exit in 20 without a barrier in tests/_ddp_step.py).
    """
    dist.barrier()


def probe_metrics(probe, model: torch.nn.Module) -> dict:
    """The online probe's scores of the encoder now, as probe_* metrics (the model evaluated in eval mode)."""
    model.eval()
    result = probe.evaluate(model)
    model.train()
    return {f"probe_{name}": value for name, value in result.items()}


def report_stop(longest: int, last: dict, step: int, log: MetricsLog | None, console: Console) -> None:
    """The stopped event and message after `longest` non-finite steps in a row (`last`: the last one's event)."""
    reason = f"{longest} non-finite steps in a row"
    if log:
        log.write({"event": "stopped", "step": step, "reason": reason})
    console.print(
        f"[red]stopped at step {step}: {reason} (last: loss {last['loss']}, grad norm {last['grad_norm']}); "
        "checkpoint written with the last finite weights. Lower --lr, check the data, or raise --max-nonfinite."
    )


def print_summary(run: Path, console: Console) -> None:
    """The loss curve (RUN/loss.png) and the summary table of RUN/metrics.jsonl."""
    records = read_jsonl(run / "metrics.jsonl")
    if not plot_curves(records, run / "loss.png"):
        console.print("no loss.png: matplotlib is not installed (metrics.jsonl has the numbers)")
    table = Table(title=f"mvm-train summary: {run}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary_rows(records):
        table.add_row(name, value)
    console.print(table)
