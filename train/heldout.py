"""RankMe and emb_std on a fixed held-out clip set, judged against their values at initialization.

The batch signals of train/diagnostics.py (RankMe of 16 mean-pooled embeddings, capped at 15 and
noisy; a threshold just under its value at initialization) fire only on a total collapse: the
demo's emb_std fell 0.28 -> 0.036 without a warning. Here the same clips are encoded every time:

- clips: the first `rankme_clips` clips (default 256) of --viz-shards when given, else of the
  training shards, read once when the run starts (`read_heldout_clips`; which set is logged).
- rankme_heldout: token-level RankMe (train/diagnostics.py effective_rank) of every token of every
  clip, unmasked (the tokens a probe reads), each minus the mean over the clips of the token at its
  (time step, row, column): what position explains is removed, so a position-only encoder scores
  0 (as a constant one does) and the rank counts the directions in which clips differ.
- emb_std_heldout: per-channel std over the clips of their mean-pooled tokens, averaged over
  channels (the training line's emb_std, on fixed clips instead of each step's batch).
- rankme_heldout_ratio: rankme_heldout / its value at step 0 (initialization; a resumed run reads
  it back from metrics.jsonl). A collapse event fires when it falls below
  TrainConfig.collapse_rankme_ratio (0.5): a slow collapse shows long before the rank reaches 0.

Computed at step 0, with every picture (viz_every) and at the end, not on every log line: 256
clips of the tiny preset (64x112, 8 frames) cost about 3.6 training steps (batch 16) on 2 CPU
cores (measured on a busy machine: 10.4 s against 2.9 s a step), so every log line (10 steps)
would add ~35 % to training, the picture cadence (250 steps) ~1.5 %.
The token Gram matrix (d x d) and per-position sums are accumulated batch by batch, so memory does
not grow with the number of clips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mvm.shards import ShardError
from mvm.tensors import frames_to_video
from mvm.train.data import decoded, iter_samples
from mvm.train.diagnostics import rank_of_singular_values

HELDOUT_FIELDS = ("rankme_heldout", "rankme_heldout_ratio", "emb_std_heldout")
"""The metrics.jsonl fields of a held-out line (besides "step" and "heldout_clips")."""


def heldout_source(viz_shards: str, train_shards: str) -> tuple[str, str]:
    """(shard spec, its name in words) of the held-out clips: --viz-shards when given, else the training shards."""
    return (viz_shards, "--viz-shards") if viz_shards else (train_shards, "the training shards")


def read_heldout_clips(urls: list[str], count: int, decoder: str, on_bad_sample: str = "error") -> np.ndarray:
    """The first `count` clips in shard order (fewer when the shards hold fewer): (N, T, H, W, 3) uint8.

    A clip that does not decode is skipped with on_bad_sample "skip" (the training stream's policy)
    and raises ShardError naming shard and key otherwise.
    """
    clips = []
    for item in decoded(_samples(urls), decoder, False, None, on_bad_sample):
        if len(clips) >= count:
            break
        if "frames" in item:
            clips.append(np.asarray(item["frames"]))
    return np.stack(clips) if clips else np.zeros((0, 0, 0, 0, 3), np.uint8)


def _samples(urls: list[str]):
    """Every sample of the shards in order; a shard that cannot be read becomes one {"key", "error"}
    record (train.data.decoded raises or skips it per on_bad_sample, as for the training stream)."""
    for url in urls:
        try:
            yield from iter_samples(url)
        except ShardError as error:
            yield {"key": Path(url).name, "error": str(error)}


@torch.no_grad()
def heldout_signals(encoder, clips: np.ndarray, batch_size: int = 32) -> dict[str, float]:
    """{"rankme_heldout", "emb_std_heldout"} of `encoder` on clips (N, T, H, W, 3) uint8, N >= 2.

    encoder: anything with `token_grid(video (B, T, 3, H, W)) -> (B, T', R, C, d)` (a
    MaskedVideoModel); an nn.Module runs in eval mode on its own device, its mode restored after.
    """
    module = encoder if isinstance(encoder, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    device = next(module.parameters()).device if module is not None else torch.device("cpu")
    if module is not None:
        module.eval()
    gram = position_sums = None
    pooled = []
    try:
        for start in range(0, len(clips), batch_size):
            tokens = encoder.token_grid(frames_to_video(clips[start : start + batch_size]).to(device))
            tokens = tokens.double().flatten(1, 3)  # (B, P, d): P = T' * R * C token positions
            flat = tokens.reshape(-1, tokens.shape[-1])
            gram = flat.T @ flat if gram is None else gram + flat.T @ flat
            sums = tokens.sum(dim=0)
            position_sums = sums if position_sums is None else position_sums + sums
            pooled.append(tokens.mean(dim=1))
    finally:
        if module is not None:
            module.train(was_training)
    count = len(clips)
    # Gram of the tokens minus their per-position mean: sum x x^T - sum_p S_p S_p^T / N.
    residual = gram - position_sums.T @ position_sums / count
    values = torch.linalg.eigvalsh(residual).clamp(min=0).sqrt()  # singular values of the residual tokens
    scale = gram.trace().sqrt()  # the tokens' own norm: the floor below which values are float noise
    pooled = torch.cat(pooled)
    return {
        "rankme_heldout": rank_of_singular_values(values, float(scale)),
        "emb_std_heldout": float(pooled.std(dim=0).mean()),
    }


def heldout_record(step: int, signals: dict[str, float], initial_rankme: float, clips: int) -> dict:
    """The metrics.jsonl line: step, the signals, rankme_heldout_ratio (vs `initial_rankme`; NaN
    when that was 0) and heldout_clips."""
    ratio = signals["rankme_heldout"] / initial_rankme if initial_rankme > 0 else float("nan")
    return {"step": step, **signals, "rankme_heldout_ratio": ratio, "heldout_clips": clips}


def initial_rankme(records: list[dict]) -> float | None:
    """rankme_heldout of the step-0 line of earlier metrics.jsonl records (a resumed run's reference), or None."""
    for record in records:
        if record.get("step") == 0 and "rankme_heldout" in record and "event" not in record:
            return float(record["rankme_heldout"])
    return None


def heldout_collapse_reason(record: dict, min_ratio: float) -> str | None:
    """Why the held-out RankMe says the encoder collapses (its ratio to initialization below min_ratio), or None."""
    ratio = record["rankme_heldout_ratio"]
    if not np.isfinite(ratio) or ratio >= min_ratio:
        return None
    return (
        f"held-out token RankMe {record['rankme_heldout']:.2f} is {ratio:.2f} of its value at "
        f"initialization (< {min_ratio}); emb_std_heldout {record['emb_std_heldout']:.4f}"
    )


class HeldoutMonitor:
    """The run's held-out clips and RankMe reference; `measure` gives each held-out metrics line."""

    def __init__(self, clips: np.ndarray, source: str, initial: float | None):
        self.clips = clips
        """(N, T, H, W, 3) uint8, read once."""
        self.source = source
        """Where the clips come from, in words (logged with every line)."""
        self.initial = initial
        """rankme_heldout at step 0; None until measured (a resumed run reads it from metrics.jsonl)."""

    @classmethod
    def open(cls, config, records: list[dict]) -> HeldoutMonitor:
        """Read config.rankme_clips clips (see `heldout_source`); `records`: metrics.jsonl so far.

        ValueError when fewer than 2 clips are readable (no spread to measure).
        """
        from mvm.shards import resolve_shards

        spec, source = heldout_source(config.viz_shards, config.data.shards)
        clips = read_heldout_clips(
            resolve_shards(spec), config.rankme_clips, config.data.decoder, config.data.on_bad_sample
        )
        if len(clips) < 2:
            raise ValueError(f"held-out RankMe needs at least 2 clips; {source} ({spec}) hold {len(clips)}")
        return cls(clips, f"the first {len(clips)} clips of {source}", initial_rankme(records))

    def measure(self, encoder, step: int, batch_size: int) -> dict:
        """The held-out line at `step` (the first measurement becomes the reference when none was read)."""
        signals = heldout_signals(encoder, self.clips, batch_size)
        if self.initial is None:
            self.initial = signals["rankme_heldout"]
        record = heldout_record(step, signals, self.initial, len(self.clips))
        record["heldout_source"] = self.source
        return record
