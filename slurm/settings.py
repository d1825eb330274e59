"""A scaling sweep's settings: MVM_SWEEP_* environment variables over per-mode defaults, validated once.

Defaults that the sweep shares with the rest of mvm are read from the code, not re-typed: the base
clip length T and the cluster frame size are `IngestConfig`'s defaults (T = 8, 144x256), the
default T values are that base halved, as is and x1.5 (4 8 12), and a frame size that is not a
multiple of the patch size (`mvm.shards.PATCH_SIZE`) draws `mvm-ingest`'s own warning.

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

MODES = ("local", "slurm")


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
    """nuScenes dataroot (MVM_SWEEP_DATAROOT); local mode synthesizes it when it is missing."""
    version: str
    """nuScenes version folder (MVM_SWEEP_VERSION)."""
    train_split: str
    """Scenes cut into dataset-scale chunks (first word of MVM_SWEEP_SPLITS)."""
    val_split: str
    """Scenes every probe scores on (second word of MVM_SWEEP_SPLITS)."""
    scales: tuple[int, ...]
    """Dataset scales, increasing: scale s trains on the first s/max(scales) of the shuffled training scenes."""
    clip_lens: tuple[int, ...]
    """T values, increasing."""
    worlds: tuple[int, ...]
    """World sizes (processes / GPUs), increasing; the per-rank batch stays fixed."""
    model: str
    """mvm-train preset (MVM_SWEEP_MODEL)."""
    steps: int
    """Training steps of every run."""
    size: tuple[int, int]
    """Ingest frame size (H, W)."""
    seed: int
    """Seed of the scene chunks, the ingests and the runs."""
    train_args: tuple[str, ...]
    """Extra mvm-train options (MVM_SWEEP_TRAIN_ARGS, split like a shell would)."""
    probe_args: tuple[str, ...]
    """Extra mvm-probe options (MVM_SWEEP_PROBE_ARGS)."""
    gpus_per_node: int = 0
    """GPUs per Slurm node (site MVM_GPUS_PER_NODE); 0 = CPU nodes, one gloo process per task."""

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
            "worlds": " ".join(map(str, self.worlds)),
            "model": self.model,
            "steps": str(self.steps),
            "size": format_size(self.size),
            "seed": str(self.seed),
            "train_args": shlex.join(self.train_args),
            "probe_args": shlex.join(self.probe_args),
        }
        return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


def format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _defaults(mode: str, sweep_dir: Path, env: Mapping[str, str], gpus_per_node: int) -> dict[str, str]:
    """Per-mode defaults as the text a variable would hold."""
    base = BASE_CLIP_LEN
    if mode == "local":
        return {
            "DATAROOT": str(sweep_dir / "nuscenes"),
            "VERSION": "v1.0-trainval",
            "CLIP_LENS": f"{base // 2} {base}",
            "WORLDS": "1 2",
            "MODEL": "tiny",
            "STEPS": "150",
            "SIZE": format_size(LOCAL_SIZE),
            "TRAIN_ARGS": "--log-every 10 --viz-every 1000",
        }
    return {
        "DATAROOT": env.get("MVM_DATAROOT", ""),
        "VERSION": env.get("MVM_VERSION", ""),
        "CLIP_LENS": f"{base // 2} {base} {base * 3 // 2}",
        "WORLDS": f"1 {gpus_per_node if gpus_per_node > 1 else 2}",
        "MODEL": "small",
        "STEPS": "20000",
        "SIZE": format_size(CLUSTER_SIZE),
        "TRAIN_ARGS": "",
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
    env: Mapping[str, str], mode: str, sweep_dir: Path, gpus_per_node: int = 0
) -> SweepSettings:
    """Read MVM_SWEEP_* from `env` (an empty variable means its default); SettingsError when unusable."""
    if mode not in MODES:
        raise SettingsError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    sweep_dir = Path(sweep_dir).absolute()
    defaults = _defaults(mode, sweep_dir, env, gpus_per_node)
    defaults |= {"SPLITS": "train val", "SCALES": "1 2 4", "SEED": "0", "PROBE_ARGS": ""}

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
    if len(model.split()) != 1:
        raise SettingsError(f"MVM_SWEEP_MODEL={model!r}: expected one preset name")
    return SweepSettings(
        sweep_dir=sweep_dir,
        mode=mode,
        dataroot=Path(setting("DATAROOT")).absolute(),
        version=setting("VERSION"),
        train_split=splits[0],
        val_split=splits[1],
        scales=_ints("SCALES", setting("SCALES"), 1),
        clip_lens=_ints("CLIP_LENS", setting("CLIP_LENS"), 2),
        worlds=_ints("WORLDS", setting("WORLDS"), 1),
        model=model,
        steps=_int("STEPS", setting("STEPS"), 1),
        size=_size(setting("SIZE")),
        seed=_int("SEED", setting("SEED"), 0),
        train_args=_words("TRAIN_ARGS", setting("TRAIN_ARGS")),
        probe_args=_words("PROBE_ARGS", setting("PROBE_ARGS")),
        gpus_per_node=gpus_per_node,
    )
