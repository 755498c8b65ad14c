"""The two-way transformer of the mask decoder: prompt tokens and image positions attend to each other.

Each layer updates the tokens (self-attention, then attention to the image, then an MLP) and then the image
(attention to the tokens), every step post-LN. Two details differ from segment-anything's version and change
the numbers, so they are kept: the self-attention of the first layer is residual too, and from the second layer
on the tokens' positional part (the initial tokens) is added into the token stream itself before self-attention,
so it also reaches the values.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn


class MLPBlock(nn.Module):
    """`num_layers` × (Linear → GELU), then a linear `fc` (the original's layout: `layers.N.0`, `fc`)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        widths = [input_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.GELU()) for a, b in pairwise(widths))
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)


class Attention(nn.Module):
    """Multi-head attention whose q/k/v live in `width / downsample_rate` channels, to keep image attention cheap."""

    def __init__(self, width: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal = width // downsample_rate
        if internal % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the attention width {internal}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(width, internal)
        self.k_proj = nn.Linear(width, internal)
        self.v_proj = nn.Linear(width, internal)
        self.out_proj = nn.Linear(internal, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention → tokens attend to the image → token MLP → the image attends to the tokens."""

    def __init__(
        self, width: int, num_heads: int, mlp_dim: int, downsample_rate: int, skip_first_layer_pe: bool
    ) -> None:
        super().__init__()
        self.self_attn = Attention(width, num_heads)
        self.norm1 = nn.LayerNorm(width)
        self.cross_attn_token_to_image = Attention(width, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLPBlock(width, mlp_dim, width, num_layers=1)
        self.norm3 = nn.LayerNorm(width)
        self.norm4 = nn.LayerNorm(width)
        self.cross_attn_image_to_token = Attention(width, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.skip_first_layer_pe:
            queries = queries + query_pe
        queries = self.norm1(queries + self.self_attn(queries, queries, queries))

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """(image [N, C, h, w], its positional encoding [1, C, h, w], tokens [N, T, C]) → (tokens, image [N, hw, C])."""

    def __init__(self, width: int, depth: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(width, num_heads, mlp_dim, downsample_rate, skip_first_layer_pe=index == 0)
            for index in range(depth)
        )
        self.final_attn_token_to_image = Attention(width, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(width)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe=tokens, key_pe=key_pe)
        attended = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attended), keys
