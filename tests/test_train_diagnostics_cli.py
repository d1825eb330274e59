"""mvm-train logs copy_loss and the collapse signals, and a firing detector warns in the console,
writes a `collapse` event and marks loss.png; pictures come from the --viz-shards clips."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import run_train, tiny_config, write_shards

from mvm.train.metrics import read_jsonl

torch.set_num_threads(1)


@pytest.mark.slow
def test_logged_diagnostics_and_a_firing_collapse_warning(tmp_path):
    train = write_shards(tmp_path / "train", [6, 6], seed=0)
    val = write_shards(tmp_path / "val", [4], seed=1)
    # an impossible rank threshold: the detector must fire on every logged step
    config = tiny_config(tmp_path / "c.json", collapse_rankme=1e9, viz_every=4, log_every=2)
    result = run_train(
        ["--shards", str(train), "--out", str(tmp_path / "run"), "--model", "tiny", "--config", str(config),
         "--steps", "4", "--device", "cpu", "--mask-type", "tubelet", "--prediction", "pixels", "--viz-shards", str(val)]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "encoder collapse?" in result.stderr and "effective rank" in result.stderr
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in records if "loss" in r and "event" not in r]
    assert [r["step"] for r in steps] == [2, 4]
    for record in steps:
        assert record["copy_loss"] > 0 and record["rankme"] >= 1 and record["time_spread"] > 0
    assert [r["step"] for r in records if r.get("event") == "collapse"] == [2, 4]
    # held-out token RankMe: at initialization and with the picture, on the --viz-shards clips
    heldout = [r for r in records if "rankme_heldout" in r and "event" not in r]
    assert [r["step"] for r in heldout] == [0, 4] and heldout[0]["rankme_heldout_ratio"] == 1.0
    assert heldout[0]["heldout_clips"] == 4 and "--viz-shards" in heldout[0]["heldout_source"]
    assert heldout[1]["rankme_heldout"] > 1 and heldout[1]["emb_std_heldout"] > 0
    assert "held-out RankMe and emb_std: the first 4 clips of --viz-shards" in result.stdout + result.stderr
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    assert (tmp_path / "run" / "viz" / "step-000004.png").stat().st_size > 0
