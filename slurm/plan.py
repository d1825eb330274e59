"""A scaling sweep's plan: which ingests, training runs and probes to run, in what order, after what.

The sweep varies one axis at a time around a base point (largest dataset scale, base T, one
process): every scale at the base T, every T at the largest scale, every world size at the largest
scale and base T. Each experiment `x{scale}-T{T}-w{world}` trains on the shards of its scale's
scene chunks and is probed against the largest scale's shards and the validation split, so probes
differ only by encoder. A report job ends the sweep.

Skip rules (so re-running a sweep continues it):
- an experiment whose `probe/report.json` exists is kept, not re-planned;
- an ingest whose `manifest.json` exists is complete and not re-planned; an ingest several
  experiments need is planned once, and every one of them waits for it;
- a training run that exists but did not finish resumes (`--resume auto`).

The plan is a list of `Job`s in an order that runs them correctly one after another (--local);
`job_line` prints one as a tab-separated line for slurm/scaling.sh:

    ID <tab> HOW <tab> AFTER <tab> ARGV...

HOW says what the script does with ARGV: `run` runs it here and needs exit 0; `gate` runs it here
and also accepts 3 (mvm-probe's failed gate: a result, not a broken sweep); `ingest` runs it here and
its stdout is the Slurm job that finishes the ingest (slurm/ingest.sh); `cpu` / `gpu` submit it with
`sbatch` and the site's CPU / GPU options. AFTER is `-` or `afterok:ID,ID` / `afterany:ID,...`
(jobs of this plan; those that ran here, or were never submitted, are dropped).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mvm.slurm.settings import SweepSettings, format_size

ROOT = Path(__file__).resolve().parents[1]
"""The repository whose slurm/*.sh and *.sbatch the Slurm jobs run (the checkout holding this module)."""
SYNTH_ARGS = ("--scenes", "16", "--frames-per-scene", "160", "--width", "480")
"""mvm-synth's dataroot for --local when none exists: the demo's (Makefile DEMO_SCENES/FRAMES/WIDTH)."""


@dataclass(frozen=True)
class Job:
    """One step of the plan."""

    id: str
    """Unique name in the plan, e.g. `ingest-T8-train-0`, `train-x4-T8-w2`, `report`."""
    how: str
    """run | gate | ingest | cpu | gpu (module docstring)."""
    argv: tuple[str, ...]
    """The command (local) or the sbatch options, script and its arguments (cpu/gpu)."""
    after: tuple[str, ...] = ()
    """Ids of earlier jobs this one needs."""
    dependency: str = "afterok"
    """Slurm dependency type on `after`: afterok (they succeeded) or afterany (they ended)."""


@dataclass(frozen=True)
class Experiment:
    """One point of the sweep."""

    scale: int
    clip_len: int
    world: int

    @property
    def name(self) -> str:
        return f"x{self.scale}-T{self.clip_len}-w{self.world}"


@dataclass(frozen=True)
class Plan:
    jobs: list[Job]
    """Every job to run or submit, in a runnable order."""
    planned: list[Experiment]
    """Experiments trained and probed by `jobs`."""
    kept: list[Experiment]
    """Experiments already probed (left as they are)."""


def experiments(settings: SweepSettings) -> list[Experiment]:
    """The sweep's points, each once: scales at base T, then T values at max scale, then world sizes."""
    base, top = settings.base_clip_len, settings.max_scale
    points = [Experiment(scale, base, 1) for scale in settings.scales]
    points += [Experiment(top, clip_len, 1) for clip_len in settings.clip_lens]
    points += [Experiment(top, base, world) for world in settings.worlds]
    return list(dict.fromkeys(points))


def scene_chunks(names: Sequence[str], scales: Sequence[int], seed: int) -> list[list[str]]:
    """Chunk K holds the scenes scale K adds to scale K-1, after a seeded shuffle; ValueError if too few.

    Scale s = scales[K] uses chunks 0..K, round(len(names) * s / max(scales)) scenes in all.
    """
    names = list(names)
    random.Random(f"mvm-sweep-{seed}").shuffle(names)
    bounds = [0] + [round(len(names) * scale / scales[-1]) for scale in scales]
    if len(set(bounds)) != len(bounds):
        raise ValueError(f"{len(names)} scenes are too few for dataset scales {' '.join(map(str, scales))}")
    return [names[start:stop] for start, stop in zip(bounds, bounds[1:], strict=False)]


def shard_dir(settings: SweepSettings, clip_len: int, part: str) -> Path:
    """SWEEP/shards/T{T}/{part}: part is `train-K` (scene chunk K) or `val`."""
    return settings.sweep_dir / "shards" / f"T{clip_len}" / part


def scene_list(settings: SweepSettings, index: int) -> Path:
    """SWEEP/scenes/train-K.txt: the scene names of training chunk K, one per line."""
    return settings.sweep_dir / "scenes" / f"train-{index}.txt"


def experiment_dir(settings: SweepSettings, experiment: Experiment) -> Path:
    return settings.sweep_dir / "runs" / experiment.name


def train_shards(settings: SweepSettings, experiment: Experiment) -> list[Path]:
    """The chunks an experiment trains on: those of every scale up to its own."""
    chunks = [index for index, scale in enumerate(settings.scales) if scale <= experiment.scale]
    return [shard_dir(settings, experiment.clip_len, f"train-{index}") for index in chunks]


def probe_train_shards(settings: SweepSettings, clip_len: int) -> list[Path]:
    """The chunks every probe fits its heads on: all of them (the largest scale)."""
    return [shard_dir(settings, clip_len, f"train-{index}") for index in range(len(settings.scales))]


def experiment_record(settings: SweepSettings, experiment: Experiment) -> dict:
    """experiment.json: the experiment's axes and shards (mvm-report reads data_scale, world_size)."""
    return {
        "name": experiment.name,
        "data_scale": experiment.scale,
        "clip_len": experiment.clip_len,
        "world_size": experiment.world,
        "model": settings.model,
        "steps": settings.steps,
        "train_shards": ",".join(map(str, train_shards(settings, experiment))),
        "probe_train_shards": ",".join(map(str, probe_train_shards(settings, experiment.clip_len))),
        "val_shards": str(shard_dir(settings, experiment.clip_len, "val")),
    }


def train_resources(world: int, gpus_per_node: int) -> list[str]:
    """sbatch options for a world-size run: whole GPU nodes, or one gloo task per process on one CPU node."""
    if gpus_per_node > 0:
        per_node = min(world, gpus_per_node)
        return [f"--nodes={math.ceil(world / per_node)}", f"--gpus-per-node={per_node}"]
    return ["--nodes=1", f"--ntasks-per-node={world}", "--gpus-per-node=0"]


def _ingest_job(settings: SweepSettings, out: Path, scenes: str, clip_len: int, after: tuple) -> Job:
    args = ("--dataroot", str(settings.dataroot), "--version", settings.version, "--scenes", scenes,
            "--clip-len", str(clip_len), "--size", format_size(settings.size), "--seed", str(settings.seed),
            "--out", str(out))  # fmt: skip
    job_id = f"ingest-T{clip_len}-{out.name}"
    if settings.mode == "local":
        return Job(job_id, "run", ("mvm-ingest", *args), after)
    logs = str(settings.sweep_dir / "logs")
    return Job(
        job_id, "ingest", ("bash", str(ROOT / "slurm" / "ingest.sh"), "--logs", logs, "--", *args), after
    )


def _train_job(settings: SweepSettings, experiment: Experiment, after: tuple) -> Job:
    home = experiment_dir(settings, experiment)
    shards = ",".join(map(str, train_shards(settings, experiment)))
    args = ("--shards", shards, "--out", str(home / "run"), "--model", settings.model,
            "--steps", str(settings.steps), "--seed", str(settings.seed), *settings.train_args)  # fmt: skip
    job_id = f"train-{experiment.name}"
    if settings.mode == "slurm":  # train_ddp.sbatch adds --resume auto
        options = (f"--job-name={job_id}", *train_resources(experiment.world, settings.gpus_per_node),
                   f"--output={settings.sweep_dir / 'logs' / job_id}-%j.out")  # fmt: skip
        return Job(job_id, "gpu", (*options, str(ROOT / "slurm" / "train_ddp.sbatch"), *args), after)
    if experiment.world == 1:
        return Job(job_id, "run", ("mvm-train", *args, "--resume", "auto"), after)
    # One intra-op thread per process: the processes share this machine's cores.
    torchrun = ("env", "OMP_NUM_THREADS=1", "torchrun", "--standalone", f"--nproc-per-node={experiment.world}",
                "--no-python", "mvm-train")  # fmt: skip
    return Job(job_id, "run", (*torchrun, *args, "--resume", "auto"), after)


def _probe_job(settings: SweepSettings, experiment: Experiment, after: tuple) -> Job:
    home = experiment_dir(settings, experiment)
    probe_shards = ",".join(map(str, probe_train_shards(settings, experiment.clip_len)))
    args = ("--checkpoint", str(home / "run"), "--train-shards", probe_shards,
            "--val-shards", str(shard_dir(settings, experiment.clip_len, "val")), "--out", str(home / "probe"),
            *settings.probe_args)  # fmt: skip
    job_id = f"probe-{experiment.name}"
    if settings.mode == "local":
        return Job(job_id, "gate", ("mvm-probe", *args), after)
    options = (f"--job-name={job_id}", f"--output={settings.sweep_dir / 'logs' / job_id}-%j.out")
    return Job(job_id, "cpu", (*options, str(ROOT / "slurm" / "probe.sbatch"), *args), after)


def _report_job(settings: SweepSettings, probes: tuple) -> Job:
    args = (str(settings.sweep_dir), "--out", str(settings.sweep_dir / "report"))
    # afterany: a failed gate or a failed run is still reported.
    if settings.mode == "local":
        return Job("report", "run", ("mvm-report", *args), probes, "afterany")
    options = ("--job-name=report", f"--output={settings.sweep_dir / 'logs' / 'report'}-%j.out")
    return Job("report", "cpu", (*options, str(ROOT / "slurm" / "report.sbatch"), *args), probes, "afterany")


def _synth_job(settings: SweepSettings) -> Job:
    argv = ("mvm-synth", "--out", str(settings.dataroot), "--version", settings.version, *SYNTH_ARGS)
    return Job("synth", "run", argv)


def _scenes_job(settings: SweepSettings, python: str, after: tuple) -> Job:
    argv = (python, "-m", "mvm.slurm.sweep_cli", "scenes", "--dataroot", str(settings.dataroot),
            "--version", settings.version, "--split", settings.train_split, "--seed", str(settings.seed),
            "--scales", ",".join(map(str, settings.scales)), "--out", str(scene_list(settings, 0).parent))  # fmt: skip
    return Job("scenes", "run", argv, after)


def ingest_inputs(settings: SweepSettings, clip_len: int) -> dict[Path, str]:
    """Shard folder -> its mvm-ingest --scenes value, for every ingest at clip length T (chunks, then val)."""
    inputs = {
        shard_dir(settings, clip_len, f"train-{k}"): f"@{scene_list(settings, k)}"
        for k in range(len(settings.scales))
    }
    return inputs | {shard_dir(settings, clip_len, "val"): settings.val_split}


def plan_sweep(settings: SweepSettings, exists: Callable[[Path], bool], python: str) -> Plan:
    """The jobs still needed, given which output files `exists` (Path.exists, or a set in tests).

    `python` runs `-m mvm.slurm.sweep_cli scenes` (the scene chunks) before the first chunk ingest.
    """
    every = experiments(settings)
    planned = [e for e in every if not exists(experiment_dir(settings, e) / "probe" / "report.json")]
    needed = dict.fromkeys(folder for e in planned for folder in ingest_inputs(settings, e.clip_len))
    missing = [folder for folder in needed if not exists(folder / "manifest.json")]

    jobs: dict[str, Job] = {}
    if (
        settings.mode == "local"
        and missing
        and not exists(settings.dataroot / settings.version / "scene.json")
    ):
        jobs["synth"] = _synth_job(settings)
    dataroot_ready = ("synth",) if "synth" in jobs else ()
    if any(folder.name != "val" for folder in missing):  # a training chunk: its scene list comes first
        jobs["scenes"] = _scenes_job(settings, python, dataroot_ready)
    ingest_ids: dict[Path, str] = {}  # shard folder -> the job that ingests it
    probes = []
    for experiment in planned:
        probe_folders = ingest_inputs(settings, experiment.clip_len)
        for folder, scenes in probe_folders.items():  # each missing ingest once, before its first user
            if folder in missing and folder not in ingest_ids:
                after = ("scenes",) if folder.name != "val" else dataroot_ready
                job = _ingest_job(settings, folder, scenes, experiment.clip_len, after)
                ingest_ids[folder] = job.id
                jobs[job.id] = job
        train_after = tuple(ingest_ids[f] for f in train_shards(settings, experiment) if f in ingest_ids)
        train = _train_job(settings, experiment, train_after)
        probe_after = tuple(ingest_ids[f] for f in probe_folders if f in ingest_ids)
        probe = _probe_job(settings, experiment, (train.id, *probe_after))
        jobs[train.id] = train
        jobs[probe.id] = probe
        probes.append(probe.id)
    jobs["report"] = _report_job(settings, tuple(probes))
    return Plan(list(jobs.values()), planned, [e for e in every if e not in planned])


def job_line(job: Job) -> str:
    """`ID<tab>HOW<tab>AFTER<tab>ARGV...`; ValueError when a field is empty or holds a tab or newline."""
    after = f"{job.dependency}:{','.join(job.after)}" if job.after else "-"
    fields = (job.id, job.how, after, *job.argv)
    for field in fields:
        if not field or "\t" in field or "\n" in field:
            raise ValueError(f"{job.id}: argument {field!r} is empty or holds a tab or newline")
    return "\t".join(fields)
