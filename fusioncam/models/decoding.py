"""Caption decoding for BLIP's text decoder: greedy, beam search, and top-k / top-p sampling.

The rules follow what LAVIS gets from `transformers.generate` (4.26–4.33), so that the same weights give the same
captions: `max_length` and `min_length` count the prompt; below `min_length` the end token is forbidden; the
repetition penalty divides positive and multiplies negative scores of tokens already in the sequence; a finished
row is padded with `pad_id` while the others go on. Unlike LAVIS (whose decoder never receives its cache under
transformers ≥ 4.27 and re-runs the whole prefix every step) the decoder keeps a key/value cache, which gives the
same tokens up to float rounding.
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
    """Continue `prompt_ids` [B, P] for each image; returns ids [B, ≤ max_length] including the prompt."""
    if config.strategy == "beam":
        return _beam_search(step, cache, image_embeds, prompt_ids, eos_id, pad_id, config)
    sequences = prompt_ids
    mask = torch.ones_like(sequences)
    unfinished = torch.ones(len(sequences), dtype=torch.bool, device=sequences.device)
    new = sequences
    while sequences.shape[1] < config.max_length:
        logits = step(new, mask, image_embeds, cache)[:, -1].float()
        scores = adjust_scores(logits, sequences, config, eos_id)
        if config.strategy == "sample":
            scores = filter_top_k_top_p(scores / config.temperature, config.top_k, config.top_p)
            tokens = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
        else:
            tokens = scores.argmax(-1)
        tokens = torch.where(unfinished, tokens, torch.full_like(tokens, pad_id))
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(tokens[:, None])], dim=1)
        new = tokens[:, None]
        unfinished &= tokens != eos_id
        if not unfinished.any():
            break
    return sequences


def _beam_search(
    step: StepFn,
    cache: DecoderCache,
    image_embeds: torch.Tensor,
    prompt_ids: torch.Tensor,
    eos_id: int,
    pad_id: int,
    config: DecodingConfig,
) -> torch.Tensor:
    """Beam search with length-normalised scores (sum of log-probabilities / length ** length_penalty).

    A hypothesis is finished when it emits the end token; a row stops when it has `num_beams` finished
    hypotheses and no running beam can beat the worst of them; at `max_length` running beams are finished as
    they are. The best finished hypothesis of each row is returned.
    """
    batch, beams = len(prompt_ids), config.num_beams
    device = prompt_ids.device
    sequences = prompt_ids.repeat_interleave(beams, dim=0)
    embeds = image_embeds.repeat_interleave(beams, dim=0)
    # Only the first beam of each row is live at the start, so that the beams do not all pick the same token.
    beam_scores = torch.zeros(batch, beams, device=device)
    beam_scores[:, 1:] = -1e9
    beam_scores = beam_scores.view(-1)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(batch)]
    done = [False] * batch
    new = sequences
    mask = torch.ones_like(sequences)

    def normalised(score: float, length: int) -> float:
        return score / length**config.length_penalty

    while sequences.shape[1] < config.max_length:
        logits = step(new, mask, embeds, cache)[:, -1].float()
        log_probs = adjust_scores(logits.log_softmax(-1), sequences, config, eos_id)
        vocab = log_probs.shape[-1]
        candidates = (log_probs + beam_scores[:, None]).view(batch, beams * vocab)
        top_scores, top_index = candidates.topk(2 * beams, dim=1)
        next_scores = torch.zeros(batch, beams, device=device)
        next_tokens = torch.full((batch, beams), pad_id, dtype=torch.long, device=device)
        next_origin = torch.zeros(batch, beams, dtype=torch.long, device=device)
        length = sequences.shape[1] + 1
        for row in range(batch):
            if done[row]:
                next_origin[row] = row * beams  # keep a dummy beam; its output is never used
                continue
            slot = 0
            for score, index in zip(top_scores[row].tolist(), top_index[row].tolist(), strict=True):
                origin, token = row * beams + index // vocab, index % vocab
                if token == eos_id:
                    hypothesis = torch.cat([sequences[origin], sequences.new_tensor([token])])
                    finished[row].append((normalised(score, length), hypothesis))
                    finished[row] = sorted(finished[row], key=lambda item: -item[0])[:beams]
                    continue
                next_scores[row, slot], next_tokens[row, slot], next_origin[row, slot] = score, token, origin
                slot += 1
                if slot == beams:
                    break
            best_running = normalised(next_scores[row].max().item(), length)
            done[row] = len(finished[row]) == beams and finished[row][-1][0] >= best_running
        origin = next_origin.view(-1)
        cache.reorder(origin)
        sequences = torch.cat([sequences[origin], next_tokens.view(-1, 1)], dim=1)
        mask = torch.cat([mask[origin], torch.ones_like(next_tokens.view(-1, 1))], dim=1)
        embeds = embeds[origin]
        beam_scores = next_scores.view(-1)
        new = next_tokens.view(-1, 1)
        if all(done):
            break
    for row in range(batch):
        if not done[row]:
            for beam in range(beams):
                index = row * beams + beam
                finished[row].append((normalised(beam_scores[index].item(), sequences.shape[1]), sequences[index]))
    best = [max(hypotheses, key=lambda item: item[0])[1] for hypotheses in finished]
    width = max(len(ids) for ids in best)
    out = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    for row, ids in enumerate(best):
        out[row, : len(ids)] = ids
    return out
