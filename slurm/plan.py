"""A scaling sweep's plan: which syntheses, ingests, training runs and probes to run, in what order, after what.

The points and their axes are slurm/grid.py's. Every point `NAME` trains on the shards of its
scale's scene chunks of its world and T and is probed against the smallest scale's chunk (the
same heads' training clips for every point of a world) and the validation split, so probes differ
only by encoder. A report job ends the sweep.

The design's rule "the gate must pass before scaling" is part of the plan: the base point is
trained and probed first and its probe is the gate. Locally its job is `gate` (a failed gate stops
the sweep, exit 3, after the report); on Slurm every other point's training job depends on the base
probe's success (afterok; mvm-probe exits 3 on a failed gate, so Slurm marks it FAILED and cancels
the dependants). When the base was probed by an earlier run of the sweep, a `gate` job re-reads its
report.json here (`sweep_cli gate`). `gate=False` (--no-gate) drops all of that and every point's
experiment.json says it ran under the override.

Skip rules (so re-running a sweep continues it):
- an experiment whose `probe/report.json` exists (a multi-process one: its final checkpoint, as those
  are systems rows and not probed) is kept, not re-planned;
- an ingest whose `manifest.json` exists is complete and not re-planned; an ingest several
  experiments need is planned once, and every one of them waits for it;
- a training run that exists but did not finish resumes (`--resume auto`).

The plan is a list of `Job`s in an order that runs them correctly one after another (--local);
`job_line` prints one as a tab-separated line for slurm/scaling.sh:

    ID <tab> HOW <tab> AFTER <tab> ARGV...

HOW says what the script does with ARGV: `run` runs it here and needs exit 0; `probe` runs it here
and also accepts 3 (a failed gate of a scaled point: a result, not a broken sweep); `gate` runs it
here, and exit 3 stops the sweep (exit 3) after running the `report` job; `ingest` runs it here and
its stdout is the Slurm job that finishes the ingest (slurm/ingest.sh); `cpu` / `gpu` submit it
with `sbatch` and the site's CPU / GPU options. AFTER is `-` or `afterok:ID,ID` / `afterany:ID,...`
(jobs of this plan; those that ran here, or were never submitted, are dropped).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mvm.slurm.grid import Experiment, base_point, experiments, threads_per_process
from mvm.slurm.settings import SweepSettings, format_size

ROOT = Path(__file__).resolve().parents[1]
"""The repository whose slurm/*.sh and *.sbatch the Slurm jobs run (the checkout holding this module)."""
SYNTH_ARGS = ("--frames-per-scene", "160", "--width", "480")
"""mvm-synth's scenes for --local: the demo's (Makefile DEMO_FRAMES/WIDTH); the count is MVM_SWEEP_SYNTH_SCENES."""


@dataclass(frozen=True)
class Job:
    """One step of the plan."""

    id: str
    """Unique name in the plan, e.g. `ingest-T8-train-0`, `train-x4-T8-p1b16-n1000-s0`, `report`."""
    how: str
    """run | probe | gate | ingest | cpu | gpu (module docstring)."""
    argv: tuple[str, ...]
    """The command (local) or the sbatch options, script and its arguments (cpu/gpu)."""
    after: tuple[str, ...] = ()
    """Ids of earlier jobs this one needs."""
    dependency: str = "afterok"
    """Slurm dependency type on `after`: afterok (they succeeded) or afterany (they ended)."""


@dataclass(frozen=True)
class Plan:
    jobs: list[Job]
    """Every job to run or submit, in a runnable order."""
    planned: list[Experiment]
    """Experiments trained and probed by `jobs`."""
    kept: list[Experiment]
    """Experiments already probed (left as they are)."""


def scene_chunks(names: Sequence[str], scales: Sequence[int], seed: int) -> list[list[str]]:
    """Chunk K holds the scenes scale K adds to scale K-1, after a seeded shuffle; ValueError if too few.

    Scale s = scales[K] uses chunks 0..K, round(len(names) * s / max(scales)) scenes in all.
    """
    names = list(names)
    random.Random(f"mvm-sweep-{seed}").shuffle(names)
    bounds = chunk_bounds(len(names), scales)
    if len(set(bounds)) != len(bounds):
        raise ValueError(f"{len(names)} scenes are too few for dataset scales {' '.join(map(str, scales))}")
    return [names[start:stop] for start, stop in zip(bounds, bounds[1:], strict=False)]


def chunk_bounds(count: int, scales: Sequence[int]) -> list[int]:
    """[0, scenes of scale 1, ...]: the shuffled scene list's cut points."""
    return [0] + [round(count * scale / scales[-1]) for scale in scales]


def dataroot(settings: SweepSettings, world: int) -> Path:
    """World 1: MVM_SWEEP_DATAROOT; world w > 1: SWEEP/nuscenes-world{w} (mvm-synth --seed w-1,
    REPLICA_SCENES scenes: its whole training split is chunk 0, its val split the validation)."""
    return settings.dataroot if world == 1 else settings.sweep_dir / f"nuscenes-world{world}"


def shard_dir(settings: SweepSettings, clip_len: int, part: str, world: int = 1) -> Path:
    """SWEEP/shards/[world{w}/]T{T}/{part}: part is `train-K` (scene chunk K) or `val`."""
    folder = settings.sweep_dir / "shards"
    return (folder if world == 1 else folder / f"world{world}") / f"T{clip_len}" / part


def scene_list(settings: SweepSettings, index: int) -> Path:
    """SWEEP/scenes/train-K.txt: the scene names of world 1's training chunk K."""
    return settings.sweep_dir / "scenes" / f"train-{index}.txt"


def experiment_dir(settings: SweepSettings, experiment: Experiment) -> Path:
    return settings.sweep_dir / "runs" / experiment.name


def train_shards(settings: SweepSettings, experiment: Experiment) -> list[Path]:
    """The chunks an experiment trains on: those of every scale up to its own."""
    chunks = [index for index, scale in enumerate(settings.scales) if scale <= experiment.scale]
    return [shard_dir(settings, experiment.clip_len, f"train-{k}", experiment.world) for k in chunks]


def probe_train_shards(settings: SweepSettings, experiment: Experiment) -> list[Path]:
    """The chunk every probe of a world and T fits its heads on: the smallest scale's."""
    return [shard_dir(settings, experiment.clip_len, "train-0", experiment.world)]


def experiment_record(settings: SweepSettings, experiment: Experiment, axes: Sequence[str]) -> dict:
    """experiment.json: the point's axes, settings and shards (what mvm-report reads)."""
    return {
        "name": experiment.name,
        "axes": list(axes),
        "data_scale": experiment.scale,
        "clip_len": experiment.clip_len,
        "world_size": experiment.procs,
        "batch_per_rank": experiment.batch,
        "global_batch": experiment.batch * experiment.procs,
        "threads_per_process": threads_per_process(settings, experiment)
        if settings.mode == "local"
        else None,
        "seed": experiment.seed,
        "world": experiment.world,
        "model": settings.model,
        "steps": experiment.steps,
        "future_steps": settings.future_steps,
        "gate_override": not settings.gate,
        "train_shards": ",".join(map(str, train_shards(settings, experiment))),
        "probe_train_shards": ",".join(map(str, probe_train_shards(settings, experiment))),
        "val_shards": str(shard_dir(settings, experiment.clip_len, "val", experiment.world)),
    }


def train_resources(world: int, gpus_per_node: int) -> list[str]:
    """sbatch options for a world-size run: whole GPU nodes, or one gloo task per process on one CPU node."""
    if gpus_per_node > 0:
        per_node = min(world, gpus_per_node)
        return [f"--nodes={math.ceil(world / per_node)}", f"--gpus-per-node={per_node}"]
    return ["--nodes=1", f"--ntasks-per-node={world}", "--gpus-per-node=0"]


def horizon_args(settings: SweepSettings) -> tuple[str, ...]:
    """The mvm-train flags that fix the hidden horizon at every T (none when FUTURE_STEPS is 0)."""
    if not settings.future_steps:
        return ()
    return ("--mask-type", "future", "--future-steps", str(settings.future_steps))


def _ingest_job(
    settings: SweepSettings, out: Path, scenes: str, clip_len: int, world: int, after: tuple
) -> Job:
    args = ("--dataroot", str(dataroot(settings, world)), "--version", settings.version, "--scenes", scenes,
            "--clip-len", str(clip_len), "--size", format_size(settings.size), "--seed", str(settings.seed),
            "--out", str(out))  # fmt: skip
    job_id = f"ingest-{'' if world == 1 else f'world{world}-'}T{clip_len}-{out.name}"
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
            "--steps", str(experiment.steps), "--seed", str(experiment.seed), "--batch-size", str(experiment.batch),
            *horizon_args(settings), *settings.train_args)  # fmt: skip
    job_id = f"train-{experiment.name}"
    if settings.mode == "slurm":  # train_ddp.sbatch adds --resume auto
        options = (f"--job-name={job_id}", *train_resources(experiment.procs, settings.gpus_per_node),
                   f"--output={settings.sweep_dir / 'logs' / job_id}-%j.out")  # fmt: skip
        return Job(job_id, "gpu", (*options, str(ROOT / "slurm" / "train_ddp.sbatch"), *args), after)
    # Intra-op threads stated, THREADS in total: the processes share this machine's cores.
    threads = ("env", f"OMP_NUM_THREADS={threads_per_process(settings, experiment)}")
    if experiment.procs == 1:
        return Job(job_id, "run", (*threads, "mvm-train", *args, "--resume", "auto"), after)
    torchrun = (
        "torchrun",
        "--standalone",
        f"--nproc-per-node={experiment.procs}",
        "--no-python",
        "mvm-train",
    )
    return Job(job_id, "run", (*threads, *torchrun, *args, "--resume", "auto"), after)


def _probe_job(settings: SweepSettings, experiment: Experiment, after: tuple, how: str) -> Job:
    home = experiment_dir(settings, experiment)
    args = ("--checkpoint", str(home / "run"),
            "--train-shards", ",".join(map(str, probe_train_shards(settings, experiment))),
            "--val-shards", str(shard_dir(settings, experiment.clip_len, "val", experiment.world)),
            "--out", str(home / "probe"), *settings.probe_args)  # fmt: skip
    job_id = f"probe-{experiment.name}"
    if settings.mode == "local":
        return Job(job_id, how, ("mvm-probe", *args), after)
    options = (f"--job-name={job_id}", f"--output={settings.sweep_dir / 'logs' / job_id}-%j.out")
    return Job(job_id, "cpu", (*options, str(ROOT / "slurm" / "probe.sbatch"), *args), after)


def _report_job(settings: SweepSettings, probes: tuple) -> Job:
    args = (str(settings.sweep_dir), "--out", str(settings.sweep_dir / "report"))
    # afterany: a failed gate or a failed (or cancelled) run is still reported.
    if settings.mode == "local":
        return Job("report", "run", ("mvm-report", *args), probes, "afterany")
    options = ("--job-name=report", f"--output={settings.sweep_dir / 'logs' / 'report'}-%j.out")
    return Job("report", "cpu", (*options, str(ROOT / "slurm" / "report.sbatch"), *args), probes, "afterany")


def _synth_job(settings: SweepSettings, world: int) -> Job:
    scenes = settings.synth_scenes if world == 1 else settings.replica_scenes
    argv = ("mvm-synth", "--out", str(dataroot(settings, world)), "--version", settings.version,
            "--scenes", str(scenes), *SYNTH_ARGS, "--seed", str(world - 1))  # fmt: skip
    return Job("synth" if world == 1 else f"synth-world{world}", "run", argv)


def _scenes_job(settings: SweepSettings, python: str, after: tuple) -> Job:
    argv = (python, "-m", "mvm.slurm.sweep_cli", "scenes", "--dataroot", str(settings.dataroot),
            "--version", settings.version, "--split", settings.train_split, "--seed", str(settings.seed),
            "--scales", ",".join(map(str, settings.scales)), "--out", str(scene_list(settings, 0).parent))  # fmt: skip
    return Job("scenes", "run", argv, after)


def ingest_inputs(settings: SweepSettings, experiment: Experiment) -> dict[Path, str]:
    """Shard folder -> its mvm-ingest --scenes value, for every ingest a point needs (chunks, then val)."""
    if experiment.world > 1:  # a replica world's training split is its one chunk
        inputs = {shard_dir(settings, experiment.clip_len, "train-0", experiment.world): settings.train_split}
    else:
        inputs = {folder: f"@{scene_list(settings, int(folder.name.split('-')[1]))}"
                  for folder in train_shards(settings, experiment)}  # fmt: skip
    return inputs | {shard_dir(settings, experiment.clip_len, "val", experiment.world): settings.val_split}


def is_probed(experiment: Experiment) -> bool:
    """Multi-process points are systems rows (step time, comm_frac at DDP_STEPS): trained, not probed."""
    return experiment.procs == 1


def done_marker(settings: SweepSettings, experiment: Experiment) -> Path:
    """The file whose presence means a point is finished: its probe's report.json, or for a point that
    is not probed its run's final checkpoint marker."""
    home = experiment_dir(settings, experiment)
    if is_probed(experiment):
        return home / "probe" / "report.json"
    return home / "run" / "checkpoints" / f"step-{experiment.steps:06d}" / "COMPLETE"


def base_report(settings: SweepSettings) -> Path:
    """The base point's probe report.json: the gate's verdict."""
    return experiment_dir(settings, base_point(settings)) / "probe" / "report.json"


def plan_sweep(settings: SweepSettings, exists: Callable[[Path], bool], python: str) -> Plan:
    """The jobs still needed, given which output files `exists` (Path.exists, or a set in tests).

    `python` runs `-m mvm.slurm.sweep_cli scenes|gate` (scene chunks, a kept base's gate) here.
    """
    every = experiments(settings)
    base = base_point(settings)
    planned = [e for e in every if not exists(done_marker(settings, e))]
    needed = dict.fromkeys(folder for e in planned for folder in ingest_inputs(settings, e))
    missing = {folder for folder in needed if not exists(folder / "manifest.json")}

    jobs: dict[str, Job] = {}

    def prepared(world: int, folder: Path) -> tuple[str, ...]:
        """The jobs an ingest of `folder` waits for, each added before its first user: the world's
        synthesis (local, when its dataroot is missing) and, for a training chunk, the scene lists."""
        synth = _synth_job(settings, world)
        synthesized = exists(dataroot(settings, world) / settings.version / "scene.json")
        if synth.id not in jobs and settings.mode == "local" and not synthesized:
            jobs[synth.id] = synth
        after = (synth.id,) if synth.id in jobs else ()
        if folder.name == "val" or world > 1:
            return after
        if "scenes" not in jobs:  # the chunks are cut from world 1's training split
            synth_1 = _synth_job(settings, 1).id
            jobs["scenes"] = _scenes_job(settings, python, (synth_1,) if synth_1 in jobs else ())
        return (*after, "scenes")

    gate_after: tuple = ()
    if settings.gate and base not in planned:  # probed by an earlier run: read its verdict here
        argv = (python, "-m", "mvm.slurm.sweep_cli", "gate", str(base_report(settings)))
        jobs["gate"] = Job("gate", "gate", argv)
    ingest_ids: dict[Path, str] = {}  # shard folder -> the job that ingests it
    probes = []
    for experiment in planned:
        inputs = ingest_inputs(settings, experiment)
        for folder, scenes in inputs.items():  # each missing ingest once, before its first user
            if folder in missing and folder not in ingest_ids:
                after = prepared(experiment.world, folder)
                job = _ingest_job(settings, folder, scenes, experiment.clip_len, experiment.world, after)
                ingest_ids[folder] = job.id
                jobs[job.id] = job
        data_after = tuple(ingest_ids[f] for f in inputs if f in ingest_ids)
        is_gate = experiment == base and settings.gate
        train = _train_job(settings, experiment, (*data_after, *gate_after))
        jobs[train.id] = train
        if not is_probed(experiment):
            probes.append(train.id)  # the report waits for it all the same
            continue
        probe = _probe_job(settings, experiment, (train.id, *data_after), "gate" if is_gate else "probe")
        if is_gate and settings.mode == "slurm":
            gate_after = (probe.id,)  # every later point waits for the base probe's success
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
