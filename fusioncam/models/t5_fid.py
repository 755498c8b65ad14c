"""UnifiedQA-v2 (T5) as a Fusion-in-Decoder question answerer: PNP-VQA's last stage.

Fusion-in-Decoder: every passage (the question followed by a few captions) goes through the T5 encoder on its
own — relative positions restart in each passage and no passage attends to another — and the decoder
cross-attends over all passages concatenated. Evidence is fused only where the answer is written.

Because the encoder never mixes passages, an encoding stays valid when a passage is dropped from it
(`FiDEncoding.without_passage`): measuring what each caption contributes to an answer costs one decoder pass per
passage, not a fresh encoding of the others.

Decoding runs the loops of `fusioncam.models.decoding` instead of transformers' `generate`: transformers 5 rewrote
beam search (it scores hypotheses cut at the length limit by another length and pads finished rows with eos), which
changes answers, and the numbers must be those of LAVIS's `PNPUnifiedQAv2FiD`, run under transformers 4.33, which
those loops follow. `max_new_tokens` / `min_new_tokens` count the tokens after the decoder start token.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MethodType
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import (
    T5DenseActDense,
    T5LayerCrossAttention,
    T5LayerFF,
    T5LayerSelfAttention,
)

from fusioncam.choices import Precision
from fusioncam.models.architectures import architecture
from fusioncam.models.decoding import Reorder, beam_search, token_by_token
from fusioncam.models.layers import Model
from fusioncam.precision import autocast_weights

# T5 v1.0 base, which UnifiedQA-v2 base is (LAVIS's pnp-vqa unifiedqav2_base config); the other sizes are entries
# of `models.architectures`.
_DEFAULTS: dict[str, Any] = {
    "d_model": 768,
    "d_ff": 3072,
    "d_kv": 64,
    "num_layers": 12,
    "num_heads": 12,
    "vocab_size": 32128,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "relu",
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
    # Original T5 ties the embeddings and scales the decoder output by d_model**-0.5 before the LM head;
    # transformers keys that scaling off this flag.
    "tie_word_embeddings": True,
}

# LAVIS's PNP-VQA answers with `max_length=20`, which counts the decoder start token.
DEFAULT_MAX_NEW_TOKENS = 19

# Answer tokens the leave-one-out decoder takes per pass, over all removals: enough for large matrix products
# (1024 rows made a 100-passage explanation 15 % faster than 320 on CPU), few enough for the LM head's
# [rows, vocab] float32 log-softmax to stay small (130 MB for T5's vocabulary).
_ROWS_PER_PASS = 1024


def t5_config(preset: str, **overrides: Any) -> T5Config:
    """The `T5Config` of a UnifiedQA-v2 size (`base`, `large`, `3b`), with `overrides` applied on top."""
    return T5Config(**(_DEFAULTS | architecture("t5-qa", preset) | overrides))


@dataclass(frozen=True)
class FiDEncoding:
    """The encoder side of a batch: passages encoded one by one, concatenated per sample.

    `last_hidden_state` [B, n·L, D] and `attention_mask` [B, n·L] hold passage i at positions i·L … (i+1)·L − 1.
    Padding positions are computed too; the mask hides them from the decoder.
    """

    last_hidden_state: torch.Tensor
    attention_mask: torch.Tensor
    num_passages: int

    @property
    def passage_length(self) -> int:
        return self.attention_mask.shape[1] // self.num_passages

    def without_passage(self, index: int) -> FiDEncoding:
        """The encoding the remaining passages would get on their own (the encoder never mixes passages)."""
        if not 0 <= index < self.num_passages:
            raise IndexError(f"passage {index} out of range for {self.num_passages} passages")
        if self.num_passages == 1:
            raise ValueError("cannot remove the only passage")
        length = self.passage_length
        keep = torch.ones(self.attention_mask.shape[1], dtype=torch.bool, device=self.attention_mask.device)
        keep[index * length : (index + 1) * length] = False
        return FiDEncoding(self.last_hidden_state[:, keep], self.attention_mask[:, keep], self.num_passages - 1)


class FusionInDecoderQA(Model):
    """A `T5ForConditionalGeneration` used Fusion-in-Decoder style.

    Embed once, ask many: `encode` runs the encoder over [B, n, L] passages; `generate`, `logits` and
    `answer_log_prob` all decode against that encoding.
    """

    def __init__(self, model: T5ForConditionalGeneration) -> None:
        super().__init__()
        self.model = model
        for module in model.modules():
            if isinstance(module, T5DenseActDense):
                module.forward = MethodType(_feed_forward, module)  # type: ignore[method-assign]

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> FusionInDecoderQA:
        """An untrained model of a UnifiedQA-v2 size (build under `torch.device("meta")` to skip the init)."""
        return cls(T5ForConditionalGeneration(t5_config(preset, **overrides)))

    def set_precision(self, precision: Precision) -> None:
        """Also picks T5's attention: PyTorch's fused kernel (`sdpa`), which the float32 references were taken with,
        except for bf16/fp16 on CPU, where plain matrix products (`eager`) run it: there the fused kernel is several
        times slower in half precision, most of an answer's decoding time (each step attends from one token to
        all passages' tokens). Call it after moving the model to its device."""
        super().set_precision(precision)
        half_on_cpu = precision in ("bf16", "fp16") and self.device.type == "cpu"
        self.model.set_attn_implementation("eager" if half_on_cpu else "sdpa")

    @property
    def pad_token_id(self) -> int:
        return _one_token_id(self.model.config.pad_token_id, "pad_token_id")

    @property
    def eos_token_id(self) -> int:
        return _one_token_id(self.model.config.eos_token_id, "eos_token_id")

    @property
    def decoder_start_token_id(self) -> int:
        return self.model.config.decoder_start_token_id

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> FiDEncoding:
        """Encode [B, n, L] passages independently and concatenate them per sample → [B, n·L, D]."""
        if input_ids.dim() != 3 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"expected input_ids and attention_mask of the same shape [batch, passages, length], got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        batch, passages, length = input_ids.shape
        hidden = self.model.encoder(
            input_ids=input_ids.reshape(batch * passages, length),
            attention_mask=attention_mask.reshape(batch * passages, length),
        ).last_hidden_state
        return FiDEncoding(
            hidden.reshape(batch, passages * length, hidden.shape[-1]),
            attention_mask.reshape(batch, passages * length),
            passages,
        )

    def logits(
        self,
        encoding: FiDEncoding,
        decoder_input_ids: torch.Tensor,
        cache: EncoderDecoderCache | None = None,
        weights: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """LM logits [B, T, vocab] of the decoder fed `decoder_input_ids` (teacher forcing).

        With a `cache`, `decoder_input_ids` are only the tokens after those already in it; the cache is extended.
        `weights` stand in for the model's own of those names (`autocast_weights`).
        """
        inputs = {
            "encoder_outputs": BaseModelOutput(last_hidden_state=encoding.last_hidden_state),
            "attention_mask": encoding.attention_mask,
            "decoder_input_ids": decoder_input_ids,
            "cache": cache,
            "use_cache": cache is not None,
        }
        # Untied: the LM head's cast of the shared matrix must not reach the embedding, which reads float32.
        return torch.func.functional_call(self.model, weights or {}, (), inputs, tie_weights=False).logits

    def answer_log_prob(self, encoding: FiDEncoding, answer_ids: torch.Tensor) -> torch.Tensor:
        """Log-probability [B] of each sample's answer given its passages.

        `answer_ids` [B, T] are the answer tokens after the decoder start token — as `generate(...)[:, 1:]` gives
        them: ending in eos unless cut at the length limit, padded with the pad token (which counts nothing).
        """
        return self._sequence_log_prob(self.logits(encoding, self._teacher_forced(answer_ids)), answer_ids)

    def leave_one_out_log_probs(
        self, encoding: FiDEncoding, answer_ids: torch.Tensor, chunk: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of one sample's answer with all its n passages [1], and with each left out in turn [n].

        The second equals `answer_log_prob(encoding.without_passage(i), answer_ids)` for every i, computed without
        building those encodings: leaving a passage out of the decoder's cross-attention is giving its keys zero
        weight (nothing else in the decoder reads the encoder). The cross-attention keys and values of the real
        (unpadded) tokens are projected once and shared by all removals (`_log_probs_without`), `chunk` removals
        per decoder pass (by default as many as make about `_ROWS_PER_PASS` answer tokens, which bounds the memory
        of the LM head's log-softmax). Both results come from that one computation, so their differences carry no
        rounding from two implementations.
        """
        if encoding.last_hidden_state.shape[0] != 1 or answer_ids.shape[0] != 1:
            raise ValueError("leave-one-out is computed for one sample at a time")
        if encoding.num_passages < 2:
            raise ValueError("cannot leave out the only passage")
        # Padding after the answer counts nothing, and no earlier position attends to it: it is not computed.
        counted = (answer_ids[0] != self.pad_token_id).nonzero()
        answer_ids = answer_ids[:, : int(counted[-1]) + 1 if len(counted) else 1]
        real = encoding.attention_mask[0].bool()
        passage_of_key = (torch.arange(len(real), device=real.device) // encoding.passage_length)[real]
        hidden = encoding.last_hidden_state[:, real]
        head_dim = self.model.config.d_kv
        attentions = [cross_layer.EncDecAttention for _, cross_layer, _ in _decoder_blocks(self.model)]
        cross = [(_heads(hidden, head_dim, one.k), _heads(hidden, head_dim, one.v)) for one in attentions]
        decoder_ids = self._teacher_forced(answer_ids)
        chunk = chunk or max(1, _ROWS_PER_PASS // answer_ids.shape[1])
        # Removal −1 leaves nothing out: the log-probability with all passages.
        removals = torch.arange(-1, encoding.num_passages, device=answer_ids.device)
        log_probs = torch.cat(
            [
                self._log_probs_without(cross, passage_of_key, decoder_ids, answer_ids, removals[first : first + chunk])
                for first in range(0, len(removals), chunk)
            ]
        )
        return log_probs[:1], log_probs[1:]

    def _log_probs_without(
        self,
        cross: list[tuple[torch.Tensor, torch.Tensor]],
        passage_of_key: torch.Tensor,
        decoder_ids: torch.Tensor,
        answer_ids: torch.Tensor,
        removals: torch.Tensor,
    ) -> torch.Tensor:
        """Log-probability [R] of the answer with passage `removals[r]` left out of the cross-attention.

        The T5 decoder, teacher forced, for R rows at once: its own modules (norms, projections, feed-forward, LM
        head) with the attention written here. `cross` holds every layer's keys and values [1, heads, S, d] of the
        S real encoder tokens, `passage_of_key` [S] the passage each belongs to. The cross-attention stacks the R
        rows' queries into one sequence [1, heads, R·T, d] over those shared keys, each query masked from its
        row's passage: one attention call per layer, where a batch of R would copy the keys R times or run R
        small products, either of which costs CPUs more than the arithmetic.
        """
        decoder, blocks = self.model.decoder, _decoder_blocks(self.model)
        rows, length, head_dim = len(removals), decoder_ids.shape[1], self.model.config.d_kv
        x = decoder.embed_tokens(decoder_ids).expand(rows, -1, -1)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        self_bias = blocks[0][0].SelfAttention.compute_bias(length, length).masked_fill(~causal, -torch.inf)
        # Masked keys get a weight of exactly zero: the attention of the encoding without that passage.
        kept = (passage_of_key[None] != removals[:, None]).repeat_interleave(length, dim=0)
        for (self_layer, cross_layer, feed_forward), (keys, values) in zip(blocks, cross, strict=True):
            attention, normed = self_layer.SelfAttention, self_layer.layer_norm(x)
            queries, own_keys, own_values = (
                _heads(normed, head_dim, one) for one in (attention.q, attention.k, attention.v)
            )
            x = x + attention.o(_attend(queries, own_keys, own_values, self_bias))
            attention = cross_layer.EncDecAttention
            queries = _heads(cross_layer.layer_norm(x).flatten(0, 1)[None], head_dim, attention.q)
            x = x + attention.o(_attend(queries, keys, values, kept).unflatten(1, (rows, length))[0])
            x = feed_forward(x)
        x = decoder.final_layer_norm(x)
        if self.model.config.scale_decoder_outputs:
            x = x * self.model.model_dim**-0.5
        return self._sequence_log_prob(self.model.lm_head(x), answer_ids.expand(rows, -1))

    def _teacher_forced(self, answer_ids: torch.Tensor) -> torch.Tensor:
        """Decoder inputs that predict `answer_ids`: the start token, then the answer without its last token."""
        start = torch.full_like(answer_ids[:, :1], self.decoder_start_token_id)
        return torch.cat([start, answer_ids[:, :-1]], dim=1)

    def _sequence_log_prob(self, logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
        """Summed log-probability [B] of `answer_ids` [B, T] under teacher-forced `logits` [B, T, vocab].

        Float32 under any precision: an explanation subtracts two such sums that differ by little, which bfloat16's
        three significant digits would drown.
        """
        token_log_probs = logits.float().log_softmax(-1).gather(-1, answer_ids[..., None])[..., 0]
        return (token_log_probs * (answer_ids != self.pad_token_id)).sum(dim=1)

    @torch.no_grad()
    def generate(
        self,
        encoding: FiDEncoding,
        num_beams: int = 1,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        min_new_tokens: int = 0,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Answer ids [B, 1 + T]: the decoder start token, the answer, eos, then padding.

        `min_new_tokens` forbids eos until that many tokens were generated. Beam search keeps `num_beams`
        hypotheses and returns the best finished one, scored by its summed log-probability / length**penalty.
        """
        if max_new_tokens < 1 or min_new_tokens < 0 or num_beams < 1:
            raise ValueError("need max_new_tokens ≥ 1, min_new_tokens ≥ 0 and num_beams ≥ 1")
        if num_beams == 1:
            return self._greedy(encoding, max_new_tokens, min_new_tokens)
        return self._beam_search(encoding, num_beams, max_new_tokens, min_new_tokens, length_penalty)

    def _new_cache(self) -> EncoderDecoderCache:
        config = self.model.config
        return EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))

    def _next_scores(
        self,
        encoding: FiDEncoding,
        ids: torch.Tensor,
        cache: EncoderDecoderCache,
        weights: dict[str, torch.Tensor],
        min_new_tokens: int,
        log_probs: bool,
    ) -> torch.Tensor:
        """Float scores [N, vocab] of the token after `ids` [N, T] (the cache holds all but the last token).

        Logits for greedy decoding, log-probabilities for beam search. While fewer than `min_new_tokens` follow the
        start token, eos is masked — after the log-softmax, so the other tokens keep their unrenormalised
        log-probabilities, as in transformers. Float32 under any precision: beam search sums these scores over
        the steps and ranks hypotheses by them, and bfloat16 would tie or swap close ones.
        """
        scores = self.logits(encoding, ids[:, -1:], cache, weights)[:, -1].float()
        if log_probs:
            scores = scores.log_softmax(-1)
        if ids.shape[1] <= min_new_tokens:
            scores[:, self.eos_token_id] = -float("inf")
        return scores

    def _decoding_weights(self) -> dict[str, torch.Tensor]:
        """`autocast_weights`, plus the LM head's matrix cast once: UnifiedQA ties it to the embedding, which
        `autocast_weights` leaves alone, so autocast would otherwise cast 32128 × 768 values at every step (a fifth
        of a greedy answer step on CPU)."""
        weights = autocast_weights(self.model)
        if weights and self.model.config.tie_word_embeddings:
            weights["lm_head.weight"] = self.model.lm_head.weight.to(next(iter(weights.values())).dtype)
        return weights

    def _start_ids(self, encoding: FiDEncoding) -> torch.Tensor:
        batch = encoding.last_hidden_state.shape[0]
        device = encoding.last_hidden_state.device
        return torch.full((batch, 1), self.decoder_start_token_id, dtype=torch.long, device=device)

    def _greedy(self, encoding: FiDEncoding, max_new_tokens: int, min_new_tokens: int) -> torch.Tensor:
        cache, weights = self._new_cache(), self._decoding_weights()

        def next_token(ids: torch.Tensor) -> torch.Tensor:
            return self._next_scores(encoding, ids, cache, weights, min_new_tokens, log_probs=False).argmax(-1)

        start = self._start_ids(encoding)
        return token_by_token(next_token, start, max_new_tokens + 1, self.eos_token_id, self.pad_token_id)

    def _beam_search(
        self, encoding: FiDEncoding, num_beams: int, max_new_tokens: int, min_new_tokens: int, length_penalty: float
    ) -> torch.Tensor:
        beams = FiDEncoding(
            encoding.last_hidden_state.repeat_interleave(num_beams, dim=0),
            encoding.attention_mask.repeat_interleave(num_beams, dim=0),
            encoding.num_passages,
        )
        cache, weights = self._new_cache(), self._decoding_weights()

        def next_log_probs(ids: torch.Tensor) -> torch.Tensor:
            return self._next_scores(beams, ids, cache, weights, min_new_tokens, log_probs=True)

        return beam_search(
            next_log_probs,
            cast(Reorder, cache.reorder_cache),  # typed for the legacy `torch.LongTensor`, which is any int64 tensor
            self._start_ids(encoding),
            num_beams,
            max_new_tokens + 1,
            self.eos_token_id,
            self.pad_token_id,
            length_penalty,
        )


def _one_token_id(value: int | list[int] | None, name: str) -> int:
    """A special token's id from the T5 config, which may type it as absent or as a list; ours is one id."""
    if not isinstance(value, int):
        raise ValueError(f"the T5 config's {name} must be one token id, got {value!r}")
    return value


def _decoder_blocks(
    model: T5ForConditionalGeneration,
) -> list[tuple[T5LayerSelfAttention, T5LayerCrossAttention, T5LayerFF]]:
    """The T5 decoder's blocks as their sublayers: self-attention, cross-attention, feed-forward."""
    sublayers = tuple[T5LayerSelfAttention, T5LayerCrossAttention, T5LayerFF]
    return [cast(sublayers, tuple(cast(nn.ModuleList, block.layer))) for block in model.decoder.block]


def _feed_forward(self: T5DenseActDense, hidden: torch.Tensor) -> torch.Tensor:
    """T5's feed-forward, without the cast transformers puts before `wo`: to the weight's dtype, float32 here. Under
    autocast that turns the bf16 activations (100 passages × 60 tokens × 3072) to float32 only for autocast to turn
    them back, two full copies per layer and most of the casting in UnifiedQA's encoder on CPU. Without autocast
    the dtypes agree and nothing changes."""
    return self.wo(self.dropout(self.act(self.wi(hidden))))


def _heads(x: torch.Tensor, head_dim: int, projection: nn.Module) -> torch.Tensor:
    """`x` [B, T, D] through an attention `projection`, in head layout [B, heads, T, head_dim]."""
    return projection(x).unflatten(-1, (-1, head_dim)).transpose(1, 2)


def _attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """T5 attention (no 1/sqrt(d) scaling: T5 folds it into its init) [B, T, heads·d] of queries [B, heads, T, d]
    over keys and values [B, heads, S, d]; `mask` is additive or boolean (True: attend), broadcast to the scores."""
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=1.0)
    return out.transpose(1, 2).flatten(2)
