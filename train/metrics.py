"""RUN/metrics.jsonl (one JSON object per logged step or event), RUN/loss.png and the end-of-run table.

Step lines: {"step", "loss", "lr", "grad_norm", "emb_std", "emb_norm", "copy_loss", "clips_per_s",
"data_wait_frac", "step_time_s", "peak_mem_mb", "rankme", "time_spread", ["comm_frac"], ["probe_*"]};
values are means over the steps since the previous line (clips_per_s over all ranks; loss and the
norms over its finite steps; comm_frac: all-reduce time in flight over the window's wall time, see
train/engine.py), except copy_loss, rankme and time_spread, which come from the logged step's batch
(train/diagnostics.py). Held-out lines {"step", "rankme_heldout", "rankme_heldout_ratio",
"emb_std_heldout", "heldout_clips", "heldout_source"} come at step 0, with every picture and at the
end (train/heldout.py: token-level RankMe on fixed clips against its value at step 0). Event lines carry "event"
(`nonfinite`, `collapse`, `starvation`, `bad_sample`, `resume`, `stopped`) and "step".

Both logs are appended line by line, so a crash mid-write can leave a torn last line: readers
skip a line that is not a JSON object with a warning naming the file and line (`read_jsonl`),
and a resume rewrites the log without it (`truncate_after`).

metrics.jsonl is the source of truth. When the optional `tensorboard` package is installed
(`pip install -e ".[tensorboard]"`), the same step lines also go to RUN/tensorboard/ under the
same names (`tensorboard --logdir RUN/tensorboard`), together with the viz pictures.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mvm.atomic import OutputError, ensure_dir, open_append, save_figure, write_atomic
from mvm.report_format import parse_jsonl


def peak_mem_mb(device: torch.device) -> float:
    """Peak memory: max allocated on a CUDA device, else the process's peak RSS (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def read_jsonl(path: Path, warn: Callable[[str], None] = _warn) -> list[dict]:
    """All records of a JSONL file (empty when it does not exist); a torn line is skipped and named
    through `warn` (mvm.report_format.parse_jsonl)."""
    path = Path(path)
    if not path.is_file():
        return []
    return parse_jsonl(path.read_text(errors="replace"), str(path), warn)


def truncate_after(path: Path, step: int, warn: Callable[[str], None] = _warn) -> None:
    """Keep only the lines with "step" <= step: a resumed run rewrites what followed its checkpoint
    (and drops a torn line, named through `warn`, so the next line appended starts clean)."""
    path = Path(path)
    if path.is_file():
        kept = [line for line in read_jsonl(path, warn) if _step_of(line) <= step]
        write_atomic(path, "".join(json.dumps(line) + "\n" for line in kept))


def _step_of(record: dict) -> int | float:
    """A record's step (0 when it has none); one that is not an int sorts after every step (dropped)."""
    step = record.get("step", 0)
    return step if isinstance(step, int) and not isinstance(step, bool) else float("inf")


def tensorboard_writer(run: Path):
    """A SummaryWriter on RUN/tensorboard when the optional tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(ensure_dir(Path(run) / "tensorboard")))


class MetricsLog:
    """Appends JSON lines to a JSONL file, flushed per line (a killed run keeps what it logged).

    With a TensorBoard `mirror`, step lines (those without "event") are also written as scalars
    of the same names, and `image` adds a picture.
    """

    def __init__(self, path: Path, mirror=None):
        self.path = Path(path)
        self.file = open_append(self.path)  # never through a symlink planted at the log's name
        self.mirror = mirror

    def write(self, record: dict) -> None:
        """Append one line; floats are rounded to 6 significant digits."""
        clean = {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in record.items()}
        try:
            self.file.write(json.dumps(clean) + "\n")
            self.file.flush()
        except OSError as error:  # a full disk: one line for the user, not a traceback
            raise OutputError(f"cannot append to {self.path}: {error.strerror or error}") from None
        if self.mirror is not None and "event" not in clean and "step" in clean:
            for name, value in clean.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.mirror.add_scalar(name, value, clean["step"])

    def image(self, tag: str, png: Path, step: int) -> None:
        """Mirror a picture (already written to `png`) to TensorBoard; nothing without a mirror."""
        if self.mirror is not None:
            from PIL import Image

            self.mirror.add_image(tag, np.asarray(Image.open(png).convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.file.close()
        if self.mirror is not None:
            self.mirror.close()


def plot_curves(records: list[dict], out: Path) -> bool:
    """RUN/loss.png: loss (with copy_loss and collapse warnings marked) and grad-norm against step.

    False (and no picture) where matplotlib is not installed, as on a bare GPU image.
    """
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if "loss" in r and "event" not in r]
    fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="loss")
    copied = [r for r in steps if "copy_loss" in r]
    if copied:  # what copying the nearest visible patch in time would score (train/diagnostics.py)
        ax_loss.plot([r["step"] for r in copied], [r["copy_loss"] for r in copied], "--", color="grey",
                     label="copy_loss (copy nearest visible)")  # fmt: skip
    collapses = [r["step"] for r in records if r.get("event") == "collapse"]
    if collapses and steps:
        at = {r["step"]: r["loss"] for r in steps}
        ax_loss.scatter(collapses, [at.get(s, steps[-1]["loss"]) for s in collapses], marker="x", color="red",
                        zorder=3, label="collapse warning")  # fmt: skip
    ax_loss.legend(fontsize=8)
    ax_loss.set(xlabel="step", ylabel="masked-patch MSE", title="loss")
    ax_grad.plot([r["step"] for r in steps], [r["grad_norm"] for r in steps], color="tab:orange")
    ax_grad.set(xlabel="step", ylabel="grad norm (before clipping)", title="gradient norm", yscale="log")
    for ax in (ax_loss, ax_grad):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out)
    return True


def summary_rows(records: list[dict]) -> list[tuple[str, str]]:
    """(name, value) rows for the end-of-run table from the metrics records."""
    steps = [r for r in records if "loss" in r and "event" not in r]
    events = [r["event"] for r in records if "event" in r]
    if not steps:
        return [("steps logged", "0")]
    first, last = steps[0], steps[-1]
    tail = steps[len(steps) // 2 :]

    def mean(name: str) -> float:
        return sum(r[name] for r in tail) / len(tail)

    rows = [
        ("steps", f"{last['step']}"),
        ("loss first -> last", f"{first['loss']:.4f} -> {last['loss']:.4f}"),
        ("clips/s (second half)", f"{mean('clips_per_s'):.1f}"),
        ("data_wait_frac (second half)", f"{mean('data_wait_frac'):.3f}"),
        ("step_time_s (second half)", f"{mean('step_time_s'):.3f}"),
        ("emb_std last", f"{last['emb_std']:.4f}"),
        ("peak_mem_mb", f"{max(r['peak_mem_mb'] for r in steps):.0f}"),
    ]
    heldout = [r for r in records if "rankme_heldout" in r and "event" not in r]
    if heldout:
        rows.append(("rankme_heldout first -> last",
                     f"{heldout[0]['rankme_heldout']:.2f} -> {heldout[-1]['rankme_heldout']:.2f} "
                     f"(ratio {heldout[-1]['rankme_heldout_ratio']:.2f})"))  # fmt: skip
        rows.append(("emb_std_heldout first -> last",
                     f"{heldout[0]['emb_std_heldout']:.4f} -> {heldout[-1]['emb_std_heldout']:.4f}"))  # fmt: skip
    if "comm_frac" in last:
        rows.append(("comm_frac (second half)", f"{mean('comm_frac'):.3f}"))
    for name in sorted(set(events)):
        rows.append((f"events: {name}", str(events.count(name))))
    return rows
