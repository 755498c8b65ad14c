"""BLIP's BERT text encoder: post-LN BERT layers with cross-attention to image tokens.

Each layer runs self-attention, then (in multimodal mode) cross-attention whose keys and values come from the
image tokens, then the feed-forward block; every sub-block is `LayerNorm(x + sublayer(x))`. Without image
tokens the same weights run as a plain text encoder (BLIP's "text" mode, used for ITC).

For Grad-CAM the encoder can expose the cross-attention probabilities of one block as an autograd leaf: the
gradient of any output with respect to it is exactly what a tensor hook on the original graph would see,
while nothing before that block needs to be recorded for autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fusioncam.models.layers import Mlp

# BLIP's additive mask value for padded keys. Not -inf: the original adds -10000, and so do we, so that
# softmax weights on padding are tiny but identical to the reference.
MASK_VALUE = -10000.0


@dataclass
class TextConfig:
    """Architecture of a BLIP text encoder (BERT-base with cross-attention by default)."""

    vocab_size: int = 30524
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    encoder_width: int = 768  # width of the image tokens that cross-attention reads
    pad_token_id: int = 0


@dataclass
class TextEncoderOutput:
    """What the text encoder returns.

    `cross_attention` is set only when a probe block was asked for: the softmax probabilities
    [B, heads, L, 1 + N] of that block's cross-attention, an autograd leaf that requires grad.
    """

    last_hidden_state: torch.Tensor
    cross_attention: torch.Tensor | None = None


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with separate q/k/v projections and an output projection.

    Keys and values may come from a context of another width (cross-attention to image tokens).
    """

    def __init__(self, width: int, num_heads: int, context_width: int | None = None) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"hidden size {width} is not divisible by num_heads {num_heads}")
        context_width = context_width or width
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(context_width, width)
        self.value = nn.Linear(context_width, width)
        self.out = nn.Linear(width, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        probe: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from `x` to `context` (or to itself); `mask` is additive, broadcastable to the scores.

        With `probe`, the probabilities are computed explicitly, detached into a leaf that requires grad,
        and returned alongside the output.
        """
        context = x if context is None else context
        q, k, v = self._heads(self.query(x)), self._heads(self.key(context)), self._heads(self.value(context))
        probs = None
        if probe:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1).detach().requires_grad_(True)
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        batch, _, tokens, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(batch, tokens, -1)), probs


class TextEmbeddings(nn.Module):
    """Word + absolute position embeddings, then LayerNorm (BLIP's BERT has no token-type embeddings)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {length} tokens exceeds the {self.position_embeddings.num_embeddings} positions")
        # Positions are 0..L-1 whatever the padding, as in BERT.
        positions = torch.arange(length, device=input_ids.device)
        return self.norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class TextLayer(nn.Module):
    """Self-attention → cross-attention (when image tokens are given) → feed-forward, each post-LN."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = MultiHeadAttention(width, config.num_heads)
        self.self_attn_norm = nn.LayerNorm(width, eps=eps)
        self.cross_attn = MultiHeadAttention(width, config.num_heads, config.encoder_width)
        self.cross_attn_norm = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, config.intermediate_size)
        self.mlp_norm = nn.LayerNorm(width, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        probe: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, _ = self.self_attn(x, mask=self_mask)
        x = self.self_attn_norm(x + attended)
        probs = None
        if image_embeds is not None:
            attended, probs = self.cross_attn(x, image_embeds, probe=probe)
            x = self.cross_attn_norm(x + attended)
        return self.mlp_norm(x + self.mlp(x)), probs


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] 1/0 mask → additive [B, 1, 1, L] mask for the attention scores."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_VALUE


class TextEncoder(nn.Module):
    """BERT with cross-attention in every layer: ids [B, L] (+ image tokens) → hidden states [B, L, D]."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.layers = nn.ModuleList(TextLayer(config) for _ in range(config.num_layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        probe_block: int | None = None,
    ) -> TextEncoderOutput:
        """Encode text, cross-attending to `image_embeds` when given (all image tokens are attended).

        `probe_block` returns that block's cross-attention probabilities as an autograd leaf; the blocks
        before it then run without autograd, since no gradient can reach them through a leaf.
        """
        if probe_block is not None:
            if image_embeds is None:
                raise ValueError("a cross-attention probe needs image tokens")
            if not 0 <= probe_block < len(self.layers):
                raise ValueError(f"block {probe_block} is out of range: the text encoder has {len(self.layers)}")
        x = self.embeddings(input_ids)
        mask = padding_mask(attention_mask, x.dtype)
        probe_probs = None
        grad_enabled = torch.is_grad_enabled()
        for index, layer in enumerate(self.layers):
            before_probe = probe_block is not None and index < probe_block
            with torch.set_grad_enabled(grad_enabled and not before_probe):
                x, probs = layer(x, mask, image_embeds, probe=index == probe_block)
            if probs is not None:
                probe_probs = probs
        return TextEncoderOutput(last_hidden_state=x, cross_attention=probe_probs)
