"""bench/gpu.py on CPU: the FLOP formula against torch's counter, the measurement loop on a tiny
config with the real shard loader (each decoder, worker scaling, larger batches, the NVDEC check),
failure and time-limit handling, the no-CUDA exit, DDP rows, the import graph of what a GPU image
runs (no nuScenes devkit); and what the launch-bound work rests on: compile modes as options, off
by default, and fused attention in the step."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from _train_helpers import REPO, write_shards
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench import gpu, gpu_steps
from mvm.report_format import dumps_json
from mvm.train.config import COMPILE_MODES, TrainConfig, apply_overrides, tiny, validate
from mvm.train.engine import build_optimizer, step_on_batch, wrap_model
from mvm.train.masks import draw_mask
from mvm.train.model import build_model

torch.set_num_threads(1)


def small_config(mask_type: str = "random", **data):
    return apply_overrides(
        tiny(),
        {"model": {"clip_len": 4, "image_size": [32, 64], "embed_dim": 32, "depth": 2, "num_heads": 2,
                   "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "stem_channels": 8,
                   "mask_type": mask_type, "prediction": "camera-motion" if mask_type == "future" else "pixels"},
         "data": {"batch_size": 2, "workers": 0, **data}},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("mask_type", "token_frames", "prediction"),
    [("random", 1, "pixels"), ("tube", 1, "pixels"), ("random", 2, "pixels"), ("future", 2, "camera-motion"),
     ("future-tube", 1, "hybrid")],
)  # fmt: skip
def test_forward_flops_formula_matches_torch_flop_counter(mask_type, token_frames, prediction):
    model_cfg = {"token_frames": token_frames, "prediction": prediction}
    if mask_type == "future-tube":
        model_cfg["future_steps"] = 1
    cfg = apply_overrides(small_config(mask_type), {"model": model_cfg}).model
    model = build_model(cfg)
    video = torch.rand(2, cfg.clip_len, 3, *cfg.image_size)
    ids_keep, mask = draw_mask(cfg, 2, torch.Generator().manual_seed(0))
    # The math attention backend runs as plain matmuls, which the counter sees on CPU.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(video, ids_keep, mask)
    counted = counter.get_total_flops() / 2
    assert abs(gpu_steps.forward_flops(cfg) - counted) / counted < 0.02


def test_peak_table_names():
    assert gpu_steps.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_steps.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_steps.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_steps.peak_tflops("Some Future GPU") is None


def test_run_all_on_cpu_with_the_real_loader(tmp_path):
    shards = write_shards(tmp_path / "shards", [4, 4], clip_len=4, size=(32, 64))
    configs = {"t1": small_config(), "t2": small_config(workers=1)}
    results = gpu.run_all(configs, torch.device("cpu"), str(shards), budget_s=300, warmup=1, steps=2,
                          compile_warmup=1, loader_steps_n=3, work=tmp_path, compile_modes=(),
                          worker_counts=(0, 2), batch_factors=(2,), nvdec_clips=2)  # fmt: skip
    rows = results["rows"]
    loaders = [
        (r["preset"], r["workers"], r["decoder"].split(",")[0].split()[0])
        for r in rows
        if r["kind"] == "loader"
    ]
    # each decoder at the preset's workers (nvdec in the training process), then t1's worker scaling
    assert loaders == [("t1", 0, "auto"), ("t1", 0, "pyav"), ("t1", 0, "nvdec"), ("t2", 1, "auto"),
                       ("t2", 1, "pyav"), ("t2", 0, "nvdec"), ("t1", 2, "auto")]  # fmt: skip
    models = [(r["preset"], r["batch"]) for r in rows if r["kind"] == "model"]
    assert models == [("t1", 2), ("t2", 2), ("t1", 4), ("t2", 4)]  # eager, then the larger batches
    assert not [r for r in rows if "error" in r], rows
    assert all(r["step_time_s"] > 0 and r["clips_per_s"] > 0 for r in rows)
    assert all(0 <= r["data_wait_frac"] <= 1 for r in rows if r["kind"] == "loader")
    assert rows[0]["finite"] and rows[0]["train_gflops_per_clip"] > 0
    nvdec_row = next(r for r in rows if r["kind"] == "loader" and r["decoder"].startswith("nvdec"))
    assert nvdec_row["decoder"] == "nvdec, fell back to PyAV: no CUDA device visible to torch"
    check, profile = results["checks"]
    assert check["kind"] == "nvdec-check" and "no CUDA device visible to torch" in check["error"]
    # the training process's stages per worker count, from bench.loader_scaling (both decoders)
    assert profile["kind"] == "stage-profile" and "error" not in profile, profile
    assert [(r["decoder"], r["workers"]) for r in profile["profile"]] == [
        (decoder, workers) for decoder in ("auto", "pyav-i420") for workers in (0, 2)
    ]
    assert all(r["rows_per_s"] > 0 for r in profile["profile"])
    table = gpu.markdown({**results, "device": "cpu", "torch": torch.__version__, "date": "today", "size": "32x64",
                          "clip_len": 4})  # fmt: skip
    assert (
        "| loader | t2 | fp32 | eager | 2 |" in table
        and "W=1" in table
        and "| model | t1 | fp32 | eager | 4 |" in table
    )
    assert "nvdec-check: RuntimeError: nvdec cannot run here" in table
    assert json.loads(dumps_json(results))["rows"][0]["preset"] == "t1"  # what main() writes is strict JSON


def test_the_nvdec_check_line_reports_difference_and_psnr():
    results = {"rows": [], "ddp": [], "device": "GPU", "torch": "2", "date": "today", "size": "32x64", "clip_len": 4,
               "checks": [{"kind": "nvdec-check", "max_abs_diff": 3, "psnr_db": 51.234, "values": 10, "clips": 32}]}  # fmt: skip
    assert "NVDEC vs PyAV I420 on 32 clips: max |difference| 3, PSNR 51.23 dB." in gpu.markdown(results)


def test_compile_is_off_by_default_and_modes_validate():
    config = TrainConfig()
    assert config.compile is False and config.compile_mode == "default"
    assert COMPILE_MODES == ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
    validate(apply_overrides(config, {"compile": True, "compile_mode": "reduce-overhead"}))
    with pytest.raises(ValueError, match="compile_mode"):
        validate(apply_overrides(config, {"compile_mode": "fastest"}))
    model = build_model(small_config().model)
    assert wrap_model(model, torch.device("cpu"), 1, config.compile, config.compile_mode)[0] is model


def test_the_step_runs_fused_attention():
    """The blocks call F.scaled_dot_product_attention (flash / memory-efficient kernels on a GPU)."""
    config = small_config()
    model = build_model(config.model)
    optimizer = build_optimizer(model, config.optim)
    video = torch.rand(2, config.model.clip_len, 3, *config.model.image_size)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        stats, _ = step_on_batch(model, optimizer, video, config, 0, 0, bf16=False)
    ops = {event.key for event in profiler.key_averages()}
    assert "aten::scaled_dot_product_attention" in ops and bool(stats.values[0].item())


@pytest.mark.slow
def test_a_failing_or_slow_measurement_is_recorded_and_the_rest_go_on():
    rows = []
    budget = gpu.Budget(60, time.perf_counter())

    def broken():
        raise RuntimeError("CUDA out of memory")

    def slow():
        time.sleep(30)
        return {}

    gpu.measure(rows, budget, 60, {"name": "broken"}, broken)
    gpu.measure(rows, budget, 11, {"name": "slow"}, slow)
    gpu.measure(rows, budget, 60, {"name": "fine"}, lambda: {"x": 1.0})
    assert rows[0]["error"] == "RuntimeError: CUDA out of memory"
    assert "TimeoutError" in rows[1]["error"] and rows[1]["wall_s"] < 20
    assert rows[2]["x"] == 1.0
    gpu.measure(rows, gpu.Budget(12, time.perf_counter()), 60, {"name": "late"}, lambda: {"x": 1.0})
    assert rows[3]["error"] == "skipped: total time budget spent"


@pytest.mark.slow
def test_without_cuda_it_says_so_and_exits_0():
    result = subprocess.run([sys.executable, "-m", "bench.gpu"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().count("\n") == 0 and "no CUDA device" in result.stdout


@pytest.mark.slow
def test_training_and_bench_gpu_import_no_devkit():
    """A GPU image has no nuScenes devkit: training, loading and bench.gpu must not import it."""
    code = (
        "import sys; sys.modules['nuscenes'] = None\n"  # any `import nuscenes` now raises ImportError
        "import mvm.train.cli, mvm.train.loop, mvm.train.data, bench.gpu\n"
        "assert not [m for m, mod in sys.modules.items() if m.startswith('nuscenes') and mod is not None]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_ddp_scaling_rows_on_cpu(tmp_path):
    row = gpu_steps.ddp_scaling(small_config(), 2, "cpu", tmp_path, steps=2)
    assert row["world"] == 2 and row["step_time_s_world1"] > 0 and row["step_time_s_worldN"] > 0
    assert row["ddp_overhead"] == pytest.approx(row["step_time_s_worldN"] / row["step_time_s_world1"] - 1)
