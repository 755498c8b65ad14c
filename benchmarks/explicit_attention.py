"""EfficientSAM's image encoder computing attention the way the original implementation writes it out.

The original EfficientSAM forms the whole [tokens × tokens] score matrix, `softmax(q kᵀ · d^-½)`, and multiplies
it by v, as timm's ViT did before PyTorch had a fused kernel; fusioncam's encoder calls
`F.scaled_dot_product_attention`, which may tile the computation and never hold the matrix. At 1024² input the
encoder attends over 4096 tokens, so the difference is the one `make bench` measures: same weights, same
arithmetic up to rounding, different cost.
"""

from __future__ import annotations

import copy

import torch

from fusioncam.models.efficient_sam.image_encoder import ImageEncoderViT
from fusioncam.models.layers import Model
from fusioncam.models.vit import Attention


class ExplicitAttention(Attention):
    """`fusioncam.models.vit.Attention` (same parameters) with the score matrix materialised."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


def explicit(attention: Attention) -> ExplicitAttention:
    """An `ExplicitAttention` holding copies of `attention`'s weights."""
    width = attention.qkv.in_features
    replacement = ExplicitAttention(width, attention.num_heads, attention.qkv.bias is not None)
    replacement.load_state_dict(attention.state_dict())
    return replacement.to(attention.qkv.weight.device)


class ExplicitAttentionEncoder(Model):
    """A copy of an EfficientSAM image encoder whose blocks attend explicitly.

    A `Model`, so that it runs at any precision exactly as fusioncam's does (autocast, or int8 linears), and it
    keeps the copy as `image_encoder`, as `EfficientSam` does, so that the same code times both.
    """

    def __init__(self, encoder: ImageEncoderViT) -> None:
        super().__init__()
        self.image_encoder = copy.deepcopy(encoder)
        for block in self.image_encoder.blocks:
            block.attn = explicit(block.attn)
