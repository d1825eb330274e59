"""mvm-train end to end (real subprocesses, real torchrun): outputs, resume, NaN guard, DDP, bad data."""

from __future__ import annotations

import json

import pytest
import torch
from _train_helpers import read_keys, run_train, tiny_config, write_shards

from train.checkpoint import complete_checkpoints, load_for_eval
from train.metrics import read_jsonl

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "train", [6, 5, 4, 3])


def step_losses(run) -> dict[int, float]:
    return {
        r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r and "event" not in r
    }


def check(result, code=0):
    assert result.returncode == code, result.stdout + result.stderr


def test_run_outputs_and_kill_resume_reproduce_the_stream(shard_dir, tmp_path):
    config = tiny_config(tmp_path / "c.json", data={"workers": 2}, ckpt_every=3, keep_ckpts=2, viz_every=5)
    common = [
        "--shards",
        str(shard_dir),
        "--model",
        "tiny",
        "--config",
        str(config),
        "--steps",
        "12",
        "--device",
        "cpu",
    ]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    check(run_train([*common, "--out", str(whole)]))
    # 18 clips, batch 4 -> 4 steps per epoch; the kill at step 7 is mid-epoch, after the step-6 checkpoint
    check(run_train([*common, "--out", str(broken), "--stop-after-steps", "7"]))
    assert [p.name for p in complete_checkpoints(broken)] == ["step-000003", "step-000006"]
    assert len(read_keys(broken)) == 7
    check(run_train([*common, "--out", str(broken)]))

    assert read_keys(broken) == read_keys(whole)
    keys = read_keys(whole)
    assert [step for step, _ in keys] == list(range(1, 13))
    for epoch in range(3):  # no clip twice within an epoch
        epoch_keys = [k for _, batch in keys[epoch * 4 : epoch * 4 + 4] for k in batch]
        assert len(set(epoch_keys)) == 16
    whole_loss, broken_loss = step_losses(whole), step_losses(broken)
    assert sorted(whole_loss) == sorted(broken_loss) == list(range(1, 13))
    assert all(abs(whole_loss[s] - broken_loss[s]) < 1e-4 for s in whole_loss)
    events = [r["event"] for r in read_jsonl(broken / "metrics.jsonl") if "event" in r]
    assert "resume" in events

    assert [p.name for p in complete_checkpoints(whole)] == ["step-000009", "step-000012"]
    for name in ("config.json", "loss.png", "viz/step-000005.png", "viz/step-000012.png"):
        assert (whole / name).is_file(), name
    record = read_jsonl(whole / "metrics.jsonl")[-1]
    for field in ("step", "loss", "lr", "grad_norm", "emb_std", "emb_norm", "clips_per_s", "data_wait_frac",
                  "step_time_s", "peak_mem_mb"):  # fmt: skip
        assert field in record, field
    model, cfg = load_for_eval(whole)
    assert cfg.model.image_size == (32, 64) and cfg.model.clip_len == 8
    assert model.features(torch.rand(2, 8, 3, 32, 64)).shape == (2, 3 * cfg.model.embed_dim)
    refused = run_train([*common, "--out", str(whole), "--resume", "never"])
    check(refused, 2)
    assert "already holds checkpoints" in refused.stderr


def test_nan_injection_triggers_the_guard(shard_dir, tmp_path):
    common = ["--shards", str(shard_dir), "--model", "tiny", "--steps", "6", "--device", "cpu"]
    tolerated = tiny_config(tmp_path / "t.json", debug_nan_at_step=2, max_nonfinite=2)
    check(run_train([*common, "--config", str(tolerated), "--out", str(tmp_path / "ok")]))
    records = read_jsonl(tmp_path / "ok" / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("event") == "nonfinite"] == [3]
    assert all(r["loss"] == r["loss"] for r in records if "loss" in r and "event" not in r)  # no NaN logged
    model, _ = load_for_eval(tmp_path / "ok")
    assert all(torch.isfinite(p).all() for p in model.parameters())

    stopping = tiny_config(tmp_path / "s.json", debug_nan_at_step=2, max_nonfinite=1)
    result = run_train([*common, "--config", str(stopping), "--out", str(tmp_path / "stop")])
    check(result, 3)
    assert "non-finite steps in a row" in result.stderr
    assert [p.name for p in complete_checkpoints(tmp_path / "stop")] == ["step-000003"]
    assert read_jsonl(tmp_path / "stop" / "metrics.jsonl")[-1]["event"] == "stopped"


@pytest.mark.slow
def test_two_process_gloo_torchrun_equal_steps(shard_dir, tmp_path):
    # 4 shards, 2 ranks x 1 worker: 18 clips split 9/9 (greedy), batch 2 -> 4 steps per epoch per rank
    config = tiny_config(tmp_path / "c.json", data={"workers": 1, "batch_size": 2}, log_every=2)
    run = tmp_path / "ddp"
    result = run_train(
        ["--shards", str(shard_dir), "--model", "tiny", "--config", str(config), "--steps", "6", "--device", "cpu",
         "--out", str(run)], nproc=2, timeout=180,
    )  # fmt: skip
    check(result)
    rank0, rank1 = read_keys(run, 0), read_keys(run, 1)
    assert [s for s, _ in rank0] == [s for s, _ in rank1] == list(range(1, 7))
    first_epoch = [set(k for _, batch in keys[:4] for k in batch) for keys in (rank0, rank1)]
    assert not first_epoch[0] & first_epoch[1]
    records = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(0 < r["comm_frac"] < 1 for r in records)
    assert json.loads((run / "config.json").read_text())["data"]["batch_size"] == 2


def test_bad_data_gives_clear_errors(shard_dir, tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    for path in shard_dir.iterdir():
        (bad_dir / path.name).write_bytes(path.read_bytes())
    data = (bad_dir / "shard-000002.tar").read_bytes()
    (bad_dir / "shard-000002.tar").write_bytes(data[: len(data) // 2])
    config = tiny_config(tmp_path / "c.json", data={"workers": 1})
    common = ["--model", "tiny", "--config", str(config), "--steps", "8", "--device", "cpu"]

    failed = run_train(["--shards", str(bad_dir), "--out", str(tmp_path / "r1"), *common])
    check(failed, 1)
    assert "data error: shard" in failed.stderr and "shard-000002.tar" in failed.stderr

    skipped = run_train(
        ["--shards", str(bad_dir), "--out", str(tmp_path / "r2"), "--on-bad-sample", "skip", *common]
    )
    check(skipped)
    bad = [r for r in read_jsonl(tmp_path / "r2" / "metrics.jsonl") if r.get("event") == "bad_sample"]
    assert bad and all("shard-000002.tar" in r["detail"] for r in bad)

    missing = run_train(
        ["--shards", f"{shard_dir}/shard-{{000000..000009}}.tar", "--out", str(tmp_path / "r3"), *common]
    )
    check(missing, 2)
    assert "6 of 10 shards missing" in missing.stderr
    assert not (tmp_path / "r3").exists()
