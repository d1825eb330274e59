"""`python -m bench.run [--quick] [--out bench/results.json]`: the whole benchmark, side by side.

One run measures, on one synthetic nuScenes dataroot at the real CAM_FRONT resolution (1600x900):
loader clips/s per worker (our shards as I420 planes and as RGB from every installed decoder, and
with repeat-aug 2, vs the naive devkit JPEG Dataset vs a pre-resized JPEG folder), the trainer's
stream on a 2048-clip shard set (rows/s, data_wait and the training process's stages against the
number of workers: bench/loader_scaling.py), codec settings
(x264 presets, CRF and fast-decode flags: encode and decode ms per clip, size, PSNR), ingest
frames/s per core (full-size decode, DCT-scaled decode, the ingest's frame reader, whole
`mvm-ingest` and its steady state without start-up, and a per-step profile), bytes per clip and PSNR, `mvm-train --model tiny` throughput with 0/1/2 workers (plus small/base when CUDA is
available), and how ingest time/memory and trainer memory scale with the data. Results: `--out`
(JSON, with machine info and goals) and a markdown table next to it (`results.md`), printed as
rich tables.

Modes: `--quick` (4 scenes x 32 frames, 1-second timings, 6-step training runs; about 2.5 minutes on
2 quiet cores, plus ~25 s generating the dataroot on the first run) for CI-sized checks; the
default full mode (8 scenes x 240 frames = ~1900 frames, 5-second timings, 40-step training runs
at batch 16: roughly 12-15 minutes on 2 quiet cores, plus ~6 minutes generating the dataroot on
the first run) for the numbers the README quotes. Generated dataroots are cached under
bench/work/ keyed by their arguments; everything timed runs fresh.

Exit codes: 0 every section ran (goals may still be missed: see the Goals table), 1 a section
failed (its error is in the JSON; the other sections still ran), 2 usage error.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from bench import (
    codec,
    cost_scaling,
    ingest_speed,
    loader,
    loader_scaling,
    machine,
    report,
    storage,
    training,
)
from bench.loader_scaling import ScalingConfig
from bench.workspace import WORK_DIR, DatarootSpec, ShardSetSpec, cached_dataroot, scene_names
from mvm.atomic import ensure_dir, write_atomic
from mvm.ingest.config import IngestConfig
from mvm.report_format import dumps_json

TRAIN_SIZE = IngestConfig.size
"""(H, W) of the clips: the ingest's default --size, which the trainer takes from the shards."""


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and durations of one bench run."""

    dataroot: DatarootSpec = field(default_factory=DatarootSpec)
    """The synthetic dataroot every measurement reads (1600 wide = real nuScenes)."""
    size: tuple[int, int] = TRAIN_SIZE
    """Training size (H, W) of the shards and of the loaders' output."""
    shard_clips: int = 16
    """--shard-clips of the ingest runs (small enough that the scaling runs differ in shard count)."""
    scale_factors: tuple[int, ...] = (1, 2, 4)
    """Ingest runs on scenes/4 x these factors; the largest is the whole dataroot and feeds the rest."""
    min_seconds: float = 5.0
    """Minimum timed seconds per loader or decode measurement (per round)."""
    rounds: int = 3
    """Round-robin repetitions of the loader timings (median kept)."""
    train_steps: int = 40
    """Steps per mvm-train run."""
    train_batch: int = 16
    """--batch-size of the training runs (tiny's default)."""
    train_log_every: int = 5
    """Steps between metrics lines in the training runs."""
    train_warmup_logs: int = 2
    """Logged lines dropped as warm-up (first batches, worker start-up)."""
    train_workers: tuple[int, ...] = (0, 1, 2)
    """DataLoader worker counts of the CPU training runs."""
    psnr_clips: int = 64
    """Clips compared for the mean PSNR."""
    codec_grid: tuple[codec.CodecSetting, ...] = codec.FULL_GRID
    """x264 settings of the codec table."""
    codec_clips: int = 32
    """Clips encoded and decoded per codec setting (spread over the shards)."""
    codec_seconds: float = 0.5
    """Minimum timed seconds per codec encode or decode measurement."""
    loader_scaling: ScalingConfig = field(
        default_factory=lambda: ScalingConfig(ceiling_batches=160, stepped_batches=48)
    )
    """The trainer's stream on a shard set at training scale: rows/s and data_wait against workers."""


QUICK = BenchConfig(
    dataroot=DatarootSpec(scenes=4, frames_per_scene=32),
    shard_clips=2,
    min_seconds=1.0,
    rounds=2,
    train_steps=6,
    train_batch=2,
    train_log_every=1,
    train_warmup_logs=1,
    psnr_clips=8,
    codec_grid=codec.QUICK_GRID,
    codec_clips=8,
    codec_seconds=0.2,
    # One decoder (the GPU hand-over) and one epoch boundary: about 15 s, plus ~20 s writing the
    # 2048-clip shard set on the first run.
    loader_scaling=ScalingConfig(
        shard_set=ShardSetSpec(), decoders=("pyav-i420",), ceiling_batches=64, stepped_batches=24
    ),
)
FULL = BenchConfig(dataroot=DatarootSpec(scenes=8, frames_per_scene=240))


def ingest_resize(size: tuple[int, int]) -> Callable[[Path], np.ndarray]:
    """The ingest's own JPEG -> uint8 (H, W, 3) frame reader at `size` (DCT-scaled decode + resize)."""
    from mvm.ingest.frames import load_frame

    return lambda path: load_frame(path, size)


class Sections:
    """Runs the independent measurement sections under one progress bar, keeping each result or error."""

    def __init__(self, progress, task, only: frozenset[str] | None = None):
        self.progress, self.task, self.only = progress, task, only
        self.results: dict[str, dict] = {}
        self.failed: list[str] = []
        self.seconds: dict[str, float] = {}

    def step(self, description: str, action: Callable[[], object]):
        """A prerequisite step: its failure stops the bench (nothing after it can run)."""
        self.progress.update(self.task, description=description)
        started = time.perf_counter()
        value = action()
        self.seconds[description] = time.perf_counter() - started
        self.progress.advance(self.task)
        return value

    def measure(self, name: str, description: str, action: Callable[[], dict]) -> None:
        """A measurement: its result, or its error, goes to results[name]; the others still run.

        Sections not in `only` (when given) are skipped and absent from the results."""
        if self.only is not None and name not in self.only:
            self.progress.advance(self.task)
            return
        self.progress.update(self.task, description=description)
        started = time.perf_counter()
        try:
            self.results[name] = action()
        except Exception as error:  # one broken measurement must not hide the others' numbers
            self.failed.append(name)
            self.results[name] = {
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
            }
            self.progress.console.print(f"[red]{name} failed:[/red] {type(error).__name__}: {error}")
        self.seconds[description] = time.perf_counter() - started
        self.progress.advance(self.task)


SECTIONS = ("loader", "loader_scaling", "codec", "ingest", "storage", "training", "scaling")
"""Measurement sections in run order (the dataroot, ingest runs and JPEG folder always run first)."""


def run_bench(
    config: BenchConfig, mode: str, work: Path = WORK_DIR, only: frozenset[str] | None = None
) -> tuple[dict, list[str]]:
    """Every measurement (or those in `only`); returns (results, names of failed sections)."""
    from nuscenes.nuscenes import NuScenes
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    ensure_dir(work)
    spec = config.dataroot
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()) as progress:
        sections = Sections(
            progress, progress.add_task("bench", total=2 + len(config.scale_factors) + len(SECTIONS)), only
        )
        render = progress.add_task("  rendering CAM_FRONT frames", total=spec.scenes * spec.frames_per_scene)
        dataroot = sections.step(
            f"synthetic dataroot {spec.key}",
            lambda: cached_dataroot(spec, work, lambda count: progress.advance(render, count)),
        )
        progress.remove_task(render)
        names = scene_names(dataroot, spec.version)
        base_scenes = max(1, len(names) // max(config.scale_factors))
        ingests = []
        for count in sorted({min(len(names), base_scenes * factor) for factor in config.scale_factors}):
            ingests.append(sections.step(
                f"mvm-ingest --workers 1 on {count} scenes",
                lambda count=count: ingest_speed.run_ingest(
                    dataroot, spec.version, names[:count], work / f"shards-{count}scenes", config.size,
                    config.shard_clips, work / f"ingest-{count}scenes.log",
                ),
            ))  # fmt: skip
        shard_dir = ingests[-1].out
        nusc = NuScenes(version=spec.version, dataroot=str(dataroot), verbose=False)
        source_path = lambda token: Path(nusc.get_sample_data_path(token))  # noqa: E731
        resize = ingest_resize(config.size)
        clips = loader.clip_refs(shard_dir)
        resized_dir = (
            work / f"resized-{spec.key}-{config.size[0]}x{config.size[1]}-q{loader.RESIZED_JPEG_QUALITY}"
        )
        sections.step("pre-resized JPEG folder",
                      lambda: loader.write_resized_folder(resized_dir, clips, source_path, resize))  # fmt: skip
        setup = loader.LoaderSetup(shard_dir, dataroot, spec.version, resized_dir, config.size)
        sections.measure("loader", "loader clips/s per worker",
                         lambda: loader.bench_loaders(setup, config.min_seconds, config.rounds))  # fmt: skip
        sections.measure("loader_scaling", "loader rows/s and data_wait against workers",
                         lambda: loader_scaling.bench_loader_scaling(config.loader_scaling, work))  # fmt: skip
        sections.measure("codec", "codec settings: encode/decode ms, size, PSNR",
                         lambda: codec.bench_codecs(clips, source_path, resize, config.codec_grid,
                                                    config.codec_clips, config.codec_seconds))  # fmt: skip
        sections.measure("ingest", "JPEG decode frames/s per core",
                         lambda: ingest_speed.bench_ingest_speed(dataroot, spec.version, config.size, ingests[-1],
                                                                  resize, config.min_seconds,
                                                                  smaller=ingests[0] if len(ingests) > 1 else None))  # fmt: skip
        sections.measure("storage", "bytes per clip, PSNR",
                         lambda: storage.bench_storage(shard_dir, clips, source_path, resized_dir, resize,
                                                       config.psnr_clips))  # fmt: skip
        train_args = {"steps": config.train_steps, "warmup": config.train_warmup_logs,
                      "batch_size": config.train_batch, "log_every": config.train_log_every}  # fmt: skip
        cpu_runs: dict = {}

        def measure_training() -> dict:
            result, runs = training.bench_training(
                shard_dir, work, workers=config.train_workers, **train_args
            )
            cpu_runs.update(runs)
            return result

        def measure_scaling() -> dict:
            done = {shard_dir: cpu_runs[0]} if 0 in cpu_runs else {}
            return {
                "ingest": cost_scaling.ingest_scaling(ingests),
                "trainer_memory": cost_scaling.trainer_memory_vs_shards(
                    ingests, work, done=done, **train_args
                ),
            }

        sections.measure("training", "mvm-train --model tiny, 0/1/2 workers", measure_training)
        sections.measure("scaling", "cost scaling: trainer memory vs shards", measure_scaling)
    measured = {name: value for name, value in sections.results.items() if "error" not in value}
    results = {
        "mode": mode,
        "sections": sorted(only) if only is not None else list(SECTIONS),
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
        "machine": machine.machine_info(),
        **sections.results,
        "goals": [dataclasses.asdict(goal) for goal in report.evaluate_goals(measured)],
        "failed_sections": sections.failed,
        "section_seconds": sections.seconds,
        "elapsed_s": time.perf_counter() - started,
    }
    return results, sections.failed


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--quick", is_flag=True, help="CI-sized run (under 3 minutes on 2 cores) instead of the full one."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench/results.json"),
    show_default=True,
    help="Results JSON; the markdown tables go next to it with the suffix .md.",
)
@click.option(
    "--only",
    type=click.Choice(SECTIONS),
    multiple=True,
    help="Run only these measurement sections (repeatable); default: all.",
)
def main(quick: bool, out: Path, only: tuple[str, ...]) -> None:
    """Benchmark the pipeline against the loaders and formats a user would pick otherwise.

    Exit codes: 0 all sections ran (missed goals are shown, not fatal), 1 a section failed,
    2 usage error.
    """
    config = QUICK if quick else FULL
    results, failed = run_bench(config, "quick" if quick else "full", only=frozenset(only) if only else None)
    write_atomic(out, dumps_json(results))
    write_atomic(out.with_suffix(".md"), report.markdown(results))
    report.print_tables(results)
    click.echo(f"results: {out} and {out.with_suffix('.md')}")
    if failed:
        raise click.ClickException(f"sections failed: {', '.join(failed)} (errors in {out})")


if __name__ == "__main__":
    main()
