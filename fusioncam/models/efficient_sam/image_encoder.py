"""EfficientSAM's image encoder: a plain ViT over 16×16 patches, then a convolutional neck to the embedding map.

The transformer blocks are the same pre-LN blocks as BLIP's ViT (global attention, qkv bias, LayerNorm eps
1e-6), so they are reused from `fusioncam.models.vit`; what differs is around them: no class token and no final
norm, a position embedding kept at its pre-training grid and resampled on every call, and the neck that turns
the token grid into the [B, C, h, w] map the mask decoder reads.

Parameter names are the original's (`patch_embed.proj`, `pos_embed`, `blocks.N.*`, `neck.N.*`), so official
checkpoints load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusioncam.models.layers import resample_position_embedding
from fusioncam.models.vit import Block, PatchEmbed, VisionConfig


@dataclass
class ImageEncoderConfig:
    """Architecture of the EfficientSAM ViT (defaults: ViT-T)."""

    image_size: int = 1024
    patch_size: int = 16
    width: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    neck_dim: int = 256  # channels of the image embedding, and so the width of the whole mask decoder
    # The position embedding keeps the shape it had in pre-training (224², with a class-token slot) and is
    # resampled to the actual grid at run time, so the checkpoint shape does not depend on `image_size`.
    pretrain_image_size: int = 224

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def pretrain_grid_size(self) -> int:
        return self.pretrain_image_size // self.patch_size


class ChannelLayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` over the channels of a [B, C, H, W] map, each position on its own (the neck's norm).

    The map is viewed channels-last for the normalisation; `weight` and `bias` keep the checkpoint's names.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ImageEncoderViT(nn.Module):
    """Normalised [B, 3, S, S] pixels (S = `image_size`, no resizing here) → embedding map [B, neck_dim, h, w]."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.patch_size, config.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pretrain_grid_size**2, config.width))
        block = VisionConfig(
            width=config.width, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, layer_norm_eps=1e-6
        )
        self.blocks = nn.ModuleList(Block(block) for _ in range(config.depth))
        self.neck = nn.Sequential(
            nn.Conv2d(config.width, config.neck_dim, kernel_size=1, bias=False),
            ChannelLayerNorm(config.neck_dim, eps=1e-6),
            nn.Conv2d(config.neck_dim, config.neck_dim, kernel_size=3, padding=1, bias=False),
            ChannelLayerNorm(config.neck_dim, eps=1e-6),
        )

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position embedding on `grid` as [1, gh, gw, width]: class slot dropped, bicubically resampled."""
        patches = resample_position_embedding(self.pos_embed[:, 1:], grid, num_prefix_tokens=0)
        return patches.reshape(1, *grid, patches.shape[-1])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            raise ValueError(f"the image encoder takes {size}×{size} pixels, got {tuple(pixels.shape[-2:])}")
        gh, gw = self.config.grid_size
        tokens = self.patch_embed(pixels) + self.position_embedding((gh, gw)).reshape(1, gh * gw, -1)
        for block in self.blocks:
            tokens = block(tokens)
        grid = tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1]).permute(0, 3, 1, 2)
        return self.neck(grid)
