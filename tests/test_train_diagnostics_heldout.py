"""mvm.train.heldout: token-level RankMe on fixed clips falls on a slowly collapsing encoder and the
detector fires when it reaches half its value at initialization; a healthy encoder stays quiet."""

from __future__ import annotations

import numpy as np
import torch
from _train_helpers import small_model

from mvm.train.heldout import HeldoutMonitor, heldout_collapse_reason, heldout_signals, initial_rankme
from mvm.train.model import build_model

torch.set_num_threads(1)

CFG = small_model()
MIN_RATIO = 0.5


def _clips(count: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 4, 32, 48, 3), dtype=np.uint8)


class Collapsing:
    """An encoder whose output map is interpolated towards a rank-1 projection: (1 - a) x + a (x.u) u."""

    def __init__(self, model: torch.nn.Module, direction: torch.Tensor):
        self.model, self.direction, self.amount = model, direction / direction.norm(), 0.0

    def token_grid(self, video: torch.Tensor) -> torch.Tensor:
        tokens = self.model.token_grid(video)
        projected = (tokens @ self.direction)[..., None] * self.direction
        return (1 - self.amount) * tokens + self.amount * projected


def _reference_rankme(encoder, clips: np.ndarray) -> float:
    """RankMe of every token minus its per-position mean over the clips, by a full SVD in numpy."""
    video = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 255
    with torch.no_grad():
        tokens = encoder.token_grid(video).double().numpy()
    residual = (tokens - tokens.mean(axis=0, keepdims=True)).reshape(-1, tokens.shape[-1])
    values = np.linalg.svd(residual, compute_uv=False)
    values = values[values > 1e-5 * np.linalg.norm(tokens)]
    share = values / values.sum()
    return float(np.exp(-(share * np.log(share)).sum()))


def _run(encoder, clips, steps, update) -> list[dict]:
    """Held-out lines at every step of a pretend run in which `update(step)` changes the encoder."""
    monitor = HeldoutMonitor(clips, "test clips", None)
    records = []
    for step in steps:
        update(step)
        records.append(monitor.measure(encoder, step, batch_size=7))  # batches that do not divide N
    return records


def test_rankme_falls_on_a_slowly_collapsing_encoder_and_the_detector_fires_on_time():
    torch.manual_seed(0)
    encoder = Collapsing(build_model(CFG), torch.randn(CFG.embed_dim))
    clips = _clips()
    steps = list(range(0, 101, 10))

    def amount(step: int) -> float:  # the other directions shrink by half every 10 steps
        return 1 - 0.5 ** (step / 10)

    def update(step: int) -> None:
        encoder.amount = amount(step)

    records = _run(encoder, clips, steps, update)
    ranks = [r["rankme_heldout"] for r in records]
    assert records[0]["rankme_heldout_ratio"] == 1.0 and ranks[0] > 8
    assert all(later < earlier for earlier, later in zip(ranks, ranks[1:], strict=False))
    assert ranks[-1] < 0.2 * ranks[0]
    # the streamed Gram gives the rank of a full SVD of the position-centred tokens
    encoder.amount = 0.5
    assert (
        abs(heldout_signals(encoder, clips, 5)["rankme_heldout"] - _reference_rankme(encoder, clips)) < 1e-6
    )
    fired = [r["step"] for r in records if heldout_collapse_reason(r, MIN_RATIO)]
    expected = [
        step
        for step in steps
        if (setattr(encoder, "amount", amount(step)) or _reference_rankme(encoder, clips))
        < MIN_RATIO * ranks[0]
    ]
    assert fired == expected and 0 < fired[0] < 100  # on time: from the first step below half, not before
    assert records[-1]["emb_std_heldout"] < records[0]["emb_std_heldout"]


def test_a_healthy_encoder_stays_quiet():
    torch.manual_seed(0)
    model = build_model(CFG)
    clips = _clips()
    noise = torch.Generator().manual_seed(1)

    def update(step: int) -> None:  # training-sized weight changes
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.01 * param.abs().mean() * torch.randn(param.shape, generator=noise))

    records = _run(model, clips, range(0, 60, 10), update)
    assert not [r for r in records if heldout_collapse_reason(r, MIN_RATIO)]
    assert min(r["rankme_heldout_ratio"] for r in records) > 0.8
    assert model.training  # measured in eval mode, the mode restored


def test_position_only_encoder_has_rank_zero_and_resume_reads_the_reference():
    torch.manual_seed(0)
    model = build_model(CFG)
    for param in model.stem.conv2.parameters():  # the stem outputs 0: only the position codes are left
        param.data.zero_()
    assert heldout_signals(model, _clips(8))["rankme_heldout"] == 0.0
    records = [{"step": 0, "rankme_heldout": 12.5}, {"event": "collapse", "step": 0, "rankme_heldout": 1.0}]
    assert initial_rankme(records) == 12.5 and initial_rankme(records[1:]) is None
