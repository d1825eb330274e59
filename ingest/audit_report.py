"""The audit report: audit.json, audit.md and PNG plots in a report folder."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mvm.atomic import PARTIAL_SUFFIX, ensure_dir, save_figure, write_atomic  # noqa: E402
from mvm.ego_motion import EGO_MOTION_CLASSES  # noqa: E402
from mvm.ingest.audit import Check, Stats  # noqa: E402
from mvm.ingest.audit_depth import HISTOGRAM_EDGES_M  # noqa: E402
from mvm.report_format import dumps_json, fmt, markdown_table  # noqa: E402

REPORT_TEMPORARY = re.compile(r"\.(audit\.json|audit\.md|[a-z_]+\.png)(\..*)?" + re.escape(PARTIAL_SUFFIX))
"""Temporaries of the report's own files (mvm.atomic.atomic_path names them `.<file>.<random>.partial`)."""


def remove_stale_temporaries(report_dir: Path) -> list[Path]:
    """Remove the report temporaries a killed mvm-audit left in `report_dir` (the caller holds its
    lock); returns them. Other files, and other tools' temporaries, are left alone."""
    stale = [path for path in sorted(report_dir.iterdir()) if REPORT_TEMPORARY.fullmatch(path.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _bar(path: Path, counts: dict, title: str, xlabel: str, ylabel: str = "clips") -> None:
    figure, axes = plt.subplots(figsize=(max(4.0, 0.35 * len(counts) + 2), 3.2))
    axes.bar([str(name) for name in counts], list(counts.values()), color="tab:blue")
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.tick_params(axis="x", rotation=60 if len(counts) > 6 else 0)
    figure.tight_layout()
    save_figure(figure, path)


def write_plots(report_dir: Path, stats: Stats, manifest: dict | None) -> list[str]:
    """PNG plots; returns their file names."""
    names = []
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].hist(stats.intervals_ms, bins=40, color="tab:blue")
    axes[0].set(title="intervals between clip frames", xlabel="ms", ylabel="count")
    axes[1].hist(stats.speeds_mps, bins=30, color="tab:green")
    axes[1].set(title="mean clip speed", xlabel="m/s", ylabel="clips")
    figure.tight_layout()
    save_figure(figure, report_dir / "intervals_speed.png")
    names.append("intervals_speed.png")
    _bar(
        report_dir / "clips_per_scene.png",
        dict(sorted(stats.clips_per_scene.items())),
        "clips per scene",
        "scene",
    )
    names.append("clips_per_scene.png")
    reasons = Counter(reject["reason"] for reject in (manifest or {}).get("rejects", []))
    _bar(
        report_dir / "rejects.png",
        dict(sorted(reasons.items())) or {"none": 0},
        "rejects by reason",
        "reason",
        "rejects",
    )
    names.append("rejects.png")
    labels = {name: stats.labels.get(name, 0) for name in EGO_MOTION_CLASSES}
    _bar(report_dir / "ego_motion.png", labels, "ego-motion labels (mvm.ego_motion)", "class")
    names.append("ego_motion.png")
    figure, axes = plt.subplots(figsize=(6, 3.2))
    edges = HISTOGRAM_EDGES_M
    axes.bar(edges[:-1], stats.depth.counts, width=edges[1] - edges[0], align="edge", color="tab:purple")
    axes.set(
        title=f"lidar depth per patch ({stats.depth.clips_with} clips with depth)",
        xlabel=f"median depth, m (last bin: >= {edges[-2]:g})",
        ylabel="patches",
    )
    figure.tight_layout()
    save_figure(figure, report_dir / "depth.png")
    names.append("depth.png")
    return names


def summary_stats(stats: Stats, manifest: dict | None) -> dict:
    rejects = Counter(reject["reason"] for reject in (manifest or {}).get("rejects", []))
    return {
        "clips_read": stats.clips_read,
        "scenes": len(stats.clips_per_scene),
        "rejects_by_reason": dict(sorted(rejects.items())),
        "ego_motion_labels": {name: stats.labels.get(name, 0) for name in EGO_MOTION_CLASSES},
        "interval_ms": {
            "min": min(stats.intervals_ms, default=None),
            "max": max(stats.intervals_ms, default=None),
            "histogram": dict(sorted(Counter(round(value) for value in stats.intervals_ms).items())),
        },
        "psnr_db_mean": sum(stats.psnr_db) / len(stats.psnr_db) if stats.psnr_db else None,
        "psnr_clips": len(stats.psnr_db),
        "depth": stats.depth.to_json(manifest),
    }


def depth_line(depth: dict) -> str:
    """The report's line on lidar depth targets: coverage and why clips have none."""
    clips = depth["clips_with_depth"] + depth["clips_without_depth"]
    return (
        f"- lidar depth targets: {depth['clips_with_depth']} of {clips} clips "
        f"(share {fmt(depth['share_clips_with_depth'], 3)}); patches with a value in those clips: "
        f"{fmt(depth['patch_coverage'], 3)}; clips without, by reason: {depth['missing_by_reason'] or 'none'}"
    )


def write_report(
    report_dir: Path, shard_dir: Path, checks: list[Check], stats: Stats, manifest: dict | None
) -> dict:
    """Write audit.json, audit.md and plots; returns the JSON report."""
    ensure_dir(report_dir)
    plots = write_plots(report_dir, stats, manifest)
    report = {
        "shard_dir": str(shard_dir),
        "ok": all(check.ok for check in checks),
        "checks": [check.to_json() for check in checks],
        "stats": summary_stats(stats, manifest),
        "config": (manifest or {}).get("config"),
        "total_clips": (manifest or {}).get("total_clips"),
        "plots": plots,
    }
    write_atomic(report_dir / "audit.json", dumps_json(report))
    lines = [
        f"# Shard audit: `{shard_dir}`",
        "",
        f"**{'PASS' if report['ok'] else 'FAIL'}**: {sum(c.ok for c in checks)}/{len(checks)} checks hold; "
        f"{stats.clips_read} clips read of {report['total_clips']} listed.",
        "",
    ]
    rows = []
    for check in checks:
        details = "; ".join(check.failures[:5]) + (
            f" (+{len(check.failures) - 5} more)" if len(check.failures) > 5 else ""
        )
        rows.append(
            [f"`{check.name}`", "ok" if check.ok else "FAIL", check.description, details or check.note]
        )
    lines.append(markdown_table(["check", "result", "what", "details"], rows))
    stats_json = report["stats"]
    lines += [
        "",
        "## Statistics",
        "",
        f"- rejects by reason: {stats_json['rejects_by_reason'] or 'none'}",
        f"- ego-motion labels: {stats_json['ego_motion_labels']}",
        f"- intervals between clip frames: {fmt(stats_json['interval_ms']['min'], 1)}–{fmt(stats_json['interval_ms']['max'], 1)} ms",
        f"- mean PSNR: {fmt(stats_json['psnr_db_mean'], 2)} dB over {stats_json['psnr_clips']} clips",
        depth_line(stats_json["depth"]),
        "",
        *[f"![{name}]({name})" for name in plots],
        "",
    ]
    write_atomic(report_dir / "audit.md", "\n".join(lines))
    return report
