"""H.264 decoding on the GPU's video engine (NVDEC) through PyNvVideoCodec; its check against PyAV.

`--decoder nvdec` decodes the shards' plain H.264 MP4 members (the format does not change, every
decoder reads the same shards) into the same uint8 (T, 3H/2, W) I420 planes as mvm.video.decode_i420,
but as a CUDA tensor: the batch is then converted to RGB where it already is (mvm.tensors.to_video).

Why PyNvVideoCodec: of the candidates it is the one that installs from PyPI as one wheel (26.9 MB,
cp312 manylinux x86-64, its own FFmpeg demuxer inside; from the system it needs only the driver's
video libraries, libnvcuvid and libnvidia-encode, which its import checks), decodes from bytes in
memory (no temporary file) and hands frames over by DLPack. torchcodec's CUDA decoder needs its
CUDA build, which PyPI does not carry, and the system's FFmpeg libraries; DALI brings its own
pipeline and loader, a second input pipeline to keep in step with mvm.train.data. H.264 decoding
is specified bit-exactly, so NVDEC's planes should equal PyAV's: `compare_with_pyav` checks it.

Where decoding happens: in the training process. DataLoader workers are forked from a process that
has already initialised CUDA, and CUDA cannot be initialised again in a forked child; so a worker
asked for nvdec says so once and decodes with PyAV instead. With `--workers 0` the training process
reads, shuffles and decodes; NVDEC is an engine of its own, apart from the SMs that train.

Without a CUDA device or without PyNvVideoCodec, nvdec says why in one line (a RuntimeWarning, once
per process) and the PyAV path runs: the same thing the optional CPU decoders do when missing.
"auto" never picks nvdec until `make bench-gpu` has measured it faster than PyAV (bench/gpu.py).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import get_worker_info

from mvm.video import decode_i420, psnr, warn_fallback

NVDEC = "nvdec"
PACKAGE = "PyNvVideoCodec"
"""The import name; the PyPI name is `pynvvideocodec` (pinned nowhere: it is installed on GPU images only)."""


@functools.cache
def library_problem() -> str | None:
    """Why NVDEC cannot run in this process, whatever process it is (None when it can)."""
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        return f"{PACKAGE} is not installed (pip install pynvvideocodec)"
    except Exception as error:  # its import checks the driver (RuntimeError with a long how-to)
        return f"{PACKAGE} does not load: {type(error).__name__}: {str(error).splitlines()[0]}"
    return None


def nvdec_problem() -> str | None:
    """Why nvdec cannot decode here (None when it can): library_problem, or a DataLoader worker."""
    if get_worker_info() is not None:
        return "a forked DataLoader worker cannot initialise CUDA; nvdec runs with --workers 0"
    return library_problem()


def nvdec_runs() -> bool:
    """Whether nvdec decodes in this process; if not, one RuntimeWarning (once) saying why."""
    problem = nvdec_problem()
    if problem is not None:
        warn_fallback(NVDEC, problem)
    return problem is None


def nv12_to_i420(nv12: torch.Tensor) -> torch.Tensor:
    """NV12 -> I420 on the tensor's device: uint8 (..., 3H/2, W) both (Y rows first in each).

    NV12 (what NVDEC writes): H rows of Y, then H/2 rows of interleaved U, V pairs.
    I420 (mvm.video.decode_i420): H rows of Y, then the U plane (H/2, W/2) and the V plane, each
    laid out as H/4 rows of W.
    """
    rows, width = nv12.shape[-2:]
    height = rows * 2 // 3
    lead = nv12.shape[:-2]
    y = nv12[..., :height, :].reshape(*lead, -1)
    uv = nv12[..., height:, :].reshape(*lead, height // 2, width // 2, 2)
    planes = (y, uv[..., 0].reshape(*lead, -1), uv[..., 1].reshape(*lead, -1))
    return torch.cat(planes, dim=-1).reshape(*lead, rows, width)


def decode_i420_cuda(mp4: bytes, device: torch.device | None = None) -> torch.Tensor:
    """Decode a shard clip with NVDEC: uint8 (T, 3H/2, W) I420 planes on `device` (default: the
    current CUDA device, the training process's own)."""
    import PyNvVideoCodec as nvc

    device = device if device is not None else torch.device("cuda", torch.cuda.current_device())
    # cuda_stream 0: the legacy default stream, which torch's default stream also synchronises with.
    decoder = nvc.SimpleDecoder(
        mp4, gpu_id=device.index or 0, use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE
    )
    frames = decoder.get_batch_frames(len(decoder))
    # The decoder reuses its surfaces: torch.stack copies each NV12 frame out before the next clip.
    return nv12_to_i420(torch.stack([torch.from_dlpack(frame) for frame in frames]).to(device))


def compare_decodes(reference: np.ndarray, decoded: np.ndarray) -> dict:
    """How far `decoded` is from `reference` (equal-shape uint8 arrays, e.g. all clips' I420 planes):
    {"max_abs_diff": int, "psnr_db": float (inf when equal), "values": int}."""
    if reference.shape != decoded.shape:
        raise ValueError(f"decoded shape {decoded.shape} differs from the reference's {reference.shape}")
    difference = np.abs(reference.astype(np.int16) - decoded.astype(np.int16))
    return {
        "max_abs_diff": int(difference.max()),
        "psnr_db": psnr(reference, decoded),
        "values": int(reference.size),
    }


def compare_with_pyav(mp4s: list[bytes], decode=decode_i420_cuda) -> dict:
    """compare_decodes of `decode` (default NVDEC; any bytes -> I420 planes, numpy or torch) against
    PyAV's decode_i420 over the clips `mp4s` (concatenated): the GPU check of bench/gpu.py."""
    reference = np.concatenate([decode_i420(mp4) for mp4 in mp4s])
    decoded = np.concatenate([np.asarray(torch.as_tensor(decode(mp4)).cpu()) for mp4 in mp4s])
    return {**compare_decodes(reference, decoded), "clips": len(mp4s)}
