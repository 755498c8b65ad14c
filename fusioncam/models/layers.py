"""Small building blocks shared by several models."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from fusioncam.choices import Precision
from fusioncam.precision import autocast, full_precision, quantize_linears, widened


class Model(nn.Module):
    """A whole model (not a layer): it knows where it lives.

    One idiom for every model's device, as segment-anything's `Sam.device`: callers ask `model.device` instead of
    reaching for a particular parameter of each architecture.
    """

    precision: Precision = "fp32"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def inference_only(self) -> list[nn.Module]:
        """The parts no gradient ever flows through, which `int8` may quantise; Grad-CAM models leave out the text
        tower its gradient runs back through."""
        return [self]

    def set_precision(self, precision: Precision) -> None:
        """Run in `precision` from now on (see `fusioncam.precision`); weights stay float32 except under `int8`,
        which quantises `inference_only()` in place and cannot be undone."""
        if self.precision == "int8" and precision != "int8":
            raise ValueError("an int8 model cannot be turned back: load it again")
        if precision == "int8" and self.precision != "int8":
            for part in self.inference_only():
                quantize_linears(part)
        self.precision = precision

    def autocast(self) -> AbstractContextManager[object]:
        """The context the model's forward passes run in for its precision; callers enter it around them."""
        return autocast(self.precision, self.device)


def attend(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention [B, heads, T, d] of queries over keys and values [B, heads, S, d]; `mask`
    additive or boolean (True: attend); `scale` defaults to 1/√d.

    PyTorch's fused kernel, except in bf16/fp16 on a CPU: there it is 2-4× slower than plain matrix products
    for the short queries of decoding (measured: one query over 21 keys, 100 × 12 heads, 1.4 ms against 0.4;
    PNP-VQA's 100 captions 7.1 → 6.2 s). The plain way takes its softmax in float32, which costs more than it saves
    over thousands of keys (T5's explanation keeps the fused kernel for that reason).
    """
    if queries.device.type != "cpu" or queries.dtype not in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
    scores = widened(queries @ keys.transpose(-1, -2)) * (scale if scale is not None else queries.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(dim=-1).to(values.dtype) @ values


class FullPrecisionLinear(nn.Linear):
    """A linear layer that computes in float32 under any precision: the ITM and ITC heads, whose outputs are
    probabilities and cosines compared across runs, so rounding them to 8 mantissa bits would be visible.

    Same parameters (and checkpoint keys) as `nn.Linear`; identical to it in float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x.device):
            return F.linear(widened(x), widened(self.weight), None if self.bias is None else widened(self.bias))


class Mlp(nn.Module):
    """Two-layer feed-forward block with exact (erf) GELU, as both BLIP's ViT and BERT use it."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def resample_position_embedding(
    pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """A learned [1, prefix + h·w, D] position embedding on another patch grid: [1, prefix + gh·gw, D].

    Prefix tokens (a class token) keep their embedding; the h×w patch part, square as every checkpoint has it, is
    interpolated bicubically (in float32, whatever the weights' dtype). Serves both checkpoint loading (a model
    built for another resolution) and models that keep the pre-training grid and resample at every call.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = round(patches.shape[1] ** 0.5)
    if side * side != patches.shape[1]:
        raise ValueError(f"a position embedding of {patches.shape[1]} patches is not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    width = patches.shape[-1]
    square = patches.reshape(1, side, side, width).permute(0, 3, 1, 2).float()
    resized = F.interpolate(square, size=grid, mode="bicubic", align_corners=False)
    patches = resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], width).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)
