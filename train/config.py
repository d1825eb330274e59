"""Typed training configuration, named presets and JSON overrides.

Resolution order (later wins): preset (`--model NAME`) -> `--config FILE` (nested JSON, e.g.
`{"model": {"depth": 6}, "optim": {"lr": 5e-4}}`) -> explicit CLI flags -> the data itself
(`model.clip_len` and `model.image_size` always come from the shards' manifest, so they default to
None here). The resolved config is saved to RUN/config.json and inside every checkpoint.

Each option is declared once, as a field: `option(default, low=..., choices=..., flag=...,
resume_may_change=..., legacy=...)` (mvm/options.py) and a docstring under it. The command-line
flags (train/cli.py), the checks of `--config` files and saved configs (`validate`), what a resume
may change (train/checkpoint.py) and what an old checkpoint that lacks the field meant
(`from_dict`) all read that declaration. A new option is one field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mvm.options import leaf, leaves, nest, option, value_problem
from mvm.shards import PATCH_SIZE
from mvm.video import DECODER_CHOICES

PRESET_NAMES = ("tiny", "small", "base")
"""The presets (`PRESETS` below), the values of --model."""
MASK_TYPES = ("tube", "tubelet", "random", "future", "future-tube")
"""ModelConfig.mask_type values (train/masks.py: draw_mask)."""
PREDICTIONS = ("pixels", "camera-motion", "hybrid")
"""ModelConfig.prediction values: the decoders (train/model.py DECODERS; train/pixel_decoder.py, train/motion.py,
train/hybrid_decoder.py)."""
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
"""TrainConfig.compile_mode values: the torch.compile modes (train/engine.py wrap_model)."""


@dataclass
class ModelConfig:
    """Shape of the masked video model (train/model.py)."""

    clip_len: int | None = option(None, low=1, flag=False)
    """Frames per clip T; taken from the shards' manifest."""
    image_size: tuple[int, int] | None = option(None, low=1, flag=False)
    """Frame size (H, W); taken from the shards' manifest. Must be divisible by `patch_size`."""
    patch_size: int = option(PATCH_SIZE, low=2, flag=False)
    """Side of the square spatial patch."""
    token_frames: int = option(1, low=1)
    """Frames per token k (VideoMAE's tubelet embedding): a token is one patch through k consecutive
    frames, so the CNN stem already sees local motion; T' = clip_len / k token time steps (k must
    divide clip_len). 1 = one token per patch per frame."""
    stem_channels: int = option(32, low=1, flag=False)
    """Hidden channels of the patch-local CNN stem (a stride-2 3x3 conv, then a conv over the half-size patch)."""
    embed_dim: int = option(384, low=1, flag=False)
    """Encoder token width."""
    depth: int = option(12, low=1, flag=False)
    """Encoder transformer blocks."""
    num_heads: int = option(6, low=1, flag=False)
    """Encoder attention heads."""
    decoder_dim: int = option(192, low=1, flag=False)
    """Decoder token width (MAE: the decoder is light; it is discarded after pre-training)."""
    decoder_depth: int = option(4, low=1, flag=False)
    """Decoder transformer blocks."""
    decoder_heads: int = option(6, low=1, flag=False)
    """Decoder attention heads."""
    mlp_ratio: float = option(4.0, low=0, low_open=True, flag=False)
    """Hidden width of each block's MLP relative to the token width."""
    mask_type: str = option("tube", choices=MASK_TYPES)
    """"tube": the same spatial patches masked in every frame (VideoMAE); "tubelet": the same patch masked
    through `mask_tubelet` consecutive frames; "random": independent per space-time patch; "future":
    the last `future_steps` whole token time steps (with future_steps 0: round(mask_ratio x token time
    steps), at least one, never all); "future-tube": the last `future_steps` (at least 1) token time steps
    hidden, plus a tube mask at mask_ratio over the positions of the earlier steps."""
    mask_tubelet: int = option(2, low=1)
    """Token time steps per masking unit when mask_type is "tubelet" (must divide clip_len / token_frames)."""
    mask_ratio: float = option(0.9, low=0, low_open=True, high=1)
    """Share of tokens hidden from the encoder (mask_type "future": rounded to whole time steps, unused when
    future_steps > 0; "future-tube": the share of positions hidden in the visible steps, so more of all
    tokens is hidden: mvm-train's first line states the share)."""
    future_steps: int = option(0, low=0)
    """Token time steps hidden at the clip's end by mask_type "future" and "future-tube" (the horizon in
    frames is future_steps x token_frames, whatever the clip length). 0 = "future"'s rule before this
    field existed: derived from mask_ratio (what configs and checkpoints without the field meant)."""
    prediction: str = option("pixels", choices=PREDICTIONS)
    """How hidden patches are predicted. "pixels": MAE's light transformer decoder predicts each hidden
    patch's pixels. "camera-motion" (needs mask_type "future" and norm_pix_loss off): the hidden frames
    are the last visible frame warped by a camera motion (translation and expansion per frame) that
    one linear layer reads from the visible tokens; the decoder_* fields are then unused (train/motion.py).
    "hybrid" (needs mask_type "future-tube" and norm_pix_loss off): the pixel decoder reconstructs the
    tube-masked tokens of the visible steps and the camera-motion warp predicts the hidden future steps
    (train/hybrid_decoder.py)."""
    norm_pix_loss: bool = option(True)
    """Normalize each target patch by its own mean/std before the MSE (MAE's per-patch normalized targets)."""
    input_norm: bool = option(True, flag=False, legacy=False)
    """Standardize the stem's input pixels with mvm.train.model's PIXEL_MEAN / PIXEL_STD (as MAE does), so
    content features start on the scale of the position codes, in random and trained encoders alike.
    Checkpoints saved before this field existed load with False, the behaviour they were trained with."""
    pos_embed: str = option("learned", choices=("learned", "sincos"))
    """Position embeddings of encoder and decoder: "learned" (separable space + time parameters, MAE-ST)
    or "sincos" (fixed sine-cosine codes of row, column and frame in separate channels, as MAE)."""


@dataclass
class DataConfig:
    """The streaming input pipeline (train/data.py)."""

    shards: str = option("", free_text=True, required=True)
    """Shard spec: brace pattern, a folder with manifest.json, or several comma-separated."""
    batch_size: int = option(32, low=1)
    """Clips per step per rank (the global batch is batch_size x world size)."""
    workers: int = option(2, low=0)
    """DataLoader worker processes per rank (0 = decode in the training process)."""
    shuffle_buffer: int = option(256, low=1, flag=False)
    """Samples held by each worker's seeded shuffle buffer (raw mp4 bytes, before decode)."""
    decoder: str = option("auto", choices=DECODER_CHOICES)
    """Video decoder of the workers. "pyav-i420": PyAV hands over I420 planes (1.5 bytes/pixel, no
    colour conversion in the worker) and the batch is converted to RGB on the training device;
    "pyav", "decord", "torchcodec": RGB from that decoder (a missing one falls back to PyAV with a
    warning); "auto": "pyav-i420" when CUDA is available, else "pyav" (the fastest, measured in
    bench/results.md); "nvdec": the GPU's H.264 decoder (PyNvVideoCodec) in the training process,
    I420 planes already on the GPU; it runs with --workers 0 only (forked workers cannot use CUDA)
    and where it cannot run (no CUDA, package missing, workers) it says why once and PyAV decodes."""
    repeat_aug: int = option(1, low=1)
    """Repeated sampling (MAE-ST's repeat_aug): each decoded clip fills K consecutive rows of the
    batch, each with its own mask. batch_size stays the rows per step (model cost per step is
    unchanged) and must be a multiple of K; a step reads batch_size / K clips, so decode cost per
    training sample falls K-fold and an epoch takes K times the steps. Data order is the K=1 order
    with each clip repeated; resume stays exact (positions count clips read, not rows)."""
    on_bad_sample: str = option("error", choices=("error", "skip"))
    """"error": stop with a message naming the shard and key; "skip": skip, count and log the sample."""


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to `min_lr_ratio * lr`."""

    lr: float = option(1.5e-4, low=0, low_open=True)
    """Peak learning rate (per rank batch; not rescaled with world size)."""
    weight_decay: float = option(0.05, low=0, flag=False)
    """AdamW weight decay on matrices (biases, norms, position embeddings and the mask token are exempt)."""
    betas: tuple[float, float] = option((0.9, 0.95), low=0, high=1, high_open=True, flag=False)
    """AdamW betas (MAE's 0.95 second moment)."""
    warmup_steps: int = option(200, low=0, flag=False)
    """Steps of linear warmup from 0 to `lr` (capped at a tenth of the run)."""
    min_lr_ratio: float = option(0.05, low=0, high=1, flag=False)
    """Final learning rate as a fraction of `lr`."""
    grad_clip: float = option(1.0, low=0, flag=False)
    """Clip the global gradient norm to this (0 disables clipping)."""


@dataclass
class TrainConfig:
    """Everything a run needs; saved as RUN/config.json and in every checkpoint."""

    preset: str = option("small", choices=PRESET_NAMES, flag=False)
    """Name of the preset this config started from."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model shape and objective."""
    data: DataConfig = field(default_factory=DataConfig)
    """Input pipeline."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    steps: int = option(10000, low=0, resume_may_change=True)
    """Total optimizer steps (a resumed run continues to this count)."""
    seed: int = option(0, low=0)
    """Root seed: model init, shard order, shuffle buffers and masks derive from it (and epoch, rank, worker, step)."""
    device: str = option("auto", choices=("auto", "cpu", "cuda"), resume_may_change=True)
    """"auto" (CUDA when available), "cpu" or "cuda"."""
    compile: bool = option(False, resume_may_change=True)
    """torch.compile the model (outside DDP, so gradient all-reduce still overlaps backward)."""
    compile_mode: str = option("default", choices=COMPILE_MODES, resume_may_change=True)
    """torch.compile mode with --compile: "default"; "reduce-overhead" (CUDA graphs: one launch per
    graph instead of one per kernel, for small launch-bound steps; more memory); "max-autotune-no-cudagraphs"
    (searches matmul kernels, compiles longer). Measured per mode by `make bench-gpu`."""
    precision: str = option("auto", choices=("auto", "bf16", "fp32"), resume_may_change=True)
    """"auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32"; weights and optimizer state stay fp32."""
    log_every: int = option(10, low=1, resume_may_change=True)
    """Steps between metrics.jsonl lines."""
    viz_every: int = option(500, low=1, resume_may_change=True)
    """Steps between RUN/viz/step-NNNNNN.png pictures (and one at the end)."""
    viz_shards: str = option("", free_text=True, resume_may_change=True)
    """Shard spec of the validation clips drawn in RUN/viz (chosen once per run); empty = probe_shards, else the
    training shards. Also the held-out RankMe clips (--rankme-clips; empty: the training shards)."""
    viz_clips: int = option(2, low=1, flag=False, resume_may_change=True)
    """Clips per RUN/viz picture."""
    ckpt_every: int = option(500, low=1, resume_may_change=True)
    """Steps between checkpoints (and one at the end)."""
    keep_ckpts: int = option(3, low=1, resume_may_change=True)
    """Complete checkpoints kept; older ones are deleted."""
    max_nonfinite: int = option(5, low=1, resume_may_change=True)
    """Stop (with a checkpoint) after this many non-finite steps in a row."""
    collapse_rankme: float = option(1.05, low=0, flag=False, resume_may_change=True)
    """Warn (console, metrics.jsonl event, mark on loss.png) when the effective rank of pooled embeddings
    under one shared mask (train/diagnostics.py) falls below this (collapsed: 0; healthy tiny runs >= 1.13)."""
    collapse_time_spread: float = option(0.001, low=0, flag=False, resume_may_change=True)
    """Warn when the within-clip token spread over time, relative to the token std, falls below this
    (collapsed: < 1e-5; healthy tiny runs >= 0.0022, their early loss plateau)."""
    rankme_clips: int = option(256, low=2, resume_may_change=True)
    """Clips of the fixed held-out set on which token-level RankMe and emb_std are logged at step 0, every
    picture and the end (rankme_heldout, train/heldout.py): the first N clips of --viz-shards when given,
    else of the training shards, read once at the start."""
    collapse_rankme_ratio: float = option(0.5, low=0, high=1, flag=False, resume_may_change=True)
    """Warn when rankme_heldout falls below this fraction of its value at initialization (a slow collapse)."""
    starvation_frac: float = option(0.5, low=0, high=1, flag=False, resume_may_change=True)
    """Warn when data_wait_frac stays above this (the input pipeline, not the model, sets the pace)."""
    probe_every: int = option(0, low=0, resume_may_change=True)
    """Steps between online ego-motion probes (0 = off; needs train/online_probe.py and probe_shards)."""
    probe_shards: str = option("", free_text=True, resume_may_change=True)
    """Shard spec for the online probe."""
    probe_clips: int = option(256, low=2, resume_may_change=True)
    """Clips the online probe reads."""


def tiny() -> TrainConfig:
    """CPU demos and tests: future prediction by a camera-motion warp (not high-ratio masking).

    A 4-block d=128 encoder on 2-frame tokens with sine-cosine positions. The mask hides the last
    of 4 token steps (`mask_type="future"`, 25 % of the tokens, the same in every clip); the hidden
    frames are predicted as the last visible frame warped by a camera motion (tx, ty, expansion)
    that one linear layer reads from the visible tokens' temporal summary (train/motion.py). The
    loss is the MSE on the hidden patches' raw pixels. 1000 steps is what `make demo` affords.

    It is not the design's masked video modeling (a high masked fraction, reconstruction of the
    masked content): that is `--prediction pixels` with a tube or random mask, the `small` and
    `base` presets. How this objective was chosen, round by round with every table, and what the
    others scored: docs/experiments.md.
    """
    return TrainConfig(
        preset="tiny",
        model=ModelConfig(
            stem_channels=16,
            embed_dim=128,
            depth=4,
            num_heads=4,
            decoder_dim=96,  # the pixel decoder's size (--prediction pixels); unused by camera-motion
            decoder_depth=2,
            decoder_heads=4,
            token_frames=2,
            pos_embed="sincos",
            mask_type="future",
            mask_ratio=0.25,
            prediction="camera-motion",
            norm_pix_loss=False,
        ),
        data=DataConfig(batch_size=16, workers=1, shuffle_buffer=64),
        optim=OptimConfig(lr=1e-3, warmup_steps=50, betas=(0.9, 0.95)),
        steps=1000,
        log_every=10,
        viz_every=250,
        ckpt_every=250,
    )


def small() -> TrainConfig:
    """One GPU: a ViT-S-width encoder (d=384, 12 blocks) with VideoMAE's objective (tube 0.9, normalized targets)."""
    return TrainConfig(preset="small")


def base() -> TrainConfig:
    """Several GPUs: a ViT-B-width encoder (d=768, 12 blocks), VideoMAE's objective, decoder d=384."""
    return TrainConfig(
        preset="base",
        model=ModelConfig(
            embed_dim=768, depth=12, num_heads=12, decoder_dim=384, decoder_depth=4, decoder_heads=6
        ),
        data=DataConfig(batch_size=32, workers=6),
        optim=OptimConfig(lr=1.5e-4, warmup_steps=1000),
        steps=50000,
        viz_every=2000,
        ckpt_every=1000,
    )


PRESETS = dict(zip(PRESET_NAMES, (tiny, small, base), strict=True))


def preset(name: str) -> TrainConfig:
    """A fresh TrainConfig for a preset name; ValueError names the known presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()


RETIRED_FIELDS = {"collapse_std", "debug_nan_at_step"}
"""Fields older versions saved in config.json and checkpoints; ignored when read back (issue 10.5
replaced the emb_std threshold with collapse_rankme / collapse_time_spread; the NaN test hook left
the config for the tests' fault injection), so runs and checkpoints of those versions still load."""


def _apply(target, overrides: dict, where: str):
    """Return a copy of dataclass `target` with `overrides` applied (nested dicts for nested dataclasses).

    ValueError naming the dotted field for an unknown field or a value of the wrong type or range.
    """
    names = {f.name: f for f in dataclasses.fields(target)}
    changes = {}
    for key, value in overrides.items():
        if not where and key in RETIRED_FIELDS:
            continue
        if key not in names:
            raise ValueError(f"unknown config field {where}{key!r}; known: {', '.join(names)}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}{key} must be an object, got {json.dumps(value)}")
            changes[key] = _apply(current, value, f"{where}{key}.")
            continue
        if isinstance(value, list):
            value = tuple(value)  # JSON has no tuples
        problem = value_problem(leaf(type(target), key), value)
        if problem:
            raise ValueError(f"{where}{key} {problem}")
        changes[key] = value
    return dataclasses.replace(target, **changes)


def apply_overrides(config: TrainConfig, overrides: dict) -> TrainConfig:
    """A new config with nested `overrides` applied; ValueError on unknown fields and bad values."""
    return _apply(config, overrides, "")


def apply_config_file(config: TrainConfig, path: str | Path) -> TrainConfig:
    """`config` with the JSON overrides file at `path` (nested like TrainConfig) applied.

    ValueError "--config PATH: data.batch_size must be an integer, got "2"" for an unreadable file,
    or a field that is unknown, of the wrong type or out of range.
    """
    try:
        overrides = json.loads(Path(path).read_text())
        if not isinstance(overrides, dict):
            raise ValueError("must hold a JSON object")
        return apply_overrides(config, overrides)
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"--config {path}: {error}") from None


def to_dict(config: TrainConfig) -> dict:
    """Plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(asdict(config)))


def from_dict(values: dict) -> TrainConfig:
    """Inverse of to_dict; a field a saved config lacks takes its declared `legacy` value (the
    behaviour before the field existed), else its default."""
    legacy = {item.name: item.spec.legacy for item in leaves(TrainConfig) if item.spec.has_legacy}
    return apply_overrides(apply_overrides(TrainConfig(), nest(legacy)), values)


def resume_fields() -> tuple[str, ...]:
    """Dotted fields a resumed run takes from the command line (declared `resume_may_change`)."""
    return tuple(item.name for item in leaves(TrainConfig) if item.spec.resume_may_change)


def get_field(config, dotted: str):
    """The value of a dotted field name ("data.batch_size") of a config."""
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def validate(config: TrainConfig) -> None:
    """ValueError naming the first field of the wrong type, outside its range or choices, or
    inconsistent with another (e.g. from a --config file)."""
    for item in leaves(TrainConfig):
        problem = value_problem(item, get_field(config, item.name))
        if problem:
            raise ValueError(f"{item.name} {problem}")
    if (
        config.model.embed_dim % config.model.num_heads
        or config.model.decoder_dim % config.model.decoder_heads
    ):
        raise ValueError("model.embed_dim / decoder_dim must be divisible by num_heads / decoder_heads")
    if config.data.batch_size % config.data.repeat_aug:
        raise ValueError(
            f"data.batch_size {config.data.batch_size} must be a multiple of data.repeat_aug {config.data.repeat_aug}"
        )
    mask_problem = prediction_mask_problem(config.model)
    if mask_problem:
        raise ValueError(mask_problem)
    if config.model.mask_type == "future" and config.data.repeat_aug > 1:
        raise ValueError(
            "data.repeat_aug > 1 repeats clips under new masks; the future mask is the same every time"
        )
    if config.data.decoder == "nvdec" and config.data.workers > 0:
        raise ValueError(
            "data.decoder nvdec decodes in the training process (CUDA cannot start in a forked "
            "DataLoader worker): use --workers 0"
        )
    if config.probe_every > 0 and not config.probe_shards:
        raise ValueError("probe_every > 0 needs probe_shards (--probe-shards)")
    model = config.model
    if model.clip_len is not None:
        if model.clip_len % model.token_frames:
            raise ValueError(
                f"model.token_frames {model.token_frames} must divide the clip length {model.clip_len}"
            )
        steps = model.clip_len // model.token_frames
        if model.mask_type in FUTURE_MASKS and steps < 2:
            raise ValueError(
                f"model.mask_type {model.mask_type} needs at least 2 token time steps, the clip has {steps}"
            )
        if model.mask_type in FUTURE_MASKS and model.future_steps >= steps:
            raise ValueError(
                f"model.future_steps {model.future_steps} must be below the clip's {steps} token time steps "
                f"({model.clip_len} frames / token_frames {model.token_frames}): at least one step stays visible"
            )
        if model.mask_type == "tubelet" and steps % model.mask_tubelet:
            raise ValueError(
                f"model.mask_tubelet {model.mask_tubelet} must divide the {steps} token time steps of a clip "
                f"({model.clip_len} frames / token_frames {model.token_frames})"
            )


FUTURE_MASKS = ("future", "future-tube")
"""Mask types that hide whole token steps at the clip's end (ModelConfig.future_steps)."""

PREDICTION_MASKS = {"camera-motion": "future", "hybrid": "future-tube"}
"""Predictions that warp the last visible frame -> the one mask type each works with (raw-pixel targets)."""


def prediction_mask_problem(model: ModelConfig) -> str | None:
    """Why model's mask_type, future_steps, prediction and norm_pix_loss cannot go together, or None."""
    if model.future_steps and model.mask_type not in FUTURE_MASKS:
        return (
            f"model.future_steps {model.future_steps} applies to mask_type future and future-tube only, "
            f"not {model.mask_type} (use --future-steps 0)"
        )
    if model.mask_type == "future-tube" and model.future_steps < 1:
        return (
            "model.mask_type future-tube needs model.future_steps >= 1 (--future-steps: the hidden end steps)"
        )
    needed = PREDICTION_MASKS.get(model.prediction)
    if needed and (model.mask_type != needed or model.norm_pix_loss):
        by_mask = {mask: prediction for prediction, mask in PREDICTION_MASKS.items()}
        fits = by_mask.get(model.mask_type, "pixels")
        hint = (
            f"for mask_type {model.mask_type} use --prediction {fits}"
            if model.mask_type != needed
            else "the warp predicts raw pixels: use --no-norm-pix-loss"
        )
        return (
            f"model.prediction {model.prediction} needs model.mask_type {needed} and model.norm_pix_loss off "
            f"({hint})"
        )
    return None


def size_problem(size: tuple[int, int], patch_size: int) -> str | None:
    """Why frames of `size` (H, W) cannot be cut into patches, with the nearest sizes that can."""
    if all(side % patch_size == 0 for side in size):
        return None
    below = [max(patch_size, side // patch_size * patch_size) for side in size]
    above = [-(-side // patch_size) * patch_size for side in size]
    return (
        f"the shards hold {size[0]}x{size[1]} frames, which patch size {patch_size} does not divide; "
        f"re-ingest with --size {below[0]}x{below[1]} or {above[0]}x{above[1]}"
    )
