"""A scaling sweep's points (one variable at a time around a base point) and what they cost on 2 cores.

The base point is the smallest dataset scale at the base T, one process, the preset's batch,
STEPS steps, the first seed, world 1. Its probe is the gate: the other points are scaled only
after it passed (slurm/plan.py). Around it, each axis changes one thing:

- `data-compute`: every scale at STEPS steps (compute-matched), DATA_SEEDS seeds;
- `data-epoch`: every scale at STEPS x scale / max scale steps (epoch-matched: the same passes
  over the data as the largest scale at STEPS), AXIS_SEEDS seeds;
- `T`: every clip length, the hidden horizon fixed (settings.future_steps), AXIS_SEEDS seeds;
- `ddp-global`: P processes at batch / P per rank (the same global batch and learning rate as one
  process), DDP_STEPS steps; `ddp-rank`: P processes at the one-process batch per rank; the one-process
  points at the base are the reference of both; threads per process = THREADS / P (equal in total);
- `world`: the base point on every synthetic world (replication), AXIS_SEEDS seeds.

A point on several axes (the base is on all of them) is trained once and carries every label.
`estimate_s` prices the plan from per-unit costs measured on the 2-core machine `make sweep`
targets (module constants), so a grid can be sized before it runs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from mvm.slurm.settings import SweepSettings

AXES = ("data-compute", "data-epoch", "T", "ddp-global", "ddp-rank", "world")
"""Axis labels of experiment.json's `axes` (with `base` for the gate's point)."""

# Per-unit costs on 2 quiet CPU cores at 64x112 (the tiny preset), in seconds; see estimate_s.
# Measured in docs/scaling.md's `make sweep` (2-core Intel Xeon at 2.8 GHz).
SYNTH_S_PER_SCENE = 5.0
"""mvm-synth, 160 frames at 480 wide with traffic and keyframe lidar (measured: 91 scenes in 455 s)."""
INGEST_S_PER_SCENE = 0.3
"""mvm-ingest per scene at any T, after START_S (the frames encoded do not depend on T; measured:
16 scenes in 10-13 s, 32 in 20 s)."""
TRAIN_S_PER_CLIP_FRAME = 2.1e-3
"""One clip-frame of one training step, after START_S (measured: 1000 steps of 16 clips at T=8 in
235-294 s, median 280 s)."""
DDP_SLOWDOWN = 1.15
"""Step time of several gloo processes over the same clip-frames on the same cores (all-reduce)."""
PROBE_S_PER_SCENE = 2.2
"""mvm-probe --controls none --task ego-motion per scene of its train and val shards, after START_S
(measured at T=8: 16 + 27 scenes in 92-113 s). The heads' cost grows with the clip count, which
does depend on T: the same scenes took 184-210 s at T=4 and 67-80 s at T=12 (priced per scene here)."""
START_S = 10.0
"""Start-up of one command (imports, devkit tables, model construction)."""


@dataclass(frozen=True)
class Experiment:
    """One point of the sweep."""

    scale: int
    clip_len: int
    procs: int
    batch: int
    """Clips per step per process."""
    steps: int
    seed: int
    """Pre-training seed (mvm-train --seed)."""
    world: int = 1
    """Synthetic world (1 = the dataroot of MVM_SWEEP_DATAROOT)."""

    @property
    def name(self) -> str:
        world = f"-world{self.world}" if self.world > 1 else ""
        return f"x{self.scale}-T{self.clip_len}-p{self.procs}b{self.batch}-n{self.steps}-s{self.seed}{world}"


def epoch_steps(settings: SweepSettings, scale: int) -> int:
    """Steps of an epoch-matched point: the largest scale's STEPS scaled down with the data."""
    return max(1, round(settings.steps * scale / settings.max_scale))


def base_point(settings: SweepSettings) -> Experiment:
    return Experiment(
        settings.scales[0], settings.base_clip_len, 1, settings.batch, settings.steps, settings.seed
    )


def experiments(settings: SweepSettings) -> dict[Experiment, tuple[str, ...]]:
    """Every point once with its axis labels; the base point first."""
    s, base = settings, base_point(settings)
    axes: dict[Experiment, list[str]] = defaultdict(list)
    axes[base].append("base")

    def add(label: str, seed: int, **changes) -> None:
        fields = {**base.__dict__, "seed": seed, **changes}
        axes[Experiment(**fields)].append(label)

    for seed in range(s.seed, s.seed + s.data_seeds):
        for scale in s.scales:
            add("data-compute", seed, scale=scale)
    for seed in range(s.seed, s.seed + s.axis_seeds):
        for scale in s.scales:
            add("data-epoch", seed, scale=scale, steps=epoch_steps(s, scale))
        for clip_len in s.clip_lens:
            add("T", seed, clip_len=clip_len)
        for procs in s.procs:
            one = procs == 1
            add(
                "ddp-global", seed, procs=procs, batch=s.batch // procs, steps=s.steps if one else s.ddp_steps
            )
            add("ddp-rank", seed, procs=procs, steps=s.steps if one else s.ddp_steps)
        for world in range(1, s.worlds + 1):
            add("world", seed, world=world)
    return {point: tuple(labels) for point, labels in axes.items()}


def threads_per_process(settings: SweepSettings, experiment: Experiment) -> int:
    """Intra-op threads of each process: the point's THREADS shared equally by its processes."""
    return settings.threads // experiment.procs


def train_s(experiment: Experiment) -> float:
    """Estimated seconds of one training run on 2 cores."""
    frames = experiment.steps * experiment.batch * experiment.procs * experiment.clip_len
    return START_S + frames * TRAIN_S_PER_CLIP_FRAME * (DDP_SLOWDOWN if experiment.procs > 1 else 1.0)


def estimate_s(counts: dict[str, int], points: list[Experiment]) -> dict[str, float]:
    """Estimated seconds per kind of work on 2 cores: `counts` holds the scenes to synthesize (`synth`),
    ingest commands (`ingests`) and their scenes (`ingest`), probes (`probes`) and their scenes
    (`probe`, train and val shards summed over probes); every point in `points` trains."""
    return {
        "synth": counts["synth"] * SYNTH_S_PER_SCENE,
        "ingest": counts["ingests"] * START_S + counts["ingest"] * INGEST_S_PER_SCENE,
        "train": sum(train_s(point) for point in points),
        "probe": counts["probes"] * START_S + counts["probe"] * PROBE_S_PER_SCENE,
    }
