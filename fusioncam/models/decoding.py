"""Search loops that turn a next-token scorer into token ids: greedy, sampling and beam search, for any model.

A model takes part through one function from the sequences so far [N, T] to float scores of the next token
[N, vocab]; it keeps its own cache, which beam search tells it how to reorder. Prompts, caches and the meaning of
the special tokens stay with the model (`BlipCaption.generate`, `FusionInDecoderQA.generate`).

The captioner and the answerer must give the tokens that LAVIS got from `transformers.generate` under the version
it pins (4.33), so the selection rules are that version's, written here over batched tensors: lengths count every
token of the sequence, start tokens included; the minimum length forbids the end token; the repetition penalty
divides positive and multiplies negative scores of tokens already present; beam search ranks finished hypotheses
by summed log-probability / length**length_penalty. Later transformers releases changed several of these rules
(how a hypothesis is measured, when a sample stops), which is why the loops are ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# sequences so far [N, T] -> scores of the next token [N, vocab]
NextScores = Callable[[torch.Tensor], torch.Tensor]
# rows [N]: row i of the next step extends row rows[i] of this one
Reorder = Callable[[torch.Tensor], None]

# The starting score of the beams that must not be extended yet. The value is observable: their extensions still
# fill the 2K candidates, and can finish or run on when a step has fewer real ones. It is transformers' value.
_DEAD_BEAM = -1e9


@dataclass(frozen=True)
class DecodingConfig:
    """How to pick tokens. `strategy`: "greedy", "beam" or "sample"; lengths count the start tokens."""

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

    @property
    def rows_per_sample(self) -> int:
        """Rows the scorer sees for each sample: its beams, so per-sample context must be repeated this often."""
        return self.num_beams if self.strategy == "beam" else 1


def decode(
    next_logits: NextScores,
    reorder: Reorder,
    start_ids: torch.Tensor,
    eos_id: int,
    pad_id: int,
    config: DecodingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue `start_ids` [B, P] with the strategy `config` names; returns ids [B, ≤ max_length], start included.

    `next_logits` gives raw float logits of the next token; the minimum length and repetition penalty are applied
    here, to the log-probabilities in beam search and to the logits otherwise (where transformers applies them).
    Beam search with one beam is greedy decoding, as transformers routes it.
    """
    if config.strategy == "beam" and config.num_beams > 1:

        def next_log_probs(sequences: torch.Tensor) -> torch.Tensor:
            return adjust_scores(next_logits(sequences).log_softmax(-1), sequences, config, eos_id)

        beams, limit = config.num_beams, config.max_length
        return beam_search(next_log_probs, reorder, start_ids, beams, limit, eos_id, pad_id, config.length_penalty)

    def next_token(sequences: torch.Tensor) -> torch.Tensor:
        scores = adjust_scores(next_logits(sequences), sequences, config, eos_id)
        if config.strategy == "sample":
            # Dividing by a temperature of 1 changes no score and costs a pass over [B, vocab] every step.
            scaled = scores if config.temperature == 1.0 else scores / config.temperature
            return sample_tokens(scaled, config.top_k, config.top_p, generator)
        return scores.argmax(-1)

    return token_by_token(next_token, start_ids, config.max_length, eos_id, pad_id)


def adjust_scores(scores: torch.Tensor, sequences: torch.Tensor, config: DecodingConfig, eos_id: int) -> torch.Tensor:
    """Next-token scores [B, V] of `sequences` [B, T] with the minimum length and the repetition penalty applied.

    The penalty pushes every token already present towards less likely whatever the sign of its score: a positive
    score shrinks, a negative one grows in magnitude. Each token counts once, however often it occurred.
    """
    if sequences.shape[1] < config.min_length:
        scores = scores.index_fill(1, torch.tensor([eos_id], device=scores.device), -float("inf"))
    if config.repetition_penalty == 1.0:
        return scores
    present = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, sequences, True)
    penalised = torch.where(scores > 0, scores / config.repetition_penalty, scores * config.repetition_penalty)
    return torch.where(present, penalised, scores)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to −inf every logit outside the `top_k` best and outside the smallest set holding `top_p` of the mass.

    A logit tied with the k-th best stays in. `top_k=0` and `top_p=1` switch the respective filter off.
    """
    outside = torch.zeros_like(logits, dtype=torch.bool)
    if top_k > 0:
        kth_best = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        outside |= logits < kth_best
    if top_p < 1.0:
        outside |= _outside_nucleus(logits.masked_fill(outside, -float("inf")), top_p)
    return logits.masked_fill(outside, -float("inf"))


def _outside_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """True for the tokens beyond the nucleus: walking from the most probable token down, a token belongs to the
    nucleus while the tokens above it hold less than `top_p` of the probability. The best token always belongs.

    Of equally probable tokens at the edge the lower id goes in first (transformers leaves that to an unstable sort).
    """
    probs, order = logits.softmax(-1).sort(dim=-1, descending=True, stable=True)
    mass_above = probs.cumsum(-1) - probs
    return torch.zeros_like(order, dtype=torch.bool).scatter_(-1, order, mass_above >= top_p)


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
    next_log_probs: NextScores,
    reorder: Reorder,
    start_ids: torch.Tensor,
    num_beams: int,
    max_length: int,
    eos_id: int,
    pad_id: int,
    length_penalty: float = 1.0,
    *,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
) -> torch.Tensor:
    """Beam search with transformers 4.33's rules; returns [B · num_return_sequences, ≤ max_length].

    `next_log_probs(sequences [B·K, T])` scores the next token of every beam [B·K, V]: the log-softmax of the logits,
    then whatever the caller adjusts. The K beams of sample b are rows b·K … b·K + K − 1, so the caller repeats
    per-sample context with `repeat_interleave(K)`. After each step `reorder(rows [B·K])` must make the caller's
    cache follow the beams; `rows` never leaves a sample, so per-sample context never needs reordering.

    Each step ranks the 2K best (beam, token) extensions by summed log-probability. An extension ending in eos
    finishes a hypothesis if it ranks among the first K (see `FinishedBeams` for which ones are kept); the first K
    others become the next beams. A sample stops once `_settled` says its finished hypotheses cannot change; one
    that reaches `max_length` adds its open beams as they are. Each sample returns its `num_return_sequences` best
    hypotheses, then eos where the width allows, then `pad_id`, the width being one more than the longest (at most
    `max_length`).
    """
    batch, start_length = start_ids.shape
    if start_length >= max_length:
        raise ValueError(f"start ids of length {start_length} leave no room below max_length {max_length}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must be between 1 and num_beams, got {num_return_sequences}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    device = start_ids.device
    own_rows = torch.arange(batch * num_beams, device=device).reshape(batch, num_beams)
    sequences = start_ids.repeat_interleave(num_beams, dim=0)
    # Only the first beam is live at the start; otherwise all K beams would choose the same tokens.
    running = torch.full((batch, num_beams), _DEAD_BEAM, device=device)
    running[:, 0] = 0.0
    finished = FinishedBeams.empty(batch, num_beams, max_length, length_penalty, device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    while sequences.shape[1] < max_length and not done.all():
        scores, rows, tokens = _extensions(next_log_probs(sequences), running, own_rows)
        ends = tokens == eos_id
        for rank in range(num_beams):
            finished.offer(sequences[rows[:, rank]], scores[:, rank], ends[:, rank] & ~done)
        # A settled sample runs on with the others, but nothing it finds is offered any more.
        kept = _first_open(ends, num_beams)
        next_rows = rows.gather(1, kept).flatten()
        running = scores.gather(1, kept)
        done |= _settled(finished, scores[:, 0], sequences.shape[1] + 1, max_length, early_stopping)
        sequences = torch.cat([sequences[next_rows], tokens.gather(1, kept).reshape(-1, 1)], dim=1)
        reorder(next_rows)
    for beam in range(num_beams):
        finished.offer(sequences[own_rows[:, beam]], running[:, beam], ~done)
    return finished.best(num_return_sequences, eos_id, pad_id)


def _extensions(
    log_probs: torch.Tensor, running: torch.Tensor, own_rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2K best extensions of each sample, best first: summed scores [B, 2K], source rows and tokens.

    Twice the beam count, because up to K of them can end in eos and K open ones must remain.
    """
    batch, num_beams = running.shape
    vocab = log_probs.shape[-1]
    totals = (log_probs + running.reshape(-1, 1)).reshape(batch, num_beams * vocab)
    scores, flat = totals.topk(2 * num_beams, dim=1)
    return scores, own_rows.gather(1, flat // vocab), flat % vocab


def _first_open(ends: torch.Tensor, count: int) -> torch.Tensor:
    """Columns [B, count] of the first `count` extensions per sample that do not end in eos, in rank order."""
    open_ = ~ends
    chosen = open_ & (open_.cumsum(dim=1) <= count)
    return chosen.nonzero()[:, 1].reshape(len(ends), count)


def _settled(
    finished: FinishedBeams, best_score: torch.Tensor, length: int, max_length: int, early_stopping: bool | str
) -> torch.Tensor:
    """Samples [B] whose finished hypotheses this search will not change any more.

    Never before K are finished. Then `early_stopping=True` stops at once; otherwise a sample goes on while the
    best extension of the step (`best_score`), measured at the `length` the step reached, would beat the worst
    finished hypothesis. "never" measures it at `max_length` instead when the length penalty favours long
    hypotheses, which is the true bound; False is transformers' cheaper default.
    """
    if early_stopping is True:
        return finished.full
    penalty = finished.length_penalty
    horizon = max_length if early_stopping == "never" and penalty > 0 else length
    return finished.full & (finished.worst >= best_score.double() / horizon**penalty)


@dataclass
class FinishedBeams:
    """The finished hypotheses of a batch, at most K per sample, held as tensors.

    Slot j of sample b holds `tokens[b, j, :lengths[b, j]]` (start tokens included, the closing eos left out) and its
    score, the summed log-probability / length**length_penalty in float64 (transformers scores in Python floats, and
    ties must fall the same way). `arrival` numbers the hypotheses in the order they came (−1: empty slot): among
    equal scores a full sample evicts the earliest, and the final ranking puts the latest first.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor
    arrival: torch.Tensor
    length_penalty: float
    clock: int = 0

    @classmethod
    def empty(
        cls, batch: int, size: int, max_length: int, length_penalty: float, device: torch.device
    ) -> FinishedBeams:
        return cls(
            tokens=torch.zeros(batch, size, max_length, dtype=torch.long, device=device),
            lengths=torch.zeros(batch, size, dtype=torch.long, device=device),
            scores=torch.full((batch, size), -float("inf"), dtype=torch.float64, device=device),
            arrival=torch.full((batch, size), -1, dtype=torch.long, device=device),
            length_penalty=length_penalty,
        )

    @property
    def full(self) -> torch.Tensor:
        return (self.arrival >= 0).all(dim=1)

    @property
    def worst(self) -> torch.Tensor:
        """The lowest score held [B]; it matters only for full samples."""
        return self.scores.min(dim=1).values

    def offer(self, tokens: torch.Tensor, log_probs: torch.Tensor, offered: torch.Tensor) -> None:
        """Offer one hypothesis `tokens` [B, T] with summed log-probability `log_probs` [B] where `offered` [B].

        It gets in while its sample has room, or when it scores strictly above the worst, which it then replaces.
        """
        length = tokens.shape[1]
        score = log_probs.double() / length**self.length_penalty
        full = self.full
        admitted = offered & (~full | (score > self.worst))
        if not admitted.any():
            return
        first_empty = (self.arrival < 0).int().argmax(dim=1)
        slot = torch.where(full, self._evictee(), first_empty)
        samples = admitted.nonzero()[:, 0]
        slots = slot[samples]
        self.tokens[samples, slots, :length] = tokens[samples]
        self.lengths[samples, slots] = length
        self.scores[samples, slots] = score[samples]
        self.arrival[samples, slots] = self.clock
        self.clock += 1

    def _evictee(self) -> torch.Tensor:
        """Slot [B] of the earliest arrival among those holding the worst score."""
        at_worst = self.scores == self.worst[:, None]
        return self.arrival.masked_fill(~at_worst, self.clock).argmin(dim=1)

    def best(self, count: int, eos_id: int, pad_id: int) -> torch.Tensor:
        """The `count` best hypotheses of every sample as rows [B·count, W], sample by sample, best first.

        A row is its tokens, then eos if it fits, then `pad_id`; W is one more than the longest hypothesis, capped at
        the slots' width (`max_length`), so a hypothesis cut at the limit gets no eos.
        """
        latest_first = self.arrival.argsort(dim=1, descending=True)
        by_score = self.scores.gather(1, latest_first).argsort(dim=1, descending=True, stable=True)
        slots = latest_first.gather(1, by_score)[:, :count]
        samples = torch.arange(len(slots), device=slots.device)[:, None]
        tokens = self.tokens[samples, slots].flatten(0, 1)
        lengths = self.lengths[samples, slots].flatten()[:, None]
        width = min(int(lengths.max()) + 1, tokens.shape[1])
        positions = torch.arange(width, device=tokens.device)
        rows = torch.where(positions < lengths, tokens[:, :width], pad_id)
        return torch.where(positions == lengths, eos_id, rows)
