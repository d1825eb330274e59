"""Two optimizer steps through mvm.train.engine on a fixed global batch, split over the ranks.

    python tests/_ddp_step.py OUT.pt [--compile]                        # one process, whole batch
    torchrun --nproc_per_node=2 --standalone tests/_ddp_step.py OUT.pt  # DDP (gloo), half each

Rank 0 saves the parameters and (averaged, clipped) gradients after the steps to OUT.pt; equal
files mean DDP averaged gradients exactly as one process on the whole batch would (the loss is a mean over clips with equal
masked-token counts, so the mean of the ranks' gradients is the whole batch's gradient).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mvm.train.config import ModelConfig, OptimConfig  # noqa: E402
from mvm.train.engine import build_optimizer, train_step, wrap_model  # noqa: E402
from mvm.train.masks import draw_mask  # noqa: E402
from mvm.train.model import build_model  # noqa: E402

GLOBAL_BATCH, CLIP_LEN, SIZE = 4, 4, (32, 48)


def main(out: Path, compile_model: bool) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = ModelConfig(clip_len=CLIP_LEN, image_size=SIZE, stem_channels=8, embed_dim=32, depth=2,
                          num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2, mask_type="random",
                          mask_ratio=0.75)  # fmt: skip
        torch.manual_seed(0)
        model = build_model(cfg)
        optimizer = build_optimizer(model, OptimConfig(lr=1e-3, grad_clip=0.5))
        step_model, _ = wrap_model(model, torch.device("cpu"), world, compile_model)
        data = torch.Generator().manual_seed(1)
        video = torch.rand(GLOBAL_BATCH, CLIP_LEN, 3, *SIZE, generator=data)
        ids_keep, mask = draw_mask(cfg, GLOBAL_BATCH, data)
        part = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        for _ in range(2):  # two steps: the second runs on DDP's re-used gradient buckets
            stats = train_step(step_model, optimizer, video[part], ids_keep[part], mask[part], lr=1e-3,
                               grad_clip=0.5, bf16=False)  # fmt: skip
        assert stats.values[0].item() == 1.0, "the step was skipped as non-finite"
        if rank == 0:
            params = {name: p.detach().clone() for name, p in model.named_parameters()}
            grads = {f"grad.{name}": p.grad.detach().clone() for name, p in model.named_parameters()}
            torch.save({**params, **grads}, out)
        if world > 1:
            dist.barrier()  # why: mvm.train.loop, before its final barrier (without it ~1 run in 20 aborts)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--compile" in sys.argv[2:])
