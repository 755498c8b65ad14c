"""BLIP's BERT text encoder: post-LN BERT layers with cross-attention to image tokens.

Each layer runs self-attention, then (in multimodal mode) cross-attention whose keys and values come from the
image tokens, then the feed-forward block; every sub-block is `LayerNorm(x + sublayer(x))`. Without image
tokens the same weights run as a plain text encoder (BLIP's "text" mode, used for ITC).

The same stack with a causal self-attention mask and a key/value cache is BLIP's caption decoder
(`TextEncoder(..., causal=True, cache=...)`), which `TextDecoder` tops with the tied LM head.

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

from fusioncam.models.layers import Mlp, attend
from fusioncam.precision import widened

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

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `context` in head layout [B, heads, T, head_dim] (cacheable)."""
        return self._heads(self.key(context)), self._heads(self.value(context))

    def forward(
        self,
        x: torch.Tensor,
        keys_values: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        probe: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from `x` to precomputed `keys_values`; `mask` is additive, broadcastable to the scores.

        With `probe`, the probabilities are computed explicitly, detached into a leaf that requires grad,
        and returned alongside the output.
        """
        q = self._heads(self.query(x))
        k, v = keys_values
        probs = None
        if probe:
            # In float32 whatever the precision: these probabilities are the Grad-CAM map itself, and their
            # gradient (the other factor) is taken with respect to them.
            scores = widened(q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1).detach().requires_grad_(True)
            out = probs @ v
        else:
            out = attend(q, k, v, mask)
        batch, _, tokens, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(batch, tokens, -1)), probs


class TextEmbeddings(nn.Module):
    """Word + absolute position embeddings, then LayerNorm (BLIP's BERT has no token-type embeddings)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Embed tokens at positions start…start+L-1 (start > 0 when a decoder continues from its cache)."""
        end = start + input_ids.shape[1]
        if end > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {end} tokens exceeds the {self.position_embeddings.num_embeddings} positions")
        # Positions count from 0 whatever the padding, as in BERT.
        positions = torch.arange(start, end, device=input_ids.device)
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
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        keys_values = self.self_attn.keys_values(x)
        if cache is not None:
            keys_values = cache.extend(keys_values)
        attended, _ = self.self_attn(x, keys_values, mask=self_mask)
        x = self.self_attn_norm(x + attended)
        probs = None
        if image_embeds is not None:
            if cache is not None:
                if cache.cross is None:  # the image does not change while decoding: project it once
                    cache.cross = self.cross_attn.keys_values(image_embeds)
                cross = cache.cross
            else:
                cross = self.cross_attn.keys_values(image_embeds)
            attended, probs = self.cross_attn(x, cross, probe=probe)
            x = self.cross_attn_norm(x + attended)
        return self.mlp_norm(x + self.mlp(x)), probs


@dataclass
class LayerCache:
    """Keys and values one decoder layer has seen so far, and those of the image it cross-attends to."""

    seen: tuple[torch.Tensor, torch.Tensor] | None = None  # (keys, values) of the tokens so far
    cross: tuple[torch.Tensor, torch.Tensor] | None = None

    def extend(self, keys_values: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = keys_values
        if self.seen is not None:
            keys, values = torch.cat([self.seen[0], keys], dim=2), torch.cat([self.seen[1], values], dim=2)
        self.seen = keys, values
        return keys, values

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows `index` (beam search reorders and duplicates hypotheses)."""
        if self.seen is not None:
            self.seen = (self.seen[0][index], self.seen[1][index])
        if self.cross is not None:
            self.cross = (self.cross[0][index], self.cross[1][index])


@dataclass
class DecoderCache:
    """Per-layer caches of a decoding run; `length` is how many tokens have been consumed."""

    layers: list[LayerCache]
    length: int = 0

    @classmethod
    def empty(cls, num_layers: int) -> DecoderCache:
        return cls([LayerCache() for _ in range(num_layers)])

    def reorder(self, index: torch.Tensor) -> None:
        for layer in self.layers:
            layer.reorder(index)


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] 1/0 mask → additive [B, 1, 1, L] mask for the attention scores."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_VALUE


def causal_padding_mask(attention_mask: torch.Tensor, new_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B, 1, n, T] mask: the last `n` of `T` tokens see the tokens up to themselves that are not padding.

    `attention_mask` [B, T] covers the cached tokens and the new ones.
    """
    total = attention_mask.shape[1]
    past = total - new_tokens
    device = attention_mask.device
    causal = torch.arange(total, device=device)[None, :] <= torch.arange(past, total, device=device)[:, None]
    allowed = causal[None, None] * attention_mask[:, None, None, :].bool()
    return (1.0 - allowed.to(dtype)) * MASK_VALUE


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
        causal: bool = False,
        cache: DecoderCache | None = None,
    ) -> TextEncoderOutput:
        """Encode text, cross-attending to `image_embeds` when given (all image tokens are attended).

        `probe_block` returns that block's cross-attention probabilities as an autograd leaf; the blocks
        before it then run without autograd, since no gradient can reach them through a leaf.
        `causal` makes self-attention look only backwards (the caption decoder); with a `cache`, `input_ids`
        are the tokens after those already cached and `attention_mask` covers cached and new tokens.
        """
        if probe_block is not None:
            if image_embeds is None:
                raise ValueError("a cross-attention probe needs image tokens")
            if not 0 <= probe_block < len(self.layers):
                raise ValueError(f"block {probe_block} is out of range: the text encoder has {len(self.layers)}")
        start = cache.length if cache is not None else 0
        x = self.embeddings(input_ids, start=start)
        if causal:
            mask = causal_padding_mask(attention_mask, input_ids.shape[1], x.dtype)
        else:
            mask = padding_mask(attention_mask, x.dtype)
        probe_probs = None
        grad_enabled = torch.is_grad_enabled()
        for index, layer in enumerate(self.layers):
            before_probe = probe_block is not None and index < probe_block
            layer_cache = cache.layers[index] if cache is not None else None
            with torch.set_grad_enabled(grad_enabled and not before_probe):
                x, probs = layer(x, mask, image_embeds, probe=index == probe_block, cache=layer_cache)
            if probs is not None:
                probe_probs = probs
        if cache is not None:
            cache.length = start + input_ids.shape[1]
        return TextEncoderOutput(last_hidden_state=x, cross_attention=probe_probs)


class LMHead(nn.Module):
    """BERT's prediction head: dense → GELU → LayerNorm → scores against the (tied) word embeddings + bias.

    The output projection is the word-embedding matrix itself, passed in at call time, so the tie cannot break
    when weights are loaded or moved.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


class TextDecoder(nn.Module):
    """BLIP's caption decoder: the text stack run causally, cross-attending to image tokens, with an LM head."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = TextEncoder(config)
        self.lm_head = LMHead(config)

    def new_cache(self) -> DecoderCache:
        return DecoderCache.empty(len(self.bert.layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeds: torch.Tensor,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """Next-token logits [B, L, vocab] for every position of `input_ids`."""
        hidden = self.bert(input_ids, attention_mask, image_embeds, causal=True, cache=cache).last_hidden_state
        return self.lm_head(hidden, self.bert.embeddings.word_embeddings.weight)
