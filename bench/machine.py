"""What the numbers were measured on: CPU, cores, memory, accelerator and library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform

LIBRARIES = (
    "torch",
    "av",
    "decord",
    "torchcodec",
    "webdataset",
    "numpy",
    "Pillow",
    "nuscenes-devkit",
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    """Physical memory in GiB (None where sysconf cannot tell)."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries whose speed the bench measures (None = not installed)."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def codec_versions() -> dict[str, str]:
    """libjpeg (Pillow) and FFmpeg library versions: they set the JPEG and H.264 speeds."""
    from PIL import features

    found = {
        "libjpeg": str(features.version("libjpeg_turbo") or features.version("jpg")),
        "libjpeg_turbo": str(features.check_feature("libjpeg_turbo")),
    }
    try:
        import av

        found.update({name: ".".join(map(str, v)) for name, v in av.library_versions.items()})
    except ImportError:
        pass
    return found


def accelerator() -> str | None:
    """The CUDA device name, or None on CPU-only machines."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_info() -> dict:
    """Everything above in one JSON-ready dict."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": memory_gb(),
        "accelerator": accelerator(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "codecs": codec_versions(),
        "decoders": decoder_status(),
        "load_average": list(os.getloadavg()),  # collected when the run ends: the load it ran under
    }


def decoder_status() -> dict[str, str]:
    """Video decoder -> "ok" or why it cannot run here (e.g. torchcodec without its FFmpeg or CUDA libraries)."""
    from mvm.video import DECODERS, decoder_problem

    return {name: decoder_problem(name) or "ok" for name in DECODERS}
