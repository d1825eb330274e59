"""A scaling sweep's settings: MVM_SWEEP_* environment variables over per-mode defaults, validated once.

Defaults that the sweep shares with the rest of mvm are read from the code, not re-typed: the base
clip length T and the cluster frame size are `IngestConfig`'s defaults (T = 8, 144x256), the
default T values are that base halved, as is and x1.5 (4 8 12), the per-rank batch is the preset's,
and a frame size that is not a multiple of the patch size (`mvm.shards.PATCH_SIZE`) draws
`mvm-ingest`'s own warning. The objective every default sweep trains is `GATED_CONFIG`.

    settings_from_env(os.environ, "local", Path("sweep"))   # -> SweepSettings, or SettingsError
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click

from mvm.ingest.config import IngestConfig
from mvm.train.config import PRESET_NAMES, preset

MODES = ("local", "slurm")


@dataclass(frozen=True)
class GatedConfig:
    """The one configuration a default sweep scales: a preset and the mvm-train flags on top of it."""

    preset: str
    flags: tuple[str, ...]
    passed_on: str
    """Where its probe gate passed (the design's rule: no scaling before the gate passes)."""


GATED_CONFIG = GatedConfig(
    preset="tiny",
    flags=(),
    # The last configuration that passed; since the synthetic world has traffic and the probe reads
    # every encoder at its best layer, no configuration has passed reliably (docs/experiments.md,
    # round 7; docs/scaling.md: 1 of 9 data points), so a default sweep stops at its base gate
    # unless run with --no-gate.
    passed_on="the static world of make demo before issue 21 (mvm-synth --seed 0 without traffic, 32 "
    "v1.0-trainval scenes x 160 frames at 480 wide, 64x112 shards, 1000 steps): ego-motion 0.952 vs best "
    "random 0.745; on the world with traffic (dev world --seed 3) it fails: 0.765 mean of 3 seeds vs 0.775; in "
    "docs/scaling.md's make sweep (world --seed 0) its base point fails and 1 of 9 data points passes",
)
"""Both modes' default MVM_SWEEP_MODEL and leading train flags; `small` / `base` stay choosable
(MVM_SWEEP_MODEL=small), but have not passed the gate on any world."""

BANNED_TRAIN_ARGS = ("--shards", "--out", "--model", "--steps", "--seed", "--batch-size", "--resume")
"""mvm-train options the plan sets per experiment (MVM_SWEEP_TRAIN_ARGS may not repeat them)."""


class SettingsError(ValueError):
    """A sweep setting that cannot be used (a usage error; the message names the variable)."""


def _ingest_default(name: str):
    return next(field.default for field in dataclasses.fields(IngestConfig) if field.name == name)


BASE_CLIP_LEN: int = _ingest_default("clip_len")
"""The sweep's base point T: mvm-ingest's default clip length."""
CLUSTER_SIZE: tuple[int, int] = _ingest_default("size")
"""Frame size (H, W) on a cluster: mvm-ingest's default."""
LOCAL_SIZE = (64, 112)
"""Frame size on this machine: the demo's (Makefile DEMO_SIZE), small enough for 2 CPU cores."""


@dataclass(frozen=True)
class SweepSettings:
    """Everything that decides a sweep's jobs; one value per MVM_SWEEP_* variable (see slurm/scaling.sh)."""

    sweep_dir: Path
    """Absolute path of the sweep folder (every output lives under it)."""
    mode: str
    """"slurm" (submit with sbatch) or "local" (run one step after another here)."""
    dataroot: Path
    """nuScenes dataroot of world 1 (MVM_SWEEP_DATAROOT); local mode synthesizes it when it is missing."""
    version: str
    """nuScenes version folder (MVM_SWEEP_VERSION)."""
    train_split: str
    """Scenes cut into dataset-scale chunks (first word of MVM_SWEEP_SPLITS)."""
    val_split: str
    """Scenes every probe scores on, the same for every point of a world (second word)."""
    scales: tuple[int, ...]
    """Dataset scales, increasing: scale s trains on the first s/max(scales) of the shuffled training scenes."""
    clip_lens: tuple[int, ...]
    """T values, increasing."""
    procs: tuple[int, ...]
    """Training process counts (DDP), increasing."""
    worlds: int
    """Synthetic worlds (local only): world w > 1 is mvm-synth --seed w-1 with world 1's scene names."""
    model: str
    """mvm-train preset (MVM_SWEEP_MODEL)."""
    steps: int
    """Training steps of every point but the epoch-matched and DDP ones."""
    ddp_steps: int
    """Training steps of the multi-process rows (systems rows: step time is their second-half mean)."""
    batch: int
    """Clips per step of a one-process run (the preset's unless MVM_SWEEP_BATCH)."""
    future_steps: int
    """Token steps every point hides at the clip's end (--mask-type future --future-steps N), so T
    changes the context and not the task; 0 = the preset's own mask."""
    data_seeds: int
    """Pre-training seeds per dataset scale (compute-matched)."""
    axis_seeds: int
    """Pre-training seeds per point of the other axes (epoch-matched, T, DDP, world)."""
    threads: int
    """Intra-op threads per point in total (local): 1 process x N, or P processes x N/P; 0 on Slurm."""
    synth_scenes: int
    """Scenes mvm-synth writes for world 1 (local)."""
    replica_scenes: int
    """Scenes mvm-synth writes for each further world: its training split is the base point's data."""
    size: tuple[int, int]
    """Ingest frame size (H, W)."""
    seed: int
    """Seed of the scene chunks and ingests, and the first pre-training seed."""
    train_args: tuple[str, ...]
    """Extra mvm-train options (GATED_CONFIG's flags, then MVM_SWEEP_TRAIN_ARGS)."""
    probe_args: tuple[str, ...]
    """Extra mvm-probe options (MVM_SWEEP_PROBE_ARGS)."""
    gpus_per_node: int = 0
    """GPUs per Slurm node (site MVM_GPUS_PER_NODE); 0 = CPU nodes, one gloo process per task."""
    gate: bool = True
    """Scaled points run only after the base point's probe gate passed (False: --no-gate)."""

    @property
    def base_clip_len(self) -> int:
        """T of the base point: BASE_CLIP_LEN when swept, else the smallest T."""
        return BASE_CLIP_LEN if BASE_CLIP_LEN in self.clip_lens else self.clip_lens[0]

    @property
    def max_scale(self) -> int:
        return self.scales[-1]

    def to_env_text(self) -> str:
        """sweep.env: the resolved settings as shell assignments (values quoted for `source`)."""
        values = {
            "mode": self.mode,
            "dataroot": str(self.dataroot),
            "version": self.version,
            "splits": f"{self.train_split} {self.val_split}",
            "scales": " ".join(map(str, self.scales)),
            "clip_lens": " ".join(map(str, self.clip_lens)),
            "procs": " ".join(map(str, self.procs)),
            "worlds": str(self.worlds),
            "model": self.model,
            "steps": str(self.steps),
            "ddp_steps": str(self.ddp_steps),
            "batch": str(self.batch),
            "future_steps": str(self.future_steps),
            "data_seeds": str(self.data_seeds),
            "axis_seeds": str(self.axis_seeds),
            "threads": str(self.threads),
            "synth_scenes": str(self.synth_scenes),
            "replica_scenes": str(self.replica_scenes),
            "size": format_size(self.size),
            "seed": str(self.seed),
            "train_args": shlex.join(self.train_args),
            "probe_args": shlex.join(self.probe_args),
            "gate": "on" if self.gate else "off (--no-gate)",
        }
        return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


def format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _defaults(mode: str, sweep_dir: Path, env: Mapping[str, str], gpus_per_node: int, quick: bool) -> dict:
    """Per-mode defaults as the text a variable would hold (local: sized for 90 minutes on 2 cores)."""
    base = BASE_CLIP_LEN
    shared = {"SPLITS": "train val", "SCALES": "1 2 4", "SEED": "0", "MODEL": GATED_CONFIG.preset,
              "CLIP_LENS": f"{base // 2} {base} {base * 3 // 2}", "FUTURE_STEPS": "1", "BATCH": "",
              "DATA_SEEDS": "3", "AXIS_SEEDS": "2", "THREADS": "2", "SYNTH_SCENES": "91",
              "REPLICA_SCENES": "23"}  # fmt: skip
    if mode == "local" and quick:  # the tests' grid: seconds per point, not a result
        return shared | {
            "DATAROOT": str(sweep_dir / "nuscenes"), "VERSION": "v1.0-trainval", "SCALES": "1 2",
            "CLIP_LENS": f"{base}", "PROCS": "1 2", "WORLDS": "1", "STEPS": "4", "DDP_STEPS": "4",
            "DATA_SEEDS": "1", "AXIS_SEEDS": "1", "SYNTH_SCENES": "6", "REPLICA_SCENES": "3", "SIZE": "32x64",
            "TRAIN_ARGS": "--log-every 2 --viz-every 100 --workers 0",
            "PROBE_ARGS": "--task speed --seeds 1 --bootstrap 100 --controls none --device cpu",
        }  # fmt: skip
    if mode == "local":
        # 91 v1.0-trainval scenes: 64 train (x1/x2/x4 = 16/32/64 scenes) and 27 val; world 2: 23
        # scenes, 16 train (as many as x1) and 7 val. Sized by slurm/grid.py's estimate (--dry-run).
        # The probe reads ego motion only: at 64x112 (4x7 tokens) every source, pixels included,
        # lands within 0.004 of position-only depth (docs/experiments.md, round 7), so a depth
        # column would be flat by construction, and it costs a fifth of each probe.
        return shared | {
            "DATAROOT": str(sweep_dir / "nuscenes"), "VERSION": "v1.0-trainval", "PROCS": "1 2",
            "WORLDS": "2", "STEPS": "1000", "DDP_STEPS": "200", "SIZE": format_size(LOCAL_SIZE),
            "TRAIN_ARGS": "--log-every 10 --viz-every 1000", "PROBE_ARGS": "--controls none --task ego-motion",
        }  # fmt: skip
    return shared | {
        "DATAROOT": env.get("MVM_DATAROOT", ""),
        "VERSION": env.get("MVM_VERSION", ""),
        "PROCS": f"1 {gpus_per_node if gpus_per_node > 1 else 2}",
        "WORLDS": "1",
        "STEPS": "20000",
        "DDP_STEPS": "",
        "SIZE": format_size(CLUSTER_SIZE),
        "TRAIN_ARGS": "",
        "PROBE_ARGS": "",
    }


def _ints(name: str, text: str, minimum: int) -> tuple[int, ...]:
    """Whitespace-separated integers >= minimum, sorted and without repeats."""
    try:
        values = [int(word) for word in text.split()]
    except ValueError:
        raise SettingsError(f"MVM_SWEEP_{name}={text!r}: expected whole numbers, e.g. '1 2 4'") from None
    if not values or min(values) < minimum:
        raise SettingsError(f"MVM_SWEEP_{name}={text!r}: expected whole numbers >= {minimum}")
    return tuple(sorted(set(values)))


def _int(name: str, text: str, minimum: int) -> int:
    """One whole number >= minimum."""
    values = _ints(name, text, minimum)
    if len(text.split()) != 1:
        raise SettingsError(f"MVM_SWEEP_{name}={text!r}: expected one whole number")
    return values[0]


def _words(name: str, text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as error:
        raise SettingsError(f"MVM_SWEEP_{name}={text!r}: {error}") from None


def _size(text: str) -> tuple[int, int]:
    # Imported here: mvm.ingest.cli loads the devkit; its parse_size is the one HxW rule (even, patch warning).
    from mvm.ingest.cli import parse_size

    try:
        return parse_size(text)
    except click.BadParameter as error:
        raise SettingsError(f"MVM_SWEEP_SIZE: {error.message}") from None


def settings_from_env(
    env: Mapping[str, str], mode: str, sweep_dir: Path, gpus_per_node: int = 0, *, quick: bool = False,
    gate: bool = True,
) -> SweepSettings:  # fmt: skip
    """Read MVM_SWEEP_* from `env` (an empty variable means its default); SettingsError when unusable.

    quick: the small local grid the tests run (--quick); gate False: --no-gate.
    """
    if mode not in MODES:
        raise SettingsError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    sweep_dir = Path(sweep_dir).absolute()
    defaults = _defaults(mode, sweep_dir, env, gpus_per_node, quick)

    def setting(name: str) -> str:
        return env.get(f"MVM_SWEEP_{name}") or defaults[name]

    splits = setting("SPLITS").split()
    if len(splits) != 2:
        raise SettingsError(f"MVM_SWEEP_SPLITS={setting('SPLITS')!r}: expected two splits, training and val")
    for name, site_name in (("DATAROOT", "MVM_DATAROOT"), ("VERSION", "MVM_VERSION")):
        if not setting(name):
            raise SettingsError(
                f"no {name.lower()}: set {site_name} in the site settings or MVM_SWEEP_{name}"
            )
    model = setting("MODEL")
    if model not in PRESET_NAMES:
        raise SettingsError(f"MVM_SWEEP_MODEL={model!r}: expected one of {', '.join(PRESET_NAMES)}")
    steps = _int("STEPS", setting("STEPS"), 1)
    procs = _ints("PROCS", setting("PROCS"), 1)
    batch = _int("BATCH", setting("BATCH") or str(preset(model).data.batch_size), 1)
    if batch % procs[-1]:
        raise SettingsError(f"MVM_SWEEP_BATCH={batch}: must split evenly over {procs[-1]} processes "
                            "(the same-global-batch DDP rows)")  # fmt: skip
    # Slurm jobs get their threads from the allocation (train_ddp.sbatch: CPUs per task / processes).
    threads = _int("THREADS", setting("THREADS"), procs[-1]) if mode == "local" else 0
    if mode == "local" and any(threads % count for count in procs):
        raise SettingsError(f"MVM_SWEEP_THREADS={threads}: must split evenly over every process count "
                            f"({' '.join(map(str, procs))}), so that every point has the same threads in total")  # fmt: skip
    worlds = _int("WORLDS", setting("WORLDS"), 1)
    if worlds > 1 and mode != "local":
        raise SettingsError(f"MVM_SWEEP_WORLDS={worlds}: a second world is synthesized, so --local only")
    extra = _words("TRAIN_ARGS", setting("TRAIN_ARGS"))
    clash = sorted({arg.split("=")[0] for arg in extra} & set(BANNED_TRAIN_ARGS))
    if clash:
        raise SettingsError(f"MVM_SWEEP_TRAIN_ARGS: {', '.join(clash)} is set by the sweep per point "
                            "(use MVM_SWEEP_MODEL, _STEPS, _SEED, _BATCH)")  # fmt: skip
    flags = GATED_CONFIG.flags if model == GATED_CONFIG.preset else ()
    return SweepSettings(
        sweep_dir=sweep_dir,
        mode=mode,
        dataroot=Path(setting("DATAROOT")).absolute(),
        version=setting("VERSION"),
        train_split=splits[0],
        val_split=splits[1],
        scales=_ints("SCALES", setting("SCALES"), 1),
        clip_lens=_ints("CLIP_LENS", setting("CLIP_LENS"), 2),
        procs=procs,
        worlds=worlds,
        model=model,
        steps=steps,
        ddp_steps=_int("DDP_STEPS", setting("DDP_STEPS") or str(steps), 1),
        batch=batch,
        future_steps=_int("FUTURE_STEPS", setting("FUTURE_STEPS"), 0),
        data_seeds=_int("DATA_SEEDS", setting("DATA_SEEDS"), 1),
        axis_seeds=_int("AXIS_SEEDS", setting("AXIS_SEEDS"), 1),
        threads=threads,
        synth_scenes=_int("SYNTH_SCENES", setting("SYNTH_SCENES"), 2),
        replica_scenes=_int("REPLICA_SCENES", setting("REPLICA_SCENES"), 2),
        size=_size(setting("SIZE")),
        seed=_int("SEED", setting("SEED"), 0),
        train_args=(*flags, *extra),
        probe_args=_words("PROBE_ARGS", setting("PROBE_ARGS")),
        gpus_per_node=gpus_per_node,
        gate=gate,
    )
