"""Token-by-token decoding: the search loops shared by BLIP's caption decoder and the T5 answerer, and BLIP's rules.

Both models must give the tokens their LAVIS originals got from `transformers.generate` 4.33, so the loops follow it:
`token_by_token` is its greedy / sampling loop (a finished row is padded with `pad_id` while the others go on) and
`beam_search` its `BeamSearchScorer`. The models only say how to score the next token — a step function over the
sequences so far — and keep their own caches.

For BLIP (`generate`): `max_length` and `min_length` count the prompt; below `min_length` the end token is
forbidden; the repetition penalty divides positive and multiplies negative scores of tokens already in the sequence.
Unlike LAVIS (whose decoder never receives its cache under transformers ≥ 4.27 and re-runs the whole prefix every
step) the decoder keeps a key/value cache, which gives the same tokens up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fusioncam.models.bert import DecoderCache

# step(new_ids [B, n], attention_mask [B, T], image_embeds, cache) -> logits [B, n, V]
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DecoderCache], torch.Tensor]


@dataclass(frozen=True)
class DecodingConfig:
    """How to pick tokens. `strategy`: "greedy", "beam" or "sample"."""

    strategy: str = "greedy"
    max_length: int = 20
    min_length: int = 5
    num_beams: int = 3
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam", "sample"):
            raise ValueError(f"strategy must be greedy, beam or sample, got {self.strategy!r}")
        if self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} exceeds max_length {self.max_length}")
        if not 0 < self.top_p <= 1 or self.top_k < 0 or self.temperature <= 0 or self.num_beams < 1:
            raise ValueError("need 0 < top_p <= 1, top_k >= 0, temperature > 0 and num_beams >= 1")


def adjust_scores(scores: torch.Tensor, sequences: torch.Tensor, config: DecodingConfig, eos_id: int) -> torch.Tensor:
    """Minimum length and repetition penalty, applied to next-token scores [B, V] of sequences [B, T]."""
    scores = scores.clone()
    if sequences.shape[1] < config.min_length:
        scores[:, eos_id] = -float("inf")
    if config.repetition_penalty != 1.0:
        seen = scores.gather(1, sequences)
        penalized = torch.where(seen < 0, seen * config.repetition_penalty, seen / config.repetition_penalty)
        scores.scatter_(1, sequences, penalized)
    return scores


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to −inf every logit outside the `top_k` best and outside the smallest set holding `top_p` of the mass."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        ascending, order = logits.sort(dim=-1)
        cumulative = ascending.softmax(-1).cumsum(-1)
        remove = cumulative <= 1 - top_p
        remove[..., -1] = False  # always keep the best token
        logits = logits.masked_fill(remove.scatter(-1, order, remove), -float("inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token per row [B] drawn from softmax(logits) restricted as `filter_top_k_top_p` does.

    With top-k the draw is made among the k best only: the same distribution (up to ties at the k-th score, which
    transformers keeps too), but `multinomial` runs over k entries instead of the whole vocabulary, which is most
    of the sampling cost for BLIP's 30k tokens.
    """
    if top_k > 0:
        logits, candidates = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
    probs = filter_top_k_top_p(logits, 0, top_p).softmax(-1)
    choice = torch.multinomial(probs, 1, generator=generator)
    return (candidates.gather(-1, choice) if top_k > 0 else choice)[:, 0]


def generate(
    step: StepFn,
    cache: DecoderCache,
    image_embeds: torch.Tensor,
    prompt_ids: torch.Tensor,
    eos_id: int,
    pad_id: int,
    config: DecodingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue `prompt_ids` [B, P] for each image; returns ids [B, ≤ max_length] including the prompt.

    Beam search with a single beam is greedy decoding, as transformers routes it.
    """

    def next_logits(sequences: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        new = sequences[:, cache.length :]  # the prompt on the first step, then the token just chosen
        return step(new, torch.ones_like(sequences), embeds, cache)[:, -1].float()

    if config.strategy == "beam" and config.num_beams > 1:
        beam_embeds = image_embeds.repeat_interleave(config.num_beams, dim=0)

        def next_log_probs(sequences: torch.Tensor) -> torch.Tensor:
            return adjust_scores(next_logits(sequences, beam_embeds).log_softmax(-1), sequences, config, eos_id)

        return beam_search(
            next_log_probs,
            cache.reorder,
            prompt_ids,
            config.num_beams,
            config.max_length,
            eos_id,
            pad_id,
            config.length_penalty,
        )

    def next_token(sequences: torch.Tensor) -> torch.Tensor:
        scores = adjust_scores(next_logits(sequences, image_embeds), sequences, config, eos_id)
        if config.strategy == "sample":
            return sample_tokens(scores / config.temperature, config.top_k, config.top_p, generator)
        return scores.argmax(-1)

    return token_by_token(next_token, prompt_ids, config.max_length, eos_id, pad_id)


def token_by_token(
    next_token: Callable[[torch.Tensor], torch.Tensor],
    start_ids: torch.Tensor,
    max_length: int,
    eos_id: int,
    pad_id: int,
) -> torch.Tensor:
    """Extend each row of `start_ids` [B, P] by the token `next_token(sequences [B, T])` [B] picks, up to `max_length`.

    Greedy decoding and sampling differ only in `next_token`. A row that has emitted `eos_id` gets `pad_id` from then
    on, so the batch stays rectangular; decoding stops as soon as every row has ended.
    """
    sequences = start_ids
    running = torch.ones(len(sequences), dtype=torch.bool, device=sequences.device)
    while sequences.shape[1] < max_length:
        tokens = torch.where(running, next_token(sequences), pad_id)
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        running &= tokens != eos_id
        if not running.any():
            break
    return sequences


def beam_search(
    next_log_probs: Callable[[torch.Tensor], torch.Tensor],
    reorder: Callable[[torch.Tensor], None],
    start_ids: torch.Tensor,
    num_beams: int,
    max_length: int,
    eos_id: int,
    pad_id: int,
    length_penalty: float = 1.0,
) -> torch.Tensor:
    """Beam search as transformers 4.33 runs it (`BeamSearchScorer`, `early_stopping=False`).

    `next_log_probs(sequences [B·K, T])` scores the next token of every beam [B·K, V]: the log-softmax of the logits,
    then whatever the caller adjusts (minimum length, repetition penalty — transformers applies its processors to
    the log-probabilities here). The K beams of sample b are rows b·K … b·K + K − 1, so the caller repeats per-sample
    context (image tokens, encoder states) with `repeat_interleave(K)`. After each step `reorder(rows [B·K])` must
    make the caller's cache follow the beams: row i now extends former row `rows[i]`, always a row of the same
    sample, so the per-sample context never needs reordering.

    The rules that decide which tokens come out: each step ranks the top 2K (token, beam) candidates by summed
    log-probability; a candidate ending in eos becomes a finished hypothesis only if it ranks among the top K, and
    the K best other candidates run on. Hypotheses are scored by their summed log-probability / length**penalty,
    where the length counts the start tokens but not the closing eos. A sample stops once it holds K finished
    hypotheses and the best candidate of the step, scored at the length the step reached, cannot beat the worst of
    them (4.26 scored it at the length before the step and stopped earlier; LAVIS pins 4.33); at `max_length` the
    running beams compete as they are.

    Returns [B, ≤ max_length]: each sample's best hypothesis, then eos where the width allows, then `pad_id`.
    """
    batch, device = len(start_ids), start_ids.device
    sequences = start_ids.repeat_interleave(num_beams, dim=0)
    # Only the first beam of each sample is live at the start, so that the beams do not all pick the same token.
    scores = torch.zeros(batch, num_beams, device=device)
    scores[:, 1:] = -1e9
    finished = [FinishedHypotheses(num_beams, length_penalty) for _ in range(batch)]
    done = [False] * batch
    while sequences.shape[1] < max_length:
        log_probs = next_log_probs(sequences)
        vocab = log_probs.shape[-1]
        totals = (log_probs + scores.reshape(-1, 1)).reshape(batch, num_beams * vocab)
        # Twice the beam count, so that enough candidates survive when some of them end in eos.
        top_scores, top_index = totals.topk(2 * num_beams, dim=1)
        picked: list[tuple[int, int, float]] = []
        for sample in range(batch):
            first_row = sample * num_beams
            if done[sample]:  # a finished sample idles on padding until the others end
                picked += [(first_row, pad_id, 0.0)] * num_beams
                continue
            candidates = [
                (score, first_row + index // vocab, index % vocab)
                for score, index in zip(top_scores[sample].tolist(), top_index[sample].tolist(), strict=True)
            ]
            picked += _pick_beams(candidates, sequences, finished[sample], num_beams, eos_id)
            done[sample] = finished[sample].is_done(top_scores[sample, 0].item(), sequences.shape[1] + 1)
        rows = torch.tensor([row for row, _, _ in picked], device=device)
        tokens = torch.tensor([[token] for _, token, _ in picked], device=device)
        scores = torch.tensor([score for _, _, score in picked], device=device).reshape(batch, num_beams)
        sequences = torch.cat([sequences[rows], tokens], dim=1)
        reorder(rows)
        if all(done):
            break
    for sample in range(batch):
        if not done[sample]:  # out of length: the open beams compete with the finished ones as they are
            for beam in range(num_beams):
                finished[sample].add(sequences[sample * num_beams + beam].tolist(), scores[sample, beam].item())
    return _pad_hypotheses([hypotheses.best() for hypotheses in finished], max_length, eos_id, pad_id, device)


def _pick_beams(
    candidates: list[tuple[float, int, int]],
    sequences: torch.Tensor,
    finished: FinishedHypotheses,
    num_beams: int,
    eos_id: int,
) -> list[tuple[int, int, float]]:
    """The next beams (source row, token, score) of one sample from its ranked (score, row, token) candidates.

    A candidate ending in eos becomes a finished hypothesis instead, if it ranks among the top `num_beams`.
    """
    picked = []
    for rank, (score, row, token) in enumerate(candidates):
        if token != eos_id:
            picked.append((row, token, score))
            if len(picked) == num_beams:
                break
        elif rank < num_beams:
            finished.add(sequences[row].tolist(), score)
    return picked


def _pad_hypotheses(
    hypotheses: list[list[int]], max_length: int, eos_id: int, pad_id: int, device: torch.device
) -> torch.Tensor:
    """Stack hypotheses (no closing eos) into [B, T], eos appended where the width allows, then padding.

    The width is one more than the longest hypothesis, capped at `max_length`: a hypothesis cut at the limit gets
    no eos.
    """
    width = min(max(len(tokens) for tokens in hypotheses) + 1, max_length)
    out = torch.full((len(hypotheses), width), pad_id, dtype=torch.long, device=device)
    for row, tokens in enumerate(hypotheses):
        out[row, : len(tokens)] = torch.tensor(tokens, device=device)
        if len(tokens) < width:
            out[row, len(tokens)] = eos_id
    return out


class FinishedHypotheses:
    """The best `size` finished hypotheses of one sample, kept and ranked as transformers 4.33 does.

    A hypothesis is its tokens without the closing eos (start tokens included), scored by its summed
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
        """Full, and not even the best candidate of this step, scored at the step's new `length`, would get in."""
        return len(self.items) >= self.size and self.worst >= best_log_prob / length**self.length_penalty

    def best(self) -> list[int]:
        # Stable sort, last wins: on a tie the hypothesis added later is returned, as in transformers.
        return sorted(self.items, key=lambda item: item[0])[-1][1]
