"""--decoder nvdec without CUDA (mvm/nvdec.py): the NV12 -> I420 layout on real decoded planes, the
one-line fallback to PyAV (no CUDA; a DataLoader worker), auto never choosing it here, the RGB
readers' mapping, and the NVDEC-vs-CPU comparison routine run on two CPU decodes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _train_helpers import write_shards
from torch.utils.data import DataLoader, IterableDataset

from mvm import nvdec
from mvm.shards import iter_verified, resolve_shards
from mvm.train.config import DataConfig, TrainConfig, apply_overrides, validate
from mvm.train.data import batches, decode_sample, epoch_samples, hands_over_i420, rgb_decoder
from mvm.train.split import plan_epoch
from mvm.video import AUTO, DECODER_CHOICES, decode_clip, decode_i420, rgb_to_i420, warn_fallback

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-side behaviour of nvdec")
CLIP_LEN, SIZE = 4, (32, 64)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = write_shards(tmp_path_factory.mktemp("shards"), [3], clip_len=CLIP_LEN, size=SIZE)
    return list(iter_verified(resolve_shards(str(folder))[0]))


@pytest.fixture(autouse=True)
def fresh_warnings():
    warn_fallback.cache_clear()  # the warning is once per process and reason; each test starts anew
    yield


def to_nv12(i420: np.ndarray) -> np.ndarray:
    """(T, 3H/2, W) I420 -> NV12, by the layout's definition (the inverse of what is under test)."""
    clip_len, rows, width = i420.shape
    height = rows * 2 // 3
    chroma = height // 2 * width // 2
    flat = i420.reshape(clip_len, -1)
    u, v = flat[:, height * width : height * width + chroma], flat[:, height * width + chroma :]
    uv = np.stack([u, v], axis=-1).reshape(clip_len, height // 2, width)
    return np.concatenate([i420[:, :height], uv], axis=1)


def test_nv12_to_i420_gives_pyav_planes_back(samples):
    planes = decode_i420(samples[0]["mp4"])
    nv12 = to_nv12(planes)
    assert not np.array_equal(nv12, planes)  # the layouts differ, so the test can fail
    assert torch.equal(nvdec.nv12_to_i420(torch.from_numpy(nv12)), torch.from_numpy(planes))


def test_nvdec_is_a_choice_and_validates():
    assert "nvdec" in DECODER_CHOICES
    validate(apply_overrides(TrainConfig(), {"data": {"decoder": "nvdec", "workers": 0}}))


def test_without_cuda_nvdec_says_why_once_and_pyav_decodes(samples):
    assert nvdec.library_problem() == "no CUDA device visible to torch"
    assert not hands_over_i420("nvdec")  # no CUDA: RGB from the workers, as for auto
    assert rgb_decoder("nvdec") == "pyav"
    with pytest.warns(RuntimeWarning) as caught:
        for sample in samples:
            frames, _ = decode_sample(sample, "nvdec", (CLIP_LEN, *SIZE, 3), i420=True)
            np.testing.assert_array_equal(frames, decode_i420(sample["mp4"]))
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == [
        "video decoder nvdec cannot run here (no CUDA device visible to torch); decoding with PyAV instead"
    ]


def test_auto_never_selects_nvdec_here(samples):
    assert AUTO == "pyav" and not hands_over_i420("auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: auto did not try nvdec
        frames, _ = decode_sample(samples[0], "auto", (CLIP_LEN, *SIZE, 3), i420=True)
    assert isinstance(frames, np.ndarray)


class WorkerProblem(IterableDataset):
    def __iter__(self):
        yield nvdec.nvdec_problem()


def test_a_dataloader_worker_refuses_nvdec_and_says_why():
    assert nvdec.nvdec_problem() == "no CUDA device visible to torch"  # the training process
    (problem,) = list(DataLoader(WorkerProblem(), batch_size=None, num_workers=1))
    assert problem.startswith("a forked DataLoader worker cannot initialise CUDA")


def test_the_trainer_stream_with_nvdec_falls_back_to_the_same_batches(tmp_path):
    folder = write_shards(tmp_path / "shards", [4, 4], clip_len=CLIP_LEN, size=SIZE)
    urls = resolve_shards(str(folder))
    slots = plan_epoch([4, 4], world=1, workers=0, seed=0, epoch=0)[0]

    def first_batch(decoder):
        cfg = DataConfig(workers=0, decoder=decoder, batch_size=4, shuffle_buffer=4)
        stream = epoch_samples(urls, slots, 0, cfg, 0, 0, 0, (CLIP_LEN, *SIZE, 3))
        return next(batches(stream, 4))

    with pytest.warns(RuntimeWarning, match="nvdec cannot run here"):
        keys, frames, _ = first_batch("nvdec")
    reference_keys, reference, _ = first_batch("pyav")
    assert keys == reference_keys and torch.equal(frames, reference)


def test_compare_on_two_cpu_decodes(samples):
    mp4s = [sample["mp4"] for sample in samples]
    same = nvdec.compare_with_pyav(mp4s, decode=decode_i420)
    assert same == {"max_abs_diff": 0, "psnr_db": float("inf"), "values": same["values"], "clips": 3}
    # PyAV's RGB decode taken back to I420: a different path (swscale, then integer BT.601), close.
    via_rgb = nvdec.compare_with_pyav(
        mp4s, decode=lambda mp4: np.stack([rgb_to_i420(f) for f in decode_clip(mp4)])
    )
    assert 0 < via_rgb["max_abs_diff"] < 64 and 35 < via_rgb["psnr_db"] < float("inf")
    assert via_rgb["values"] == same["values"] == 3 * CLIP_LEN * SIZE[0] * SIZE[1] * 3 // 2
    with pytest.raises(ValueError, match="differs"):
        nvdec.compare_decodes(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))
