"""UnifiedQA-v2 (T5) as a Fusion-in-Decoder question answerer: PNP-VQA's last stage.

Fusion-in-Decoder: every passage (the question followed by a few captions) goes through the T5 encoder on its
own — relative positions restart in each passage and no passage attends to another — and the decoder
cross-attends over all passages concatenated. Evidence is fused only where the answer is written.

Because the encoder never mixes passages, an encoding stays valid when a passage is dropped from it
(`FiDEncoding.without_passage`): measuring what each caption contributes to an answer costs one decoder pass per
passage, not a fresh encoding of the others.

Decoding is written here instead of calling transformers' `generate`: transformers 5 rewrote beam search (it scores
hypotheses cut at the length limit by another length and pads finished rows with eos), which changes answers, and
the numbers must be those of LAVIS's `PNPUnifiedQAv2FiD`, run under transformers 4.33. Both searches below follow that
version step by step; lengths are counted as new tokens after the decoder start token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

# UnifiedQA-v2 sizes (LAVIS lavis/configs/models/pnp-vqa/unifiedqav2_*_config.json = t5-base / t5-large / t5-3b).
_SIZES: dict[str, dict[str, int]] = {
    "base": {"d_model": 768, "d_ff": 3072, "d_kv": 64, "num_layers": 12, "num_heads": 12},
    "large": {"d_model": 1024, "d_ff": 4096, "d_kv": 64, "num_layers": 24, "num_heads": 16},
    "3b": {"d_model": 1024, "d_ff": 16384, "d_kv": 128, "num_layers": 24, "num_heads": 32},
}
_COMMON: dict[str, Any] = {
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

PRESETS = tuple(_SIZES)

# LAVIS's PNP-VQA answers with `max_length=20`, which counts the decoder start token.
DEFAULT_MAX_NEW_TOKENS = 19


def t5_config(preset: str, **overrides: Any) -> T5Config:
    """The `T5Config` of a UnifiedQA-v2 size (`base`, `large`, `3b`), with `overrides` applied on top."""
    if preset not in _SIZES:
        raise ValueError(f"unknown UnifiedQA-v2 size {preset!r}; known: {', '.join(PRESETS)}")
    return T5Config(**(_COMMON | _SIZES[preset] | overrides))


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


class FusionInDecoderQA(nn.Module):
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
        return self.model.config.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self.model.config.eos_token_id

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
        start = torch.full_like(answer_ids[:, :1], self.decoder_start_token_id)
        logits = self.logits(encoding, torch.cat([start, answer_ids[:, :-1]], dim=1))
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
        tokens: torch.Tensor,
        cache: EncoderDecoderCache,
        log_probs: bool,
        eos_allowed: bool,
    ) -> torch.Tensor:
        """Float scores [N, vocab] of the token after `tokens` [N, 1]: logits, or log-probabilities for beam search.

        A forbidden eos is masked after the log-softmax, so the other tokens keep their unrenormalised
        log-probabilities, as in transformers.
        """
        scores = self.logits(encoding, tokens, cache)[:, -1].float()
        if log_probs:
            scores = scores.log_softmax(-1)
        if not eos_allowed:
            scores[:, self.eos_token_id] = -float("inf")
        return scores

    def _greedy(self, encoding: FiDEncoding, max_new_tokens: int, min_new_tokens: int) -> torch.Tensor:
        batch = encoding.last_hidden_state.shape[0]
        device = encoding.last_hidden_state.device
        ids = torch.full((batch, 1), self.decoder_start_token_id, dtype=torch.long, device=device)
        running = torch.ones(batch, dtype=torch.bool, device=device)
        cache = self._new_cache()
        for step in range(max_new_tokens):
            scores = self._next_scores(
                encoding, ids[:, -1:], cache, log_probs=False, eos_allowed=step >= min_new_tokens
            )
            token = scores.argmax(-1)
            # Rows that already ended keep emitting padding, so the batch stays rectangular.
            token = torch.where(running, token, self.pad_token_id)
            ids = torch.cat([ids, token[:, None]], dim=1)
            running &= token != self.eos_token_id
            if not running.any():
                break
        return ids

    def _beam_search(
        self, encoding: FiDEncoding, num_beams: int, max_new_tokens: int, min_new_tokens: int, length_penalty: float
    ) -> torch.Tensor:
        batch = encoding.last_hidden_state.shape[0]
        device = encoding.last_hidden_state.device
        beams = FiDEncoding(
            encoding.last_hidden_state.repeat_interleave(num_beams, dim=0),
            encoding.attention_mask.repeat_interleave(num_beams, dim=0),
            encoding.num_passages,
        )
        ids = torch.full((batch * num_beams, 1), self.decoder_start_token_id, dtype=torch.long, device=device)
        # Only the first beam of each sample is live at the start, so the beams do not all pick the same token.
        scores = torch.zeros(batch, num_beams, device=device)
        scores[:, 1:] = -1e9
        finished = [_FinishedHypotheses(num_beams, length_penalty) for _ in range(batch)]
        done = [False] * batch
        cache = self._new_cache()
        for step in range(max_new_tokens):
            log_probs = self._next_scores(beams, ids[:, -1:], cache, log_probs=True, eos_allowed=step >= min_new_tokens)
            vocab = log_probs.shape[-1]
            totals = (log_probs + scores.reshape(-1, 1)).reshape(batch, num_beams * vocab)
            # Twice the beam count, so that enough candidates survive when some of them end in eos.
            top_scores, top_index = totals.topk(2 * num_beams, dim=1)
            picked: list[tuple[int, int, float]] = []
            for sample in range(batch):
                first_row = sample * num_beams
                if done[sample]:  # a finished sample idles on padding until the others end
                    picked += [(first_row, self.pad_token_id, 0.0)] * num_beams
                    continue
                candidates = [
                    (score, first_row + index // vocab, index % vocab)
                    for score, index in zip(top_scores[sample].tolist(), top_index[sample].tolist(), strict=True)
                ]
                picked += self._pick_beams(candidates, ids, finished[sample], num_beams)
                done[sample] = finished[sample].is_done(top_scores[sample, 0].item(), ids.shape[1])
            rows = torch.tensor([row for row, _, _ in picked], device=device)
            tokens = torch.tensor([[token] for _, token, _ in picked], device=device)
            scores = torch.tensor([score for _, _, score in picked], device=device).reshape(batch, num_beams)
            ids = torch.cat([ids[rows], tokens], dim=1)
            cache.reorder_cache(rows)
            if all(done):
                break
        for sample in range(batch):
            if not done[sample]:  # out of length: the open beams compete with the finished ones as they are
                for beam in range(num_beams):
                    finished[sample].add(ids[sample * num_beams + beam].tolist(), scores[sample, beam].item())
        return self._pad_answers([hypotheses.best() for hypotheses in finished], max_new_tokens + 1, device)

    def _pick_beams(
        self,
        candidates: list[tuple[float, int, int]],
        ids: torch.Tensor,
        finished: _FinishedHypotheses,
        num_beams: int,
    ) -> list[tuple[int, int, float]]:
        """The next beams (source row, token, score) of one sample from its ranked (score, row, token) candidates.

        A candidate ending in eos becomes a finished hypothesis instead, if it ranks among the top `num_beams`.
        """
        picked = []
        for rank, (score, row, token) in enumerate(candidates):
            if token != self.eos_token_id:
                picked.append((row, token, score))
                if len(picked) == num_beams:
                    break
            elif rank < num_beams:
                finished.add(ids[row].tolist(), score)
        return picked

    def _pad_answers(self, answers: list[list[int]], max_length: int, device: torch.device) -> torch.Tensor:
        """Stack hypotheses (start token, answer, no eos) into [B, T], eos appended where the width allows."""
        width = min(max(len(answer) for answer in answers) + 1, max_length)
        out = torch.full((len(answers), width), self.pad_token_id, dtype=torch.long, device=device)
        for row, answer in enumerate(answers):
            out[row, : len(answer)] = torch.tensor(answer, device=device)
            if len(answer) < width:
                out[row, len(answer)] = self.eos_token_id
        return out


class _FinishedHypotheses:
    """The best `size` finished hypotheses of one sample, kept and ranked as transformers 4.33 does.

    A hypothesis is its tokens without the closing eos (the start token included), scored by its summed
    log-probability / len(tokens)**length_penalty.
    """

    def __init__(self, size: int, length_penalty: float) -> None:
        self.size = size
        self.length_penalty = length_penalty
        self.items: list[tuple[float, list[int]]] = []
        self.worst = 1e9

    def add(self, tokens: list[int], log_prob: float) -> None:
        score = log_prob / len(tokens) ** self.length_penalty
        if len(self.items) < self.size or score > self.worst:
            self.items.append((score, tokens))
            if len(self.items) > self.size:
                ranked = sorted((item_score, index) for index, (item_score, _) in enumerate(self.items))
                del self.items[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_log_prob: float, length: int) -> bool:
        """Full, and not even the best candidate of this step, scored at the current length, would get in."""
        return len(self.items) >= self.size and self.worst >= best_log_prob / length**self.length_penalty

    def best(self) -> list[int]:
        # Stable sort, last wins: on a tie the hypothesis added later is returned, as in transformers.
        return sorted(self.items, key=lambda item: item[0])[-1][1]
