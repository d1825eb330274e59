"""The scaling sweep's settings and plan (slurm/settings.py, slurm/plan.py): pure functions, no jobs run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mvm.ingest.config import IngestConfig
from mvm.slurm.plan import (
    experiment_record,
    experiments,
    job_line,
    plan_sweep,
    scene_chunks,
    train_resources,
)
from mvm.slurm.settings import SettingsError, settings_from_env

PYTHON = sys.executable
SWEEP = Path("/sweeps/s")


def _settings(mode="local", gpus_per_node=0, **env):
    base = {"MVM_DATAROOT": "/data/nuscenes", "MVM_VERSION": "v1.0-trainval"} if mode == "slurm" else {}
    return settings_from_env(base | {f"MVM_SWEEP_{k.upper()}": v for k, v in env.items()}, mode, SWEEP,
                             gpus_per_node)  # fmt: skip


def _plan(settings, existing=()):
    return plan_sweep(settings, set(existing).__contains__, PYTHON)


def _by_id(plan):
    return {job.id: job for job in plan.jobs}


def test_defaults_come_from_the_ingest_config():
    defaults = IngestConfig(dataroot="d", version="v", scenes_spec="all")
    local, cluster = _settings(), _settings("slurm", gpus_per_node=4)
    assert local.base_clip_len == cluster.base_clip_len == defaults.clip_len == 8
    assert cluster.clip_lens == (4, 8, 12) and local.clip_lens == (4, 8)
    assert cluster.size == defaults.size and local.size == (64, 112)
    assert cluster.worlds == (1, 4) and _settings("slurm", gpus_per_node=0).worlds == (1, 2)
    assert (local.model, local.steps, cluster.model, cluster.steps) == ("tiny", 150, "small", 20000)
    assert local.dataroot == SWEEP / "nuscenes" and cluster.dataroot == Path("/data/nuscenes")
    assert local.train_args == ("--log-every", "10", "--viz-every", "1000") and cluster.train_args == ()


def test_settings_are_numbers_sorted_once_and_bad_ones_name_their_variable():
    settings = _settings(scales="4 1 2 2", clip_lens="12 4", train_args="--lr '1e-3' --note 'a b'")
    assert settings.scales == (1, 2, 4) and settings.clip_lens == (4, 12)
    assert settings.base_clip_len == 4  # 8 not swept: the smallest T is the base point
    assert settings.train_args == ("--lr", "1e-3", "--note", "a b")
    for env, variable in [({"scales": "1 2.5"}, "SCALES"), ({"scales": "0 1"}, "SCALES"),
                          ({"clip_lens": "1 8"}, "CLIP_LENS"), ({"steps": "10 20"}, "STEPS"),
                          ({"size": "63x112"}, "SIZE"), ({"size": "big"}, "SIZE"),
                          ({"splits": "train"}, "SPLITS"), ({"train_args": "--x 'open"}, "TRAIN_ARGS")]:  # fmt: skip
        with pytest.raises(SettingsError, match=f"MVM_SWEEP_{variable}"):
            _settings(**env)
    with pytest.raises(SettingsError, match="MVM_DATAROOT"):
        settings_from_env({"MVM_VERSION": "v"}, "slurm", SWEEP)


def test_experiments_vary_one_axis_around_the_base_point():
    names = [e.name for e in experiments(_settings())]
    assert names == ["x1-T8-w1", "x2-T8-w1", "x4-T8-w1", "x4-T4-w1", "x4-T8-w2"]  # x4-T8-w1 once
    names = [e.name for e in experiments(_settings("slurm", gpus_per_node=4))]
    assert names == ["x1-T8-w1", "x2-T8-w1", "x4-T8-w1", "x4-T4-w1", "x4-T12-w1", "x4-T8-w4"]


def test_scene_chunks_partition_the_split_in_proportion_to_the_scales():
    names = [f"scene-{i:04d}" for i in range(10)]
    chunks = scene_chunks(names, [1, 2, 4], seed=0)
    assert [len(c) for c in chunks] == [2, 3, 5]  # round(10/4), round(10/2) - 2, 10 - 5
    assert sorted(sum(chunks, [])) == names
    assert chunks == scene_chunks(names, [1, 2, 4], seed=0)
    assert chunks != scene_chunks(names, [1, 2, 4], seed=1)
    with pytest.raises(ValueError, match="3 scenes are too few"):
        scene_chunks(names[:3], [1, 2, 4, 8], seed=0)


def test_fresh_local_plan_runs_every_step_once_in_dependency_order():
    settings = _settings()
    plan = _plan(settings)
    ids = [job.id for job in plan.jobs]
    assert ids[:2] == ["synth", "scenes"] and ids[-1] == "report"
    assert sorted(i for i in ids if i.startswith("ingest")) == sorted(
        f"ingest-T{t}-{part}" for t in (4, 8) for part in ("train-0", "train-1", "train-2", "val")
    )
    assert len(ids) == len(set(ids)) == 2 + 8 + 2 * 5 + 1
    for position, job in enumerate(plan.jobs):  # every dependency runs earlier
        assert set(job.after) <= set(ids[:position]), job.id
    jobs = _by_id(plan)
    assert jobs["train-x1-T8-w1"].after == ("ingest-T8-train-0",)
    assert jobs["train-x2-T8-w1"].after == ("ingest-T8-train-0", "ingest-T8-train-1")
    assert jobs["probe-x1-T8-w1"].after == ("train-x1-T8-w1", "ingest-T8-train-0", "ingest-T8-train-1",
                                            "ingest-T8-train-2", "ingest-T8-val")  # fmt: skip
    assert jobs["ingest-T8-val"].after == ("synth",) and jobs["ingest-T8-train-0"].after == ("scenes",)
    assert jobs["report"].after == tuple(f"probe-{e.name}" for e in plan.planned)
    assert {job.how for job in plan.jobs} == {"run", "gate"}
    assert jobs["probe-x4-T8-w2"].how == "gate" and jobs["probe-x4-T8-w2"].argv[0] == "mvm-probe"
    assert jobs["train-x4-T8-w1"].argv[0] == "mvm-train" and jobs["train-x4-T8-w1"].argv[-2:] == (
        "--resume",
        "auto",
    )
    two = jobs["train-x4-T8-w2"].argv
    assert two[:6] == (
        "env",
        "OMP_NUM_THREADS=1",
        "torchrun",
        "--standalone",
        "--nproc-per-node=2",
        "--no-python",
    )
    ingest = jobs["ingest-T4-train-1"].argv
    assert ingest[ingest.index("--scenes") + 1] == f"@{SWEEP}/scenes/train-1.txt"
    assert ingest[ingest.index("--clip-len") + 1] == "4" and ingest[ingest.index("--size") + 1] == "64x112"


def test_rerun_skips_complete_ingests_and_probed_experiments():
    settings = _settings()
    dataroot = settings.dataroot / settings.version / "scene.json"
    t8 = [
        SWEEP / "shards" / "T8" / part / "manifest.json" for part in ("train-0", "train-1", "train-2", "val")
    ]
    probed = [SWEEP / "runs" / name / "probe" / "report.json" for name in ("x1-T8-w1", "x4-T4-w1")]
    plan = _plan(settings, [dataroot, *t8, *probed])
    jobs = _by_id(plan)
    assert [e.name for e in plan.kept] == ["x1-T8-w1", "x4-T4-w1"]
    assert [e.name for e in plan.planned] == ["x2-T8-w1", "x4-T8-w1", "x4-T8-w2"]
    assert not [i for i in jobs if i.startswith(("ingest", "synth", "scenes"))]  # T4 only served x4-T4-w1
    assert jobs["train-x2-T8-w1"].after == () and jobs["probe-x2-T8-w1"].after == ("train-x2-T8-w1",)
    # Idempotent: the same files give the same plan; everything done leaves only the report.
    assert _plan(settings, [dataroot, *t8, *probed]) == plan
    everything = [dataroot, *t8] + [
        SWEEP / "runs" / e.name / "probe" / "report.json" for e in experiments(settings)
    ]
    final = _plan(settings, everything)
    assert [job.id for job in final.jobs] == ["report"] and final.jobs[0].after == ()


def test_slurm_plan_submits_with_resources_and_never_synthesizes():
    settings = _settings("slurm", gpus_per_node=4, worlds="1 8", clip_lens="8")
    jobs = _by_id(_plan(settings))
    assert "synth" not in jobs and jobs["scenes"].how == "run"
    assert jobs["scenes"].argv[:4] == (PYTHON, "-m", "mvm.slurm.sweep_cli", "scenes")
    ingest = jobs["ingest-T8-val"]
    assert ingest.how == "ingest" and ingest.argv[1].endswith("slurm/ingest.sh")
    assert ingest.argv[2:5] == ("--logs", f"{SWEEP}/logs", "--")
    train = jobs["train-x4-T8-w8"]
    assert train.how == "gpu" and "--nodes=2" in train.argv and "--gpus-per-node=4" in train.argv
    assert "--resume" not in train.argv  # train_ddp.sbatch adds it
    script = next(i for i, arg in enumerate(train.argv) if arg.endswith("train_ddp.sbatch"))
    assert train.argv[script + 1 : script + 3] == ("--shards", ",".join(
        f"{SWEEP}/shards/T8/train-{k}" for k in range(3)))  # fmt: skip
    assert jobs["probe-x4-T8-w8"].how == "cpu" and jobs["report"].dependency == "afterany"
    assert train_resources(2, 0) == ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0"]
    assert train_resources(2, 4) == ["--nodes=1", "--gpus-per-node=2"]


def test_experiment_record_names_axes_and_shards():
    settings = _settings()
    record = experiment_record(settings, experiments(settings)[1])
    assert record["name"] == "x2-T8-w1" and record["data_scale"] == 2 and record["world_size"] == 1
    assert record["train_shards"] == f"{SWEEP}/shards/T8/train-0,{SWEEP}/shards/T8/train-1"
    assert record["probe_train_shards"].count(",") == 2 and record["val_shards"] == f"{SWEEP}/shards/T8/val"


def test_job_line_splits_back_into_the_same_arguments_in_bash():
    job = _by_id(_plan(_settings(train_args="--note 'a b' --x=*")))["train-x1-T8-w1"]
    line = job_line(job)
    # The exact read slurm/scaling.sh does.
    read = subprocess.run(["bash", "-c", "IFS=$'\\t' read -r -a job; printf '%s\\n' \"${job[@]}\""],
                          input=line + "\n", capture_output=True, text=True, check=True)  # fmt: skip
    assert read.stdout.splitlines() == [job.id, "run", "afterok:ingest-T8-train-0", *job.argv]
    for bad in ("a\tb", "a\nb", ""):
        with pytest.raises(ValueError, match="tab or newline"):
            job_line(dataclasses.replace(job, argv=("mvm-train", bad)))


@pytest.mark.slow
def test_plan_cli_writes_settings_and_experiments_and_prints_lines(tmp_path):
    env = {**os.environ, "MVM_SWEEP_STEPS": "7", "MVM_SWEEP_TRAIN_ARGS": "--note 'it''s'"}
    done = subprocess.run([PYTHON, "-m", "mvm.slurm.sweep_cli", "plan", "--local", tmp_path / "s"], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert [line[0] for line in lines][:2] == ["synth", "scenes"] and lines[-1][:2] == ["report", "run"]
    assert lines[-1][2] == "afterany:" + ",".join(
        f"probe-{name}" for name in ("x1-T8-w1", "x2-T8-w1", "x4-T8-w1", "x4-T4-w1", "x4-T8-w2")
    )
    assert "5 experiments to run, 0 kept" in done.stderr
    # sweep.env is valid shell that gives back every value.
    shown = subprocess.run(["bash", "-c", f"source {tmp_path}/s/sweep.env; echo \"$steps|$train_args|$mode\""],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert shown.stdout.strip() == "7|--note its|local"
    record = json.loads((tmp_path / "s" / "runs" / "x4-T8-w2" / "experiment.json").read_text())
    assert record["world_size"] == 2 and record["steps"] == 7
    bad = subprocess.run([PYTHON, "-m", "mvm.slurm.sweep_cli", "plan", "--local", tmp_path / "t"],
                         env={**env, "MVM_SWEEP_SCALES": "1 two"}, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "MVM_SWEEP_SCALES" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_scenes_cli_writes_chunks_of_the_training_split(tmp_path):
    names = ["scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-1077"]  # v1.0-mini's mini_train
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "scene.json").write_text(json.dumps([{"name": n} for n in names]))
    args = [PYTHON, "-m", "mvm.slurm.sweep_cli", "scenes", "--dataroot", tmp_path, "--version", "v1.0-mini",
            "--split", "mini_train", "--seed", "0", "--out", tmp_path / "scenes"]  # fmt: skip
    done = subprocess.run([*args, "--scales", "1,2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    chunks = [(tmp_path / "scenes" / f"train-{k}.txt").read_text().split() for k in (0, 1)]
    assert chunks == scene_chunks(names, [1, 2], 0) and sorted(chunks[0] + chunks[1]) == names
    too_many = subprocess.run([*args, "--scales", "1,2,4,8,16,32"], capture_output=True, text=True)
    assert too_many.returncode == 2 and "too few" in too_many.stderr and "Traceback" not in too_many.stderr
