"""Pixel decoder (`prediction = "pixels"`): MAE's light transformer decoder, predicting every
hidden patch's pixels from the visible tokens' features.

The visible tokens' features are projected to the decoder width, a shared learned mask token fills
every hidden position, position codes are added (the decoder's own, of its width), a few transformer
blocks run on all L tokens, and a linear head maps each token to its k * p * p * 3 pixels (in the
loss's target space: per-patch normalized when cfg.norm_pix_loss). Dropped after pre-training:
the probes read the encoder only.

    decoder = PixelDecoder(cfg)
    pred = decoder(latent, ids_keep, video)        # (B, L, k * p * p * 3)
"""

from __future__ import annotations

import torch
from torch import nn

from mvm.train.config import ModelConfig
from mvm.train.tokens import add_position_codes, patch_dim, position_codes, transformer_blocks


class PixelDecoder(nn.Module):
    """Visible tokens' features -> predicted pixels of every token (the model's `Decoder` interface)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # Creation order is the order of the random initial draws: embed, mask token, positions, blocks, head.
        self.embed = nn.Linear(cfg.embed_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        add_position_codes(self, cfg, cfg.decoder_dim)
        self.blocks = transformer_blocks(cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.mlp_ratio)
        self.norm = nn.LayerNorm(cfg.decoder_dim)
        self.head = nn.Linear(cfg.decoder_dim, patch_dim(cfg))

    def forward(self, latent: torch.Tensor, ids_keep: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """latent (B, L_vis, embed_dim) encoder features of the tokens ids_keep (B, L_vis) ->
        pred (B, L, k * p * p * 3). video (B, T, 3, H, W) is not read: pixels come from the latent only."""
        position = position_codes(self)  # (1, L, decoder_dim)
        batch, tokens = latent.shape[0], position.shape[1]
        visible = self.embed(latent)  # (B, L_vis, D)
        full = self.mask_token.to(visible.dtype).expand(batch, tokens, -1).clone()  # (B, L, D)
        full = full.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, full.shape[-1]), visible)
        full = full + position
        return self.head(self.norm(self.blocks(full)))
