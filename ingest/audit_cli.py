"""mvm-audit: verify a shard folder and write the shard audit report."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click
from rich.console import Console

from mvm.atomic import OutputError, exclusive_lock
from mvm.ingest.audit import audit_shards
from mvm.ingest.audit_report import remove_stale_temporaries, write_report

console = Console(stderr=True, soft_wrap=True)


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", param_hint=name)
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--against",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Another shard folder that must share no scene with SHARD_DIR (e.g. val vs train).",
)
@click.option(
    "--out",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Report folder  [default: SHARD_DIR/audit]",
)
@click.option(
    "--psnr-clips",
    default=8,
    type=click.IntRange(min=0),
    help="Clips (evenly spaced) compared with their source frames when the dataroot in the manifest is reachable; 0 skips.",
)
@click.option(
    "--min-psnr",
    default=35.0,
    type=float,
    callback=lambda _ctx, _param, value: _finite(value, "--min-psnr"),
    help="Mean PSNR (dB) the compared clips must reach (a finite number).",
)
def main(
    shard_dir: Path, against: Path | None, report_dir: Path | None, psnr_clips: int, min_psnr: float
) -> None:
    """Verify SHARD_DIR against its manifest and the shard contract (shards/README.md).

    Checks: manifest present; every shard present with matching sha256; every sample decodes to
    exactly T frames of the declared size; timestamps strictly increasing and every interval
    within the max gap; keys unique; clip counts per shard, scene and in total; no scene shared
    with --against; depth targets well-formed (shape, float32, values NaN or > 0; clips without
    one are counted, not failed); mean PSNR against the source frames. Writes audit.json, audit.md
    and PNG plots (depth coverage and histogram included).

    A manifest is data: shard names must be shard-NNNNNN.tar inside SHARD_DIR, and unlisted
    shard-* / *.tar files or leftover temporaries in the folder (or its staging/, parts/, audit/)
    fail the audit, as does a manifest of 0 clips. The report folder and its files are never
    written through a symlink; one mvm-audit writes a report folder at a time (a second one
    exits 1), and it first removes the report temporaries a killed audit left there.

    Exit codes: 0 every check holds, 1 a check failed (each failure is named) or the report
    cannot be written, 2 usage error.
    """
    try:  # one mvm-audit per report folder; it removes what a killed one left there first
        with exclusive_lock(report_dir or shard_dir / "audit", "mvm-audit") as lock:
            remove_stale_temporaries(lock.parent)
            checks, stats, manifest = audit_shards(shard_dir, against, psnr_clips, min_psnr)
            report = write_report(lock.parent, shard_dir, checks, stats, manifest)
    except OutputError as error:
        console.print(f"[red]error:[/] {error}")
        sys.exit(1)
    for check in checks:
        mark = "[green]ok[/]  " if check.ok else "[red]FAIL[/]"
        console.print(f"{mark} {check.name}: {check.note if check.ok else '; '.join(check.failures[:3])}")
    console.print(f"report: {report_dir or shard_dir / 'audit'}/audit.md")
    sys.exit(0 if report["ok"] else 1)
