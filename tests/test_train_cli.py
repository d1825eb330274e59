"""mvm-train end to end (real subprocesses, real torchrun): outputs, resume, NaN guard, DDP, bad data.

Faults (a NaN batch, a SIGKILL mid-run) are injected by tests/_train_faults.py, never by options.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_helpers import REPO, VENV_BIN, read_keys, run_train, tiny_config, write_shards
from click.testing import CliRunner

from mvm.train.checkpoint import complete_checkpoints, load_for_eval
from mvm.train.cli import main
from mvm.train.metrics import read_jsonl

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


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_run_outputs_and_kill_resume_reproduce_the_stream(shard_dir, tmp_path):
    config = tiny_config(tmp_path / "c.json", data={"workers": 2}, ckpt_every=3, keep_ckpts=2, viz_every=5)
    common = ["--shards", str(shard_dir), "--model", "tiny", "--config", str(config), "--steps", "12",
              "--device", "cpu"]  # fmt: skip
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    check(run_train([*common, "--out", str(whole)]))
    # 18 clips, batch 4 -> 4 steps per epoch; SIGKILL before step 8 is mid-epoch, after the step-6 checkpoint
    children = tmp_path / "children.txt"
    killed = run_train([*common, "--out", str(broken)], faults={"KILL_AT_STEP": 7, "CHILDREN_FILE": children})
    assert killed.returncode == -9, killed.stderr
    assert [p.name for p in complete_checkpoints(broken)] == ["step-000003", "step-000006"]
    workers = [int(pid) for pid in children.read_text().split()]
    assert len(workers) == 2  # the DataLoader workers, which must not outlive their parent
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)]
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
    records = read_jsonl(whole / "metrics.jsonl")
    record = [r for r in records if "loss" in r and "event" not in r][-1]
    heldout = [r for r in records if "rankme_heldout" in r]  # at step 0, with each picture, at the end
    assert [r["step"] for r in heldout] == [0, 5, 10, 12] and heldout[0]["rankme_heldout_ratio"] == 1.0
    for field in ("step", "loss", "lr", "grad_norm", "emb_std", "emb_norm", "clips_per_s", "data_wait_frac",
                  "step_time_s", "peak_mem_mb"):  # fmt: skip
        assert field in record, field
    saved = json.loads((whole / "config.json").read_text())
    assert "debug_nan_at_step" not in saved and saved["model"]["patch_size"] == 16
    model, cfg, _ = load_for_eval(whole)
    assert cfg.model.image_size == (32, 64) and cfg.model.clip_len == 8
    steps = 8 // cfg.model.token_frames
    assert model.token_grid(torch.rand(2, 8, 3, 32, 64)).shape == (2, steps, 2, 4, cfg.model.embed_dim)
    refused = run_train([*common, "--out", str(whole), "--resume", "never"])
    check(refused, 2)
    assert "already holds checkpoints" in refused.stderr
    check_tensorboard(whole, record, heldout[-1])
    check_damaged_checkpoint_fallback(whole, common, tmp_path)


def check_tensorboard(run: Path, last: dict, heldout: dict) -> None:
    """The optional TensorBoard mirror carries metrics.jsonl's names and values (a step line's and a
    held-out line's numbers), and the pictures."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    names = set(events.Tags()["scalars"])
    numbers = {name for name, value in heldout.items() if isinstance(value, int | float)}
    assert names == (set(last) | numbers) - {"step"}
    assert events.Scalars("loss")[-1].step == last["step"]
    assert abs(events.Scalars("loss")[-1].value - last["loss"]) < 1e-4
    assert [image.step for image in events.Images("viz")] == [5, 10, 12]


def check_damaged_checkpoint_fallback(whole: Path, common: list[str], tmp_path: Path) -> None:
    """A complete but unloadable newest checkpoint is named and skipped, by resume and by load_for_eval."""
    damaged = tmp_path / "damaged"
    shutil.copytree(whole, damaged)
    state = damaged / "checkpoints" / "step-000012" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    probe_load = subprocess.run(
        [sys.executable, "-c", f"from mvm.train.checkpoint import load_for_eval; load_for_eval({str(damaged)!r})"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    check(probe_load)
    assert str(state) in probe_load.stderr and "using checkpoint step-000009" in probe_load.stderr
    resumed = run_train([*common, "--steps", "13", "--out", str(damaged)])  # the last --steps wins
    check(resumed)
    assert str(state) in resumed.stderr and "Traceback" not in resumed.stderr
    assert [r for r in read_jsonl(damaged / "metrics.jsonl") if r.get("event") == "resume"][-1]["step"] == 9
    assert [step for step, _ in read_keys(damaged)] == list(range(1, 14))


@pytest.mark.slow
def test_nan_injection_triggers_the_guard(shard_dir, tmp_path):
    common = ["--shards", str(shard_dir), "--model", "tiny", "--steps", "6", "--device", "cpu"]
    tolerated = tiny_config(tmp_path / "t.json", max_nonfinite=2)
    check(
        run_train(
            [*common, "--config", str(tolerated), "--out", str(tmp_path / "ok")], faults={"NAN_AT_STEP": 2}
        )
    )
    records = read_jsonl(tmp_path / "ok" / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("event") == "nonfinite"] == [3]
    assert all(r["loss"] == r["loss"] for r in records if "loss" in r and "event" not in r)  # no NaN logged
    model, _, _ = load_for_eval(tmp_path / "ok")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_nan_guard_stops_every_rank_with_a_checkpoint(shard_dir, tmp_path):
    stopping = tiny_config(tmp_path / "s.json", data={"workers": 1, "batch_size": 2}, max_nonfinite=1)
    run = tmp_path / "stop"
    result = run_train(
        ["--shards", str(shard_dir), "--model", "tiny", "--steps", "6", "--device", "cpu", "--config", str(stopping),
         "--out", str(run)], nproc=2, timeout=180, faults={"NAN_AT_STEP": 2},
    )  # fmt: skip
    assert result.returncode != 0
    # torchrun reports the first rank to exit with 3 and then terminates the other, which by then has
    # passed the final barrier (everything is written): both ranks stopped at the same step.
    # (torchrun prints a traceback of its own; the ranks print none.)
    assert "exitcode  : 3" in result.stderr and "train/loop.py" not in result.stderr
    assert "non-finite steps in a row" in result.stderr
    assert [p.name for p in complete_checkpoints(run)] == ["step-000003"]
    assert [len(read_keys(run, rank)) for rank in (0, 1)] == [3, 3]
    assert read_jsonl(run / "metrics.jsonl")[-1]["event"] == "stopped"
    model, _, _ = load_for_eval(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def ddp_step(out: Path, nproc: int, *extra: str) -> dict:
    """tests/_ddp_step.py (one fixed global batch, one step) on nproc gloo ranks -> saved tensors."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(REPO / "tests" / "_ddp_step.py")
    launcher = (
        [str(VENV_BIN / "torchrun"), f"--nproc_per_node={nproc}", "--standalone"]
        if nproc > 1
        else [sys.executable]
    )
    result = subprocess.run([*launcher, script, str(out), *extra], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=540)  # fmt: skip
    check(result)
    return torch.load(out, weights_only=True)


ADAM_REACH = 2 * 1e-3
"""How far Adam can move a weight in tests/_ddp_step.py: 2 steps of at most lr = 1e-3 each. Weights
are compared relative to it (1 %): a gradient difference of 1e-9 can still move a weight whose
gradient is small and changes sign between the steps by a visible fraction of lr."""


def max_difference(a: dict, b: dict, prefix: str) -> float:
    """Largest |a - b| over the gradients (prefix "grad.") or the parameters (prefix "").

    Parameters are compared where their gradient is above float noise: Adam divides a gradient by
    its own running size, so an analytically zero gradient (the attention key bias: softmax ignores
    a shift shared by all keys) turns rounding noise of ~1e-10 into an update of any sign.
    """
    if prefix == "grad.":
        return max((a[k] - b[k]).abs().max().item() for k in a if k.startswith("grad."))
    worst = 0.0
    for name in (k for k in a if not k.startswith("grad.")):
        live = a[f"grad.{name}"].abs() > 1e-7
        if live.any():
            worst = max(worst, (a[name] - b[name])[live].abs().max().item())
    return worst


@pytest.mark.slow
def test_ddp_matches_one_process_on_the_same_global_batch(tmp_path):
    single = ddp_step(tmp_path / "one.pt", 1)
    ddp = ddp_step(tmp_path / "two.pt", 2)
    assert max_difference(single, ddp, "grad.") < 1e-5
    assert max_difference(single, ddp, "") < 0.01 * ADAM_REACH
    # the gradients are not all ~0, so agreeing within 1e-5 says something
    assert max(v.abs().max().item() for k, v in single.items() if k.startswith("grad.")) > 1e-3


@pytest.mark.slow
def test_compiled_ddp_matches_one_process(tmp_path):
    """torch.compile outside DDP (mvm.train.engine.wrap_model): inductor on CPU, ~1 CPU-minute per rank."""
    single = ddp_step(tmp_path / "one.pt", 1)
    compiled = ddp_step(tmp_path / "two.pt", 2, "--compile")
    assert max_difference(single, compiled, "grad.") < 1e-5
    assert max_difference(single, compiled, "") < 0.01 * ADAM_REACH


@pytest.mark.slow
def test_two_process_gloo_torchrun_equal_steps(shard_dir, tmp_path):
    # 4 shards, 2 ranks x 1 worker: 18 clips split 9/9 (greedy), batch 2 -> 4 steps per epoch per rank;
    # skip mode adds the per-step agreement on whether every rank still has a batch
    config = tiny_config(tmp_path / "c.json", data={"workers": 1, "batch_size": 2, "on_bad_sample": "skip"},
                         log_every=2)  # fmt: skip
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


@pytest.mark.slow
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "-1"], "must be >= 1"),
        (["--batch-size", "0"], "must be >= 1"),
        (["--steps", "-5"], "must be >= 0"),
        (["--lr", "nan"], "must be a finite number"),
        (["--lr", "0"], "must be > 0"),
        (["--mask-ratio", "1.5"], "must be <= 1"),
        (["--workers", "two"], "not a valid int"),
        (["--model", "huge"], "huge"),
        (["--probe-every", "5"], "needs probe_shards"),
        (["--token-frames", "3"], "must divide the clip length"),
        (["--mask-type", "tubelet", "--mask-tubelet", "3", "--prediction", "pixels"], "must divide the"),
        (["--model", "tiny", "--mask-type", "tube"], "camera-motion needs model.mask_type future"),
        (["--model", "tiny", "--repeat-aug", "2"], "the future mask is the same every time"),
    ],
)
def test_bad_options_are_usage_errors_without_traceback(shard_dir, tmp_path, args, message):
    result = CliRunner().invoke(main, ["--shards", str(shard_dir), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_bad_config_file_values_and_sizes_are_refused(shard_dir, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data": {"batch_size": -1}}))
    result = CliRunner().invoke(
        main, ["--shards", str(shard_dir), "--out", str(tmp_path / "r"), "--config", str(config)]
    )
    assert result.exit_code == 2 and "data.batch_size must be >= 1" in result.output

    odd = write_shards(tmp_path / "odd", [2], clip_len=4, size=(40, 72))
    result = CliRunner().invoke(main, ["--shards", str(odd), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "40x72" in result.output and "--size 32x64 or 48x80" in result.output


@pytest.mark.slow
def test_resume_that_changes_the_data_is_refused(shard_dir, tmp_path):
    config = tiny_config(tmp_path / "c.json")
    common = [
        "--model",
        "tiny",
        "--config",
        str(config),
        "--steps",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "r"),
    ]
    check(run_train(["--shards", str(shard_dir), *common]))
    other = write_shards(tmp_path / "other", [4, 4], seed=1)
    moved = run_train(["--shards", str(other), *common, "--steps", "3"])
    check(moved, 2)
    assert "data.shards" in moved.stderr and "start a new run folder" in moved.stderr
    assert "Traceback" not in moved.stderr
    same_files = run_train(["--shards", f"{shard_dir}/shard-{{000000..000003}}.tar", *common, "--steps", "3"])
    check(same_files)


def test_options_are_generated_from_documented_config_fields():
    from mvm.options import leaves
    from mvm.train.config import TrainConfig

    by_name = {param.name: param for param in main.params}
    flags = [item for item in leaves(TrainConfig) if item.spec.flag]
    assert {"data.shards", "steps", "optim.lr", "model.mask_type"} <= {item.name for item in flags}
    for item in flags:
        assert item.doc, f"{item.name} has no docstring"
        param = by_name.pop(item.name.replace(".", "__"))
        assert param.help.startswith(item.doc)
    assert set(by_name) == {"run", "model", "resume", "config_file"}  # the hand-written ones


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"data": {"batch_size": "2"}}, 'data.batch_size must be an integer, got "2"'),
        ({"optim": {"lr": "0.1"}}, 'optim.lr must be a number, got "0.1"'),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"steps": 2.5}, "steps must be an integer, got 2.5"),
        ({"steps": True}, "steps must be an integer, got true"),
        ({"optim": {"betas": [0.9]}}, "optim.betas must be a list of 2 numbers, got [0.9]"),
        ({"optim": {"betas": [0.9, 1.5]}}, "optim.betas must be < 1, got 1.5"),
        ({"model": {"mask_type": "zigzag"}}, "model.mask_type must be one of tube, tubelet"),
        ({"model": {"norm_pix_loss": "no"}}, 'model.norm_pix_loss must be true or false, got "no"'),
        ({"data": 4}, "data must be an object, got 4"),
        ({"optim": {"lr": 1e999}}, "optim.lr must be a finite number"),
        ([1, 2], "must hold a JSON object"),
    ],
)
def test_bad_config_file_values_exit_2_naming_the_key(shard_dir, tmp_path, content, message):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(content))
    result = CliRunner().invoke(
        main, ["--shards", str(shard_dir), "--out", str(tmp_path / "r"), "--config", str(config)]
    )
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and error[0].startswith(f"Error: --config {config}: ") and message in error[0]
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_binary_config_file_is_one_line_exit_2(shard_dir, tmp_path):
    config = tmp_path / "c.json"
    config.write_bytes(b"\xff\xfe\x00binary")
    result = CliRunner().invoke(
        main, ["--shards", str(shard_dir), "--out", str(tmp_path / "r"), "--config", str(config)]
    )
    assert result.exit_code == 2, result.output
    assert f"Error: --config {config}: 'utf-8' codec can't decode" in result.output
    assert "Traceback" not in result.output


def test_unwritable_run_folder_is_one_line_exit_1(shard_dir, tmp_path):
    config = tiny_config(tmp_path / "c.json")
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    for out, message in ((a_file, "is not a folder"), (tmp_path / "link", "symlink")):
        result = CliRunner().invoke(
            main, ["--shards", str(shard_dir), "--model", "tiny", "--config", str(config), "--device", "cpu",
                   "--out", str(out)],
        )  # fmt: skip
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "elsewhere").iterdir())
