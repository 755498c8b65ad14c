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
from typing import Any, cast

import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from fusioncam.models.architectures import architecture
from fusioncam.models.decoding import Reorder, beam_search, token_by_token
from fusioncam.models.layers import Model

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

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> FusionInDecoderQA:
        """An untrained model of a UnifiedQA-v2 size (build under `torch.device("meta")` to skip the init)."""
        return cls(T5ForConditionalGeneration(t5_config(preset, **overrides)))

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
        self, encoding: FiDEncoding, decoder_input_ids: torch.Tensor, cache: EncoderDecoderCache | None = None
    ) -> torch.Tensor:
        """LM logits [B, T, vocab] of the decoder fed `decoder_input_ids` (teacher forcing).

        With a `cache`, `decoder_input_ids` are only the tokens after those already in it; the cache is extended.
        """
        return self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoding.last_hidden_state),
            attention_mask=encoding.attention_mask,
            decoder_input_ids=decoder_input_ids,
            cache=cache,
            use_cache=cache is not None,
        ).logits

    def answer_log_prob(self, encoding: FiDEncoding, answer_ids: torch.Tensor) -> torch.Tensor:
        """Log-probability [B] of each sample's answer given its passages.

        `answer_ids` [B, T] are the answer tokens after the decoder start token — as `generate(...)[:, 1:]` gives
        them: ending in eos unless cut at the length limit, padded with the pad token (which counts nothing).
        """
        return self._sequence_log_prob(self.logits(encoding, self._teacher_forced(answer_ids)), answer_ids)

    def leave_one_out_log_probs(
        self, encoding: FiDEncoding, answer_ids: torch.Tensor, chunk: int = 16
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of one sample's answer with all its n passages [1], and with each left out in turn [n].

        The second equals `answer_log_prob(encoding.without_passage(i), answer_ids)` for every i, computed without
        building those encodings: leaving a passage out of the decoder's cross-attention is masking its tokens
        (they get zero weight, and nothing else in the decoder reads the encoder). The cross-attention keys and
        values are projected once, by the pass with all passages, and shared as stride-0 views by the `chunk`
        removals that run as one batch: copying them per removal (100 passages × every layer) cost CPUs more than
        all the attention itself. Memory grows with `chunk` only through the masks and attention scores.
        """
        if encoding.last_hidden_state.shape[0] != 1 or answer_ids.shape[0] != 1:
            raise ValueError("leave-one-out is computed for one sample at a time")
        if encoding.num_passages < 2:
            raise ValueError("cannot leave out the only passage")
        decoder_ids = self._teacher_forced(answer_ids)
        full = self._new_cache()
        with_all = self._sequence_log_prob(self.logits(encoding, decoder_ids, full), answer_ids)
        cross = [_keys_values(layer) for layer in full.cross_attention_cache.layers]
        positions = torch.arange(encoding.attention_mask.shape[1], device=answer_ids.device)
        passage_of_token = positions // encoding.passage_length
        without = []
        for first in range(0, encoding.num_passages, chunk):
            left_out = torch.arange(first, min(first + chunk, encoding.num_passages), device=answer_ids.device)
            batch = len(left_out)
            mask = encoding.attention_mask * (passage_of_token[None] != left_out[:, None])
            shared = FiDEncoding(encoding.last_hidden_state.expand(batch, -1, -1), mask, encoding.num_passages)
            logits = self.logits(shared, decoder_ids.expand(batch, -1), self._shared_cross_cache(cross, batch))
            without.append(self._sequence_log_prob(logits, answer_ids.expand(batch, -1)))
        return with_all, torch.cat(without)

    def _teacher_forced(self, answer_ids: torch.Tensor) -> torch.Tensor:
        """Decoder inputs that predict `answer_ids`: the start token, then the answer without its last token."""
        start = torch.full_like(answer_ids[:, :1], self.decoder_start_token_id)
        return torch.cat([start, answer_ids[:, :-1]], dim=1)

    def _sequence_log_prob(self, logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
        """Summed log-probability [B] of `answer_ids` [B, T] under teacher-forced `logits` [B, T, vocab]."""
        token_log_probs = logits.float().log_softmax(-1).gather(-1, answer_ids[..., None])[..., 0]
        return (token_log_probs * (answer_ids != self.pad_token_id)).sum(dim=1)

    def _shared_cross_cache(self, cross: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> EncoderDecoderCache:
        """A fresh cache whose cross-attention holds `cross`'s [1, …] keys and values as [batch, …] views."""
        cache = self._new_cache()
        for index, (keys, values) in enumerate(cross):
            layer = _dynamic_layer(cache.cross_attention_cache.layers[index])
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1)
            cache.is_updated[index] = True
        return cache

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
        self, encoding: FiDEncoding, ids: torch.Tensor, cache: EncoderDecoderCache, min_new_tokens: int, log_probs: bool
    ) -> torch.Tensor:
        """Float scores [N, vocab] of the token after `ids` [N, T] (the cache holds all but the last token).

        Logits for greedy decoding, log-probabilities for beam search. While fewer than `min_new_tokens` follow the
        start token, eos is masked — after the log-softmax, so the other tokens keep their unrenormalised
        log-probabilities, as in transformers.
        """
        scores = self.logits(encoding, ids[:, -1:], cache)[:, -1].float()
        if log_probs:
            scores = scores.log_softmax(-1)
        if ids.shape[1] <= min_new_tokens:
            scores[:, self.eos_token_id] = -float("inf")
        return scores

    def _start_ids(self, encoding: FiDEncoding) -> torch.Tensor:
        batch = encoding.last_hidden_state.shape[0]
        device = encoding.last_hidden_state.device
        return torch.full((batch, 1), self.decoder_start_token_id, dtype=torch.long, device=device)

    def _greedy(self, encoding: FiDEncoding, max_new_tokens: int, min_new_tokens: int) -> torch.Tensor:
        cache = self._new_cache()

        def next_token(ids: torch.Tensor) -> torch.Tensor:
            return self._next_scores(encoding, ids, cache, min_new_tokens, log_probs=False).argmax(-1)

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
        cache = self._new_cache()

        def next_log_probs(ids: torch.Tensor) -> torch.Tensor:
            return self._next_scores(beams, ids, cache, min_new_tokens, log_probs=True)

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


def _dynamic_layer(layer: object) -> DynamicLayer:
    """A layer of our caches (`DynamicCache`s; `Cache` types its layers as any kind of layer)."""
    if not isinstance(layer, DynamicLayer):
        raise TypeError(f"expected a DynamicLayer in the decoder cache, got {type(layer).__name__}")
    return layer


def _keys_values(layer: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values a cache layer holds after a decoder pass."""
    dynamic = _dynamic_layer(layer)
    if dynamic.keys is None or dynamic.values is None:
        raise RuntimeError("a cross-attention cache layer is empty after the decoder pass")
    return dynamic.keys, dynamic.values
