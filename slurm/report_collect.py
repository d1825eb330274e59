"""Find training runs and their probes on disk and reduce each to one flat record (mvm-report's input).

Layouts understood (written by slurm/scaling.sh, or by hand):
- sweep: `SWEEP/runs/NAME/{experiment.json, run/, probe/}`;
- bare run: `RUN/` (config.json + metrics.jsonl) with its probe in `RUN/probe/` or a sibling `probe/`.
A run is any folder holding both config.json and metrics.jsonl. Their contents are data: a run whose
files are unreadable, not regular files (a FIFO would hang the report) or of the wrong shape is
skipped with the reason, never a traceback.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mvm.report_format import parse_jsonl
from mvm.shards import (
    NotRegularFileError,
    ShardError,
    open_regular,
    read_manifest,
    resolve_shards,
    shard_clip_counts,
)
from mvm.slurm.probe_report import ProbeReportError, parse_probe_report

MAX_DEPTH = 4
"""How deep below a given path runs are looked for (SWEEP/runs/NAME/run is depth 3)."""


@dataclass(frozen=True)
class RunRecord:
    """One training run (and its probe, when there is one), as the report's table and plots use it."""

    name: str
    """Experiment name (the experiment folder's, else the run folder's)."""
    run_dir: str
    """The mvm-train RUN folder."""
    preset: str
    """Model preset the run started from."""
    data_scale: float | None
    """Dataset scale factor from experiment.json (None for a bare run)."""
    clip_len: int
    """T, frames per clip (from the run's config)."""
    world_size: int
    """Training processes (experiment.json, else the number of keys-rank*.jsonl files)."""
    batch_size: int
    """Clips per step per rank."""
    steps: int
    """Last logged training step."""
    n_train_clips: int | None
    """Distinct clips in the training shards (None when the shards are no longer where the run saw them)."""
    clips_seen: int
    """Clips consumed by training: steps x batch_size x world_size."""
    final_loss: float
    """Loss of the last logged step."""
    clips_per_s: float
    """Training throughput over all ranks, mean over the second half of the logged steps (steady state)."""
    step_time_s: float
    """Seconds per optimizer step, second-half mean."""
    data_wait_frac: float
    """Share of step time waiting for data, second-half mean."""
    comm_frac: float | None
    """Share of step time in gradient all-reduce, second-half mean (None for one process)."""
    peak_mem_mb: float
    """Largest peak memory logged (RSS on CPU, max allocated on GPU)."""
    probe_task: str | None
    """The task of the probe columns (ego-motion when probed, else the report's first task)."""
    probe_metric: str | None
    """The probe's primary metric name (balanced_accuracy, r2), None when the run has no probe."""
    probe_pretrained: float | None
    """The pretrained encoder's primary metric."""
    probe_ci: tuple[float, float] | None
    """Its 95% bootstrap CI over validation scenes."""
    probe_random_best: float | None
    """The best randomly initialised encoder's primary metric."""
    probe_difference_ci: tuple[float, float] | None
    """95% CI of pretrained minus best random."""
    probe_gate: str | None
    """"pass" or "fail"."""
    axes: tuple[str, ...] = ()
    """The sweep axes the point belongs to (experiment.json; slurm/grid.py AXES, `base`)."""
    seed: int | None = None
    """Pre-training seed (experiment.json, else the run's config)."""
    world: int = 1
    """Synthetic world of the sweep (experiment.json)."""
    threads_per_process: int | None = None
    """Intra-op threads of each training process (local sweeps)."""
    lr: float | None = None
    """Peak learning rate (the run's config)."""
    n_train_scenes: int | None = None
    """Distinct scenes of the training shards (their manifests)."""
    train_shards: str = ""
    """The training shard spec (experiment.json's, else the run's config)."""
    shard_bytes: int | None = None
    """Bytes of the training shard files."""
    gate_override: bool = False
    """Run under the sweep's --no-gate: scaled without waiting for the base point's gate."""
    tasks: dict = field(default_factory=dict)
    """Every probed task: name -> {metric, pretrained, ci, random_best, difference_ci, gate}."""
    ddp_overhead: float | None = None
    """Exposed DDP overhead: step_time_s / step_time_s of the one-process run with the same data, T,
    preset, per-rank batch, seed and world, minus 1 (None for one process or without such a run)."""
    ddp_overhead_s: float | None = None
    """The same as a difference: seconds per step more than that one-process run."""


def data_key(record: RunRecord) -> float | int | None:
    """What identifies a run's training data: its sweep scale, else its clip count."""
    return record.data_scale if record.data_scale is not None else record.n_train_clips


def with_ddp_overhead(records: list[RunRecord]) -> list[RunRecord]:
    """`records` with ddp_overhead computed: set for a multi-process run with exactly one one-process twin.

    Twins agree on data, T, preset, per-rank batch size, seed and world (not on steps: step time is a
    steady-state mean), so the per-rank work per step is equal and any extra step time is what data
    parallelism costs on these cores (all-reduce not hidden, stragglers, fewer threads per process).
    Several such runs (a sweep's epoch-matched point shares them) leave the one on the `ddp-rank` axis.
    """
    single: dict[tuple, list[RunRecord]] = defaultdict(list)

    def twin_key(record: RunRecord) -> tuple:
        return (
            data_key(record),
            record.clip_len,
            record.preset,
            record.batch_size,
            record.seed,
            record.world,
        )

    for record in records:
        if record.world_size == 1:
            single[twin_key(record)].append(record)
    updated = []
    for record in records:
        twins = single.get(twin_key(record), [])
        if len(twins) > 1:  # in a sweep, the one-process point of the same-per-rank-batch axis
            twins = [twin for twin in twins if "ddp-rank" in twin.axes]
        overhead = seconds = None
        if record.world_size > 1 and len(twins) == 1 and twins[0].step_time_s and record.step_time_s:
            overhead = record.step_time_s / twins[0].step_time_s - 1
            seconds = record.step_time_s - twins[0].step_time_s
        updated.append(replace(record, ddp_overhead=overhead, ddp_overhead_s=seconds))
    return updated


def find_runs(path: Path) -> list[Path]:
    """Run folders at or below `path` (at most MAX_DEPTH levels), sorted."""
    found = []
    pending = [(Path(path), 0)]
    while pending:
        folder, depth = pending.pop()
        if (folder / "config.json").exists() and (folder / "metrics.jsonl").exists():
            found.append(folder)
            continue
        if depth < MAX_DEPTH:
            pending += [(child, depth + 1) for child in folder.iterdir() if child.is_dir()]
    return sorted(found)


def _read_text(path: Path) -> str:
    """The text of a run's file; ValueError naming it when it is not a readable regular file."""
    try:
        with open_regular(path) as handle:
            return handle.read().decode()
    except NotRegularFileError as error:
        raise ValueError(f"{path} is {error.strerror}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None


def _read_json(path: Path) -> dict | None:
    """The JSON object in `path`, None when there is no such file; ValueError naming it otherwise."""
    if not path.exists():
        return None
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds {type(value).__name__}, not a JSON object")
    return value


def _config_fields(config: dict, path: Path) -> tuple[int, int, str]:
    """(data.batch_size, model.clip_len, data.shards) of a run's config.json; ValueError naming it if missing."""
    data, model = config.get("data"), config.get("model")
    fields = (
        data.get("batch_size") if isinstance(data, dict) else None,
        model.get("clip_len") if isinstance(model, dict) else None,
        data.get("shards") if isinstance(data, dict) else None,
    )
    if not (isinstance(fields[0], int) and isinstance(fields[1], int) and isinstance(fields[2], str)):
        raise ValueError(f"{path} has no valid data.batch_size, model.clip_len and data.shards")
    return fields


def _experiment_and_probe(run: Path) -> tuple[Path, dict | None, dict | None]:
    """(experiment folder, experiment.json, probe report.json) of a run, by the layouts above."""
    experiment = _read_json(run.parent / "experiment.json")
    home = run.parent if experiment is not None else run
    for probe_dir in (run / "probe", run.parent / "probe"):
        probe = _read_json(probe_dir / "report.json")
        if probe is not None:
            return home, experiment, probe
    return home, experiment, None


def _count_clips(spec: str) -> int | None:
    try:
        return sum(shard_clip_counts(resolve_shards(spec)))
    except (ShardError, OSError, KeyError, ValueError):
        return None


def _scenes_and_bytes(spec: str) -> tuple[int | None, int | None]:
    """Distinct scenes (the shard folders' manifests) and bytes of the shard files of a shard spec."""
    try:
        urls = resolve_shards(spec)
        folders = dict.fromkeys(Path(url).parent for url in urls)
        scenes = {scene["name"] for folder in folders for scene in read_manifest(folder)["scenes"]}
        return len(scenes), sum(Path(url).stat().st_size for url in urls)
    except (ShardError, OSError, KeyError, ValueError, TypeError):
        return None, None


def _second_half_mean(steps: list[dict], key: str) -> float | None:
    values = [record[key] for record in steps[len(steps) // 2 :] if record.get(key) is not None]
    return sum(values) / len(values) if values else None


def summarize_run(run: Path) -> RunRecord:
    """Reduce one run folder (and its probe) to a RunRecord; ValueError when it logged no step, or
    fewer than its experiment.json plans (a run still going, or stopped: its numbers are no point)."""
    config = _read_json(run / "config.json") or {}
    batch_size, clip_len, shards = _config_fields(config, run / "config.json")
    # A torn last line (a run killed mid-write) is named on stderr and skipped, not the whole run.
    records = parse_jsonl(_read_text(run / "metrics.jsonl"), f"{run}/metrics.jsonl", warn=warnings.warn)
    steps = [record for record in records if "loss" in record and "event" not in record]
    if not steps:
        raise ValueError(f"{run}/metrics.jsonl has no training step yet")
    home, experiment, probe_json = _experiment_and_probe(run)
    experiment = experiment or {}
    world = experiment.get("world_size") or max(1, len(list(run.glob("keys-rank*.jsonl"))))
    last_step = steps[-1]["step"]
    planned = experiment.get("steps")
    if isinstance(planned, int) and last_step < planned:  # still training, or stopped: not a point yet
        raise ValueError(f"unfinished: logged step {last_step} of the {planned} its experiment.json plans")
    spec = experiment.get("train_shards") or shards
    scenes, shard_bytes = _scenes_and_bytes(spec)
    probe = parse_probe_report(probe_json, f"{home}/probe/report.json") if probe_json else None
    task, score = probe.primary if probe else (None, None)
    optim = config.get("optim")
    return RunRecord(
        name=home.name,
        run_dir=str(run),
        preset=config.get("preset", "?"),
        data_scale=experiment.get("data_scale"),
        clip_len=clip_len,
        world_size=world,
        batch_size=batch_size,
        steps=last_step,
        n_train_clips=_count_clips(spec),
        clips_seen=last_step * batch_size * world,
        final_loss=steps[-1]["loss"],
        clips_per_s=_second_half_mean(steps, "clips_per_s"),
        step_time_s=_second_half_mean(steps, "step_time_s"),
        data_wait_frac=_second_half_mean(steps, "data_wait_frac"),
        comm_frac=_second_half_mean(steps, "comm_frac"),
        peak_mem_mb=max(record["peak_mem_mb"] for record in steps),
        probe_task=task,
        probe_metric=score.metric if score else None,
        probe_pretrained=score.pretrained if score else None,
        probe_ci=score.ci if score else None,
        probe_random_best=score.random_best if score else None,
        probe_difference_ci=score.difference_ci if score else None,
        probe_gate=probe.gate if probe else None,
        axes=tuple(experiment.get("axes") or ()),
        seed=experiment.get("seed", config.get("seed")),
        world=experiment.get("world") or 1,
        threads_per_process=experiment.get("threads_per_process"),
        lr=optim.get("lr") if isinstance(optim, dict) else None,
        n_train_scenes=scenes,
        train_shards=spec,
        shard_bytes=shard_bytes,
        gate_override=bool(experiment.get("gate_override")),
        tasks={name: asdict(value) for name, value in probe.tasks.items()} if probe else {},
    )


def collect(paths: list[Path]) -> tuple[list[RunRecord], list[dict]]:
    """Records of every run under `paths` (deduplicated, sorted by name, with their DDP overhead) and the
    skipped ones with why."""
    records, skipped, seen = [], [], set()
    for path in paths:
        for run in find_runs(path):
            if run.resolve() in seen:
                continue
            seen.add(run.resolve())
            try:
                records.append(summarize_run(run))
            except (ValueError, KeyError, TypeError, ProbeReportError) as error:  # files of the wrong shape
                skipped.append({"run": str(run), "reason": f"{type(error).__name__}: {error}"})
    return with_ddp_overhead(sorted(records, key=lambda r: r.name)), skipped
