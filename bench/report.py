"""Goals, the printed rich tables and bench/results.md from a results dict (pure formatting)."""

from __future__ import annotations

from dataclasses import dataclass

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
    """The issue's goals, evaluated on whichever sections the results hold."""
    goals = []
    if _ok(results, "loader"):
        rows = results["loader"]["rows"]
        best = max(_row(rows, "loader", "shards_decord"), _row(rows, "loader", "shards_pyav"),
                   key=lambda row: row["clips_per_s"])  # fmt: skip
        resized = _row(rows, "loader", "resized_jpeg")
        goals.append(Goal("loader_vs_naive", "best shard loader >= 10x naive devkit JPEG loader (clips/s)",
                          best["vs_baseline"], best["vs_baseline"] >= 10))  # fmt: skip
        ratio = best["clips_per_s"] / resized["clips_per_s"]
        goals.append(Goal("loader_vs_resized", "best shard loader >= pre-resized JPEG folder (ratio)", ratio,
                          ratio >= 1))  # fmt: skip
    if _ok(results, "ingest"):
        rows = results["ingest"]["rows"]
        stage = (
            "ingest_in_process"
            if any(row["stage"] == "ingest_in_process" for row in rows)
            else "whole_ingest"
        )
        ratio = _row(rows, "stage", stage)["vs_reduced_decode"]
        goals.append(Goal("ingest_vs_reduced_decode",
                          f"ingest ({'without start-up' if stage == 'ingest_in_process' else 'whole'}) >= 0.5x "
                          "reduced-size decode (frames/s)", ratio, ratio >= 0.5))  # fmt: skip
    if _ok(results, "storage"):
        psnr = results["storage"]["mean_psnr_db"]
        goals.append(Goal("psnr", "mean PSNR of decoded clips vs resized source >= 35 dB", psnr, psnr >= 35))
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


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows of cells) for every section present, shared by rich and markdown output."""
    out = []
    if _ok(results, "loader"):
        loader = results["loader"]
        h, w = loader["size"]
        out.append((
            f"Loader: clips/s per worker (T={loader['clip_len']}, {h}x{w}, {loader['clips']} clips)",
            ["loader", "clips/s", "clips/CPU-s", "frames/s", "x naive (c)"],
            [[r["label"], _fmt(r["clips_per_s"]), _fmt(r["clips_per_cpu_s"]), _fmt(r["frames_per_s"]),
              _fmt(r["vs_baseline"])] for r in loader["rows"]],
        ))  # fmt: skip
    if _ok(results, "ingest"):
        ingest = results["ingest"]
        out.append((
            f"Ingest: frames/s per core ({ingest['frames']} frames, source {ingest['source_size'][0]}x"
            f"{ingest['source_size'][1]})",
            ["stage", "frames/core-s", "frames/s (wall)", "x reduced decode"],
            [[r["label"], _fmt(r["frames_per_core_s"]), _fmt(r["frames_per_s"]), _fmt(r["vs_reduced_decode"])]
             for r in ingest["rows"]],
        ))  # fmt: skip
    if _ok(results, "storage"):
        storage = results["storage"]
        psnr = storage.get("mean_psnr_db")
        out.append((
            "Storage per clip" + (f" (decoded clips: mean PSNR {psnr:.1f} dB)" if psnr is not None else ""),
            ["format", "KiB/clip", "x source JPEGs"],
            [[r["label"], _fmt(r["bytes_per_clip"] / 1024), _fmt(r["vs_source"])] for r in storage["rows"]],
        ))  # fmt: skip
    if _ok(results, "training"):
        training = results["training"]
        rows = training["rows"] + training.get("gpu_rows", [])
        out.append((
            f"Training ({training['steps']} steps per run)" + (f"; GPU {training['gpu_note']}"
                                                               if "gpu_note" in training else ""),
            ["device", "model", "workers", "clips/s", "step s", "data wait", "peak MB"],
            [[r["device"], r["model"], str(r["workers"]), _fmt(r["clips_per_s"]), _fmt(r["step_time_s"]),
              f"{r['data_wait_frac']:.0%}", _fmt(r["peak_mem_mb"])] for r in rows],
        ))  # fmt: skip
    if _ok(results, "scaling"):
        scaling = results["scaling"]
        out.append((
            "Cost scaling: ingest (--workers 1)",
            ["scenes", "frames", "CPU s", "x CPU", "x data", "peak RSS MB", "x mem"],
            [[str(r["scenes"]), str(r["frames"]), _fmt(r["cpu_s"]), _fmt(r["cpu_ratio"]), _fmt(r["data_ratio"]),
              _fmt(r["peak_rss_mb"]), _fmt(r["mem_ratio"])] for r in scaling["ingest"]["rows"]],
        ))  # fmt: skip
        out.append((
            "Cost scaling: trainer peak memory vs shards (tiny, 0 workers)",
            ["shards", "clips", "peak MB", "x shards", "x mem"],
            [[str(r["shards"]), str(r["clips"]), _fmt(r["peak_mem_mb"]), _fmt(r["shard_ratio"]),
              _fmt(r["mem_ratio"])] for r in scaling["trainer_memory"]["rows"]],
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
            [[g["name"], g["target"], _fmt(g["measured"]), "yes" if g["met"] else "NO"] for g in results["goals"]],
        ))  # fmt: skip
    return out


def machine_line(machine: dict) -> str:
    """One line naming the machine and the versions that matter."""
    libs = machine["libraries"]
    return (
        f"{machine['cpu_model']}, {machine['usable_cores']} cores, {machine['memory_gb']} GiB, "
        f"GPU: {machine['accelerator'] or 'none'}; torch {libs['torch']}, av {libs['av']}, decord {libs['decord']}, "
        f"Pillow {libs['Pillow']} (libjpeg-turbo {machine['codecs']['libjpeg']}), "
        f"nuscenes-devkit {libs['nuscenes-devkit']}"
    )


def markdown(results: dict) -> str:
    """bench/results.md: every table, the machine and how the numbers were made."""
    lines = [
        f"<!-- generated by `python -m bench.run{' --quick' if results['mode'] == 'quick' else ''}`; "
        "do not edit -->",
        f"Mode `{results['mode']}`, {results['elapsed_s']:.0f} s. Machine: {machine_line(results['machine'])}.",
        "",
    ]
    for title, header, rows in tables(results):
        lines += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
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
            table.add_row(*row, style=style)
        console.print(table)
