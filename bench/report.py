"""Goals, the printed rich tables and bench/results.md from a results dict (pure formatting)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.loader import SHARD_PATHS
from mvm.report_format import fmt, markdown_table

TOLERANCE = 1.25
"""Allowed excess over linear time / flat memory before a scaling goal counts as missed (timing noise)."""


@dataclass(frozen=True)
class Goal:
    """One target from the bench issue and whether this run met it."""

    name: str
    """Short id."""
    target: str
    """The target in words."""
    measured: float
    """The measured value the target is about."""
    met: bool
    """measured satisfies the target."""


def _ok(results: dict, section: str) -> bool:
    """The section ran and did not fail."""
    return section in results and "error" not in results[section]


def _row(rows: list[dict], key: str, value) -> dict:
    return next(row for row in rows if row[key] == value)


def evaluate_goals(results: dict) -> list[Goal]:
    """The issues' goals, evaluated on whichever sections the results hold."""
    goals = []
    if _ok(results, "loader"):
        rows = results["loader"]["rows"]
        best = max(
            (row for row in rows if row["loader"] in SHARD_PATHS), key=lambda row: row["clips_per_cpu_s"]
        )
        goals.append(Goal("loader_vs_naive", f"best shard loader ({best['loader']}) >= 25x naive devkit JPEG "
                          "loader (clips per CPU-s)", best["vs_baseline"], best["vs_baseline"] >= 25))  # fmt: skip
        goals.append(Goal("loader_vs_resized", f"best shard loader ({best['loader']}) >= 1.2x pre-resized JPEG "
                          "folder (clips per CPU-s, no repeat-aug)", best["vs_resized"], best["vs_resized"] >= 1.2))  # fmt: skip
    if _ok(results, "ingest"):
        rows = results["ingest"]["rows"]
        # The steady state without start-up: CPU-timed when two runs allow it, else the log's wall time.
        stages = [row["stage"] for row in rows]
        stage = next(
            name for name in ("ingest_marginal", "ingest_in_process", "whole_ingest") if name in stages
        )
        ratio = _row(rows, "stage", stage)["vs_reduced_decode"]
        goals.append(Goal("ingest_vs_reduced_decode",
                          f"ingest ({stage}) >= 0.6x "
                          "reduced-size decode (frames/s)", ratio, ratio >= 0.6))  # fmt: skip
    if _ok(results, "storage"):
        psnr = results["storage"]["mean_psnr_db"]
        goals.append(Goal("psnr", "mean PSNR of decoded clips vs resized source >= 38 dB", psnr, psnr >= 38))
        rows = results["storage"]["rows"]
        smaller = (
            _row(rows, "format", "resized_jpeg")["bytes_per_clip"]
            / _row(rows, "format", "shards")["bytes_per_clip"]
        )
        goals.append(Goal("storage_vs_resized", "shards >= 1.5x smaller than the pre-resized JPEG folder",
                          smaller, smaller >= 1.5))  # fmt: skip
    if _ok(results, "scaling"):
        last = results["scaling"]["ingest"]["rows"][-1]
        growth = last["cpu_ratio"] / last["data_ratio"]
        goals.append(Goal("ingest_linear_time", f"ingest CPU time grows at most linearly (ratio/data <= {TOLERANCE})",
                          growth, growth <= TOLERANCE))  # fmt: skip
        goals.append(Goal("ingest_flat_memory", f"ingest peak RSS flat in scenes (ratio <= {TOLERANCE})",
                          last["mem_ratio"], last["mem_ratio"] <= TOLERANCE))  # fmt: skip
        trainer = results["scaling"]["trainer_memory"]["rows"][-1]
        goals.append(Goal("trainer_flat_memory", f"trainer peak memory flat in shards (ratio <= {TOLERANCE})",
                          trainer["mem_ratio"], trainer["mem_ratio"] <= TOLERANCE))  # fmt: skip
    return goals


def tables(results: dict) -> list[tuple[str, list[str], list[list]]]:
    """(title, header, rows of cells) for every section present, shared by rich and markdown output.

    Cells are numbers or strings; numbers are written by mvm.report_format.fmt.
    """
    out = []
    if _ok(results, "loader"):
        loader = results["loader"]
        h, w = loader["size"]
        out.append((
            f"Loader: clips/s per worker (T={loader['clip_len']}, {h}x{w}, {loader['clips']} clips; I420 -> RGB in "
            f"torch on this CPU: {fmt(loader['i420_to_rgb_cpu_ms_per_clip'], 2)} ms/clip)",
            ["loader", "clips/s (wall)", "clips/CPU-s", "frames/s (wall)", "x naive (c), CPU", "x resized (d), CPU"],
            [[r["label"], fmt(r["clips_per_s"], 1), fmt(r["clips_per_cpu_s"], 1), fmt(r["frames_per_s"], 0),
              fmt(r["vs_baseline"], 2), fmt(r["vs_resized"], 2)] for r in loader["rows"]],
        ))  # fmt: skip
    if _ok(results, "loader_scaling"):
        scaling = results["loader_scaling"]
        h, w = scaling["size"]
        out.append((
            f"Loader scaling on {scaling['device']}: the trainer's stream, {scaling['clips']} clips of T={scaling['clip_len']} "
            f"{h}x{w} in {scaling['shards']} shards, batch {scaling['batch_size']} ({scaling['epoch_batches']} per epoch), "
            f"{scaling['timed_batches']} timed batches across an epoch boundary; ms per batch in the training process; "
            f"data wait with a simulated {fmt(scaling['model_rows_per_s'], 0)} rows/s model step (sleep)",
            ["decoder", "workers", "rows/s", "x first", "wait", "collate", "copy", "convert", "CPU ms",
             "ceiling", "data wait"],
            [[r["decoder"], r["workers"], fmt(r["rows_per_s"], 0), fmt(r["vs_first"], 2),
              *[fmt(r["ms_per_batch"][stage], 2) for stage in ("wait", "collate", "copy", "convert")],
              fmt(r["main_cpu_ms_per_batch"], 1), r["ceiling"], f"{r['data_wait_frac']:.0%}"]
             for r in scaling["rows"]],
        ))  # fmt: skip
    if _ok(results, "codec"):
        codec = results["codec"]
        decoders = codec["decoders"]
        out.append((
            f"Codec settings ({codec['clips']} clips of {codec['clip_shape'][1]}x{codec['clip_shape'][2]}, "
            f"T={codec['clip_shape'][0]}; CPU ms per clip; default: {codec['default']})",
            ["setting", "encode ms", *[f"decode ms {name}" for name in decoders], "KiB/clip", "PSNR dB"],
            [[r["setting"], fmt(r["encode_ms"], 2), *[fmt(r[f"decode_ms_{name}"], 2) for name in decoders],
              fmt(r["kib_per_clip"], 1), fmt(r["psnr_db"], 2)] for r in codec["rows"]],
        ))  # fmt: skip
    if _ok(results, "ingest"):
        ingest = results["ingest"]
        out.append((
            f"Ingest: frames/s per core ({ingest['frames']} frames, source {ingest['source_size'][0]}x"
            f"{ingest['source_size'][1]})",
            ["stage", "frames/core-s", "frames/s (wall)", "x reduced decode"],
            [[r["label"], fmt(r["frames_per_core_s"], 1), fmt(r["frames_per_s"], 1), fmt(r["vs_reduced_decode"], 2)]
             for r in ingest["rows"]],
        ))  # fmt: skip
        if "profile" in ingest:
            out.append((
                "Ingest: CPU ms per frame of each step (in process, one thread)",
                ["step", "ms/frame", "share"],
                [[r["label"], fmt(r["ms_per_frame"], 3), f"{r['share']:.0%}"] for r in ingest["profile"]],
            ))  # fmt: skip
    if _ok(results, "storage"):
        storage = results["storage"]
        psnr = storage.get("mean_psnr_db")
        out.append((
            "Storage per clip" + (f" (decoded clips: mean PSNR {psnr:.1f} dB)" if psnr is not None else ""),
            ["format", "KiB/clip", "x source JPEGs"],
            [[r["label"], fmt(r["bytes_per_clip"] / 1024, 1), fmt(r["vs_source"], 3)] for r in storage["rows"]],
        ))  # fmt: skip
    if _ok(results, "training"):
        training = results["training"]
        rows = training["rows"] + training.get("gpu_rows", [])
        out.append((
            f"Training ({training['steps']} steps per run)" + (f"; GPU {training['gpu_note']}"
                                                               if "gpu_note" in training else ""),
            ["device", "model", "workers", "clips/s", "step s", "data wait", "peak MB"],
            [[r["device"], r["model"], r["workers"], fmt(r["clips_per_s"], 1), fmt(r["step_time_s"], 3),
              f"{r['data_wait_frac']:.0%}", fmt(r["peak_mem_mb"], 0)] for r in rows],
        ))  # fmt: skip
    if _ok(results, "scaling"):
        scaling = results["scaling"]
        out.append((
            "Cost scaling: ingest (--workers 1)",
            ["scenes", "frames", "CPU s", "x CPU", "x data", "peak RSS MB", "x mem"],
            [[r["scenes"], r["frames"], fmt(r["cpu_s"], 1), fmt(r["cpu_ratio"], 2), fmt(r["data_ratio"], 2),
              fmt(r["peak_rss_mb"], 0), fmt(r["mem_ratio"], 2)] for r in scaling["ingest"]["rows"]],
        ))  # fmt: skip
        out.append((
            "Cost scaling: trainer peak memory vs shards (tiny, 0 workers)",
            ["shards", "clips", "peak MB", "x shards", "x mem"],
            [[r["shards"], r["clips"], fmt(r["peak_mem_mb"], 0), fmt(r["shard_ratio"], 2),
              fmt(r["mem_ratio"], 2)] for r in scaling["trainer_memory"]["rows"]],
        ))  # fmt: skip
    failed = [name for name, value in results.items() if isinstance(value, dict) and "error" in value]
    if failed:
        out.append(
            ("Failed sections", ["section", "error"], [[name, results[name]["error"]] for name in failed])
        )
    if results.get("goals"):
        out.append((
            "Goals",
            ["goal", "target", "measured", "met"],
            [[g["name"], g["target"], fmt(g["measured"], 2), "yes" if g["met"] else "NO"] for g in results["goals"]],
        ))  # fmt: skip
    return out


def machine_line(machine: dict) -> str:
    """One line naming the machine and the versions that matter."""
    libs = machine["libraries"]
    return (
        f"{machine['cpu_model']}, {machine['usable_cores']} cores, {machine['memory_gb']} GiB, "
        f"GPU: {machine['accelerator'] or 'none'}; load average (1, 5, 15 min) when the run ended "
        f"{', '.join(f'{load:.1f}' for load in machine.get('load_average', []))}; torch {libs['torch']}, "
        f"av {libs['av']}, decord {libs['decord']}, torchcodec {libs.get('torchcodec')} "
        f"({machine.get('decoders', {}).get('torchcodec', 'not checked')}), "
        f"Pillow {libs['Pillow']} (libjpeg-turbo {machine['codecs']['libjpeg']}), "
        f"nuscenes-devkit {libs['nuscenes-devkit']}"
    )


def markdown(results: dict) -> str:
    """bench/results.md: every table, the machine and how the numbers were made."""
    lines = [
        f"<!-- generated by `python -m bench.run{' --quick' if results['mode'] == 'quick' else ''}`; "
        "do not edit -->",
        f"Mode `{results['mode']}`, sections {', '.join(results.get('sections', []))}, {results['elapsed_s']:.0f} s. "
        f"Machine: {machine_line(results['machine'])}.",
        "",
    ]
    for title, header, rows in tables(results):
        lines += [f"**{title}**", "", markdown_table(header, rows), ""]
    return "\n".join(lines)


def print_tables(results: dict) -> None:
    """The same tables on the terminal with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]Machine[/bold]: {machine_line(results['machine'])}")
    for title, header, rows in tables(results):
        table = Table(title=title, title_justify="left")
        for index, name in enumerate(header):
            table.add_column(name, justify="left" if index == 0 else "right")
        for row in rows:
            style = "red" if row[-1] == "NO" else None
            table.add_row(*(fmt(cell) for cell in row), style=style)
        console.print(table)
