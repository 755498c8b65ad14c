"""Vision Transformer as BLIP uses it (ViT-B/16 and ViT-L/16 at 384², pre-LN, class token).

The parameter names follow timm's `VisionTransformer` (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.N.attn.qkv`, `norm`), which is also what LAVIS checkpoints use; other layouts are converted in
`fusioncam.checkpoints`, never here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fusioncam.models.layers import Mlp


@dataclass
class VisionConfig:
    """Architecture of a BLIP vision encoder."""

    image_size: int = 384
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    # LAVIS uses 1e-6; transformers' BLIP port uses 1e-5. A preset carries the eps of its source.
    layer_norm_eps: float = 1e-6

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens, by one strided convolution."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection whose rows are [q; k; v]."""

    def __init__(self, width: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attn = Attention(config.width, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = Mlp(config.width, int(config.width * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Image → [B, 1 + gh·gw, width] tokens; token 0 is the class token, the rest the patch grid row-major."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        gh, gw = config.grid_size
        self.patch_embed = PatchEmbed(config.patch_size, config.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + gh * gw, config.width))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.config.grid_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixels)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        # The class token is prepended before the position embedding is added (it has a position of its own).
        x = torch.cat([cls, patches], dim=1) + self.pos_embed[:, : patches.shape[1] + 1]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
