"""DIFNet's dual-stream encoder (mrwu-mac/DIFNet `DifnetEncoder`): grid and pixel features fused by a sum.

Two token streams of the same shape go in: grid features (here BLIP ViT tokens) and pixel features (here
EfficientSAM tokens). The first `Lf` layers are shared: the same attention and feed-forward weights process the
grid stream and the pixel stream, `T` times per layer and interleaved, each stream with LayerNorms of its own, so
the two modalities are projected alike while keeping their own statistics. At layer `Lf` the streams are summed
and the remaining layers see one stream. The output adds both streams as they were just before the sum, a long
skip that keeps each stream's own signal next to the fused one.

Behaviour kept because trained DIFNet weights and the reference fixture depend on it:
- every layer is post-LN and normalises its attention output twice: `LN_m(x + LN_attn(x + attn(x)))`, where the
  inner LayerNorm is the same for both streams and only the outer one (and the feed-forward's) follows the stream;
- padding rows are the rows whose features sum to exactly `padding_idx`, found separately in each stream; the
  layers after the merge use the grid stream's mask. Masked keys score -inf, so a sample whose rows are all padding
  gives NaN, as in the original; padded query rows are computed, not zeroed;
- attention probabilities are dropped out with their own rate (the original leaves it at 0.1 whatever `dropout`).

The original keeps LayerNorms it never uses (a per-stream one inside the attention block, and pixel norms in the
layers after the merge); this module has no such parameters. `fusioncam.checkpoints.load_difnet_encoder_weights`
maps the original state dict onto it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import torch
import torch.nn.functional as F
from torch import nn

from fusioncam.precision import widened


@dataclass
class DifnetConfig:
    """Architecture of a DIFNet encoder; field names follow the paper and the original constructor."""

    Lf: int = 3  # layers shared by both streams before they are summed (layer `Lf` is the first after the sum)
    T: int = 2  # how many times each shared layer runs on each stream
    N: int = 6  # layers in all
    d_model: int = 768  # width of both input streams and of the output
    heads: int = 12
    d_k: int = 64  # per-head width of queries and keys
    d_v: int = 64  # per-head width of values
    d_ff: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1  # on the attention probabilities; the original hard-codes 0.1
    padding_idx: float = 0  # a row whose features sum to exactly this value is padding
    d_in: int = 768  # accepted like the original's and unused: inputs must already be `d_model` wide

    def __post_init__(self) -> None:
        # The original fails with a NameError at the end of its forward when Lf >= N (nothing is ever summed).
        if not 0 <= self.Lf < self.N:
            raise ValueError(f"Lf must be in [0, N): got Lf={self.Lf}, N={self.N}; the streams are summed at layer Lf")
        if self.T < 1:
            raise ValueError(f"T must be at least 1, got {self.T}")


class Stream(IntEnum):
    """Which LayerNorm set a shared layer uses: the grid set also serves the fused stream."""

    GRID = 0
    PIXEL = 1


@dataclass
class DifnetOutput:
    """What the encoder returns.

    `last_hidden_state` [B, S, d_model] is the fused stream plus both streams as they were before the sum;
    `attention_mask` [B, 1, 1, S] is the grid stream's padding mask (True = padded), as the original returns it.
    """

    last_hidden_state: torch.Tensor
    attention_mask: torch.Tensor


def feature_padding_mask(features: torch.Tensor, padding_idx: float) -> torch.Tensor:
    """[B, S, D] features → [B, 1, 1, S] bool, True where a row's features sum to exactly `padding_idx`.

    This is the original's rule: zero-filled rows are padding, and so (rarely) is a real row that sums to it.
    """
    return (features.sum(-1) == padding_idx)[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention over the unpadded keys; heads of `d_k` for queries/keys and `d_v` for values."""

    def __init__(self, config: DifnetConfig) -> None:
        super().__init__()
        self.heads, self.d_k, self.d_v = config.heads, config.d_k, config.d_v
        self.attention_dropout = config.attention_dropout
        self.query = nn.Linear(config.d_model, config.heads * config.d_k)
        self.key = nn.Linear(config.d_model, config.heads * config.d_k)
        self.value = nn.Linear(config.d_model, config.heads * config.d_v)
        self.out = nn.Linear(config.heads * config.d_v, config.d_model)
        # The original's initialisation, so that a fusion trained from scratch starts where DIFNet's did.
        for linear in (self.query, self.key, self.value, self.out):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """`padding` [B, 1, 1, S] marks the keys no query may attend to."""
        batch, tokens, _ = x.shape
        q = self.query(x).view(batch, tokens, self.heads, self.d_k).transpose(1, 2)
        k = self.key(x).view(batch, tokens, self.heads, self.d_k).transpose(1, 2)
        v = self.value(x).view(batch, tokens, self.heads, self.d_v).transpose(1, 2)
        # Written out rather than F.scaled_dot_product_attention: some of its kernels return zeros instead of the
        # original's NaN for a row with every key masked, and this is what the reference fixture was made with.
        # The softmax in float32 under any precision (its input, a bf16 product, is promoted first).
        scores = (widened(q @ k.transpose(-1, -2)) / math.sqrt(self.d_k)).masked_fill(padding, float("-inf"))
        probs = F.dropout(scores.softmax(dim=-1), self.attention_dropout, self.training)
        return self.out((probs @ v).transpose(1, 2).reshape(batch, tokens, self.heads * self.d_v))


class FeedForward(nn.Module):
    """Position-wise ReLU feed-forward, with dropout after the activation and after the output projection."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.relu(self.fc1(x)))))


class DifnetLayer(nn.Module):
    """One post-LN encoder layer whose attention and feed-forward weights serve every stream it is given.

    `skip_norms` and `ffn_norms` hold one LayerNorm per stream (`Stream` indexes them); a layer after the merge
    has only the grid set. `attn_norm` is shared: the original's attention block never learns the stream.
    """

    def __init__(self, config: DifnetConfig, streams: int) -> None:
        super().__init__()
        d_model = config.d_model
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(d_model)
        self.skip_norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(streams))
        self.ffn = FeedForward(d_model, config.d_ff, config.dropout)
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(streams))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor, stream: Stream) -> torch.Tensor:
        attended = self.attn_norm(x + self.dropout(self.attn(x, padding)))
        # DIFNet's second normalisation: the already normalised attention output is added to x once more.
        x = self.skip_norms[stream](x + self.dropout(attended))
        return self.ffn_norms[stream](x + self.ffn(x))


class DifnetEncoder(nn.Module):
    """Grid tokens + pixel tokens, both [B, S, d_model] → fused tokens [B, S, d_model] (see the module docstring)."""

    def __init__(self, config: DifnetConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            DifnetLayer(config, streams=len(Stream) if index < config.Lf else 1) for index in range(config.N)
        )

    def forward(self, grid: torch.Tensor, pixel: torch.Tensor) -> DifnetOutput:
        d_model = self.config.d_model
        if grid.ndim != 3 or grid.shape != pixel.shape or grid.shape[-1] != d_model:
            raise ValueError(
                f"grid and pixel features must both be [batch, tokens, {d_model}]; "
                f"got {tuple(grid.shape)} and {tuple(pixel.shape)}"
            )
        grid_padding = feature_padding_mask(grid, self.config.padding_idx)
        pixel_padding = feature_padding_mask(pixel, self.config.padding_idx)
        lf = self.config.Lf
        for layer in self.layers[:lf]:
            for _ in range(self.config.T):
                grid = layer(grid, grid_padding, Stream.GRID)
                pixel = layer(pixel, pixel_padding, Stream.PIXEL)
        fused = grid + pixel
        for layer in self.layers[lf:]:
            fused = layer(fused, grid_padding, Stream.GRID)
        return DifnetOutput(last_hidden_state=fused + grid + pixel, attention_mask=grid_padding)
