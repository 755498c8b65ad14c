"""The generic search loops: beam-search rules and score filters against transformers and hand-checked tables.

The installed transformers no longer follows 4.33's beam-search rules (the ones LAVIS ran under) in everything:
it measures hypotheses without the start tokens and judges stopping otherwise. With length penalty 0 those
differences vanish, so there it is a reference; the rules that depend on the length are pinned by tables whose
outcome is worked out in each docstring (and by the brute-force tests in `test_caption.py`).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from fusioncam.models.decoding import (
    DecodingConfig,
    FinishedBeams,
    NextScores,
    adjust_scores,
    beam_search,
    filter_top_k_top_p,
)

EOS, PAD = 2, 3  # tables: tokens x = 0, y = 1, eos; padding outside the vocabulary


def _table(log_probs: dict[tuple[int, ...], list[float]]) -> NextScores:
    """A scorer reading the next-token log-probabilities of each prefix from `log_probs` (−5 each elsewhere)."""

    def next_log_probs(sequences: torch.Tensor) -> torch.Tensor:
        return torch.tensor([log_probs.get(tuple(prefix), [-5.0] * 3) for prefix in sequences.tolist()])

    return next_log_probs


def _search(
    next_log_probs: NextScores, start: list[list[int]], num_beams: int, max_length: int, **options: Any
) -> list[list[int]]:
    """Beam search without a cache to reorder, as nested lists."""
    out = beam_search(
        next_log_probs, lambda rows: None, torch.tensor(start), num_beams, max_length, EOS, PAD, **options
    )
    return out.tolist()


# Start "x", two beams, penalty 1: "x" finishes at step 1 (−0.6), "x x" at step 2 (−1.3 / 2), which fills the list;
# "x x x" (−1.36 / 3 = −0.45) comes at step 3 and beats them both.
LATE_WINNER = {(0,): [-1.0, -2.0, -0.6], (0, 0): [-0.35, -5.0, -0.3], (0, 0, 0): [-1.0, -5.0, -0.01]}


def test_early_stopping_true_stops_as_soon_as_the_list_is_full() -> None:
    """`early_stopping=True` returns the best of the first K finished hypotheses; False keeps looking."""
    assert _search(_table(LATE_WINNER), [[0]], 2, 6, early_stopping=True) == [[0, EOS]]
    assert _search(_table(LATE_WINNER), [[0]], 2, 6, early_stopping=False) == [[0, 0, 0, EOS]]


# Start "x", two beams, penalty 1: "x" finishes at −0.7 (step 1), "x x" at −1.6 / 2 = −0.8 (step 2). At step 3 the
# best extension is "x x x x" (−3.3): over the 4 tokens reached that is −0.825, no better than the worst finished, so
# the default test stops with "x"; yet "x x x x x" (−3.302 / 5 = −0.66) would come at step 5.
STOPS_TOO_EARLY = {
    (0,): [-1.0, -1.2, -0.7],
    (0, 0): [-2.0, -2.5, -0.6],
    (0, 1): [-2.0, -3.0, -5.0],
    (0, 0, 0): [-0.3, -3.0, -1.0],
    (0, 0, 0, 0): [-0.001, -5.0, -0.5],
    (0, 0, 0, 0, 0): [-1.0, -5.0, -0.001],
}


def test_early_stopping_never_bounds_the_best_score_by_max_length() -> None:
    """With a positive penalty, "never" divides the best extension by `max_length` (8) instead of the length reached:
    −3.3 / 8 = −0.41 could still win, so it goes on and finds "x x x x x"."""
    assert _search(_table(STOPS_TOO_EARLY), [[0]], 2, 8, early_stopping=False) == [[0, EOS]]
    assert _search(_table(STOPS_TOO_EARLY), [[0]], 2, 8, early_stopping=True) == [[0, EOS]]
    assert _search(_table(STOPS_TOO_EARLY), [[0]], 2, 8, early_stopping="never") == [[0, 0, 0, 0, 0, EOS]]


def test_a_settled_sample_takes_no_more_hypotheses_while_others_run() -> None:
    """Sample 0 stops at step 3 with "x"; sample 1 ("y y y …") keeps the batch running to the limit, past the step
    where sample 0's beams reach "x x x x x" + eos, which must not get in any more."""
    table = STOPS_TOO_EARLY | {(1,) * length: [-3.0, -0.1, -4.0] for length in range(1, 8)}
    assert _search(_table(table), [[0], [1]], 2, 8) == [[0, EOS] + [PAD] * 6, [1] * 8]


def test_eos_in_the_first_step_returns_the_start_alone_while_the_other_sample_goes_on() -> None:
    """Sample 0 ("y") is best ended at once: its hypothesis is the start tokens alone, then eos and padding to the
    width of sample 1 ("x"), whose best runs to the limit and gets no eos."""
    unlikely_end = [-0.1, -3.0, -3.5]
    table = {(1,): [-3.0, -4.0, -0.05], (0,): unlikely_end, (0, 0): unlikely_end, (0, 0, 0): unlikely_end}
    assert _search(_table(table), [[1], [0]], 2, 4, early_stopping=False) == [[1, EOS, PAD, PAD], [0, 0, 0, 0]]


def test_equal_scores_rank_the_later_hypothesis_first_evict_the_earlier_and_keep_out_a_newcomer() -> None:
    """Ties fall by arrival. "x" finishes at −1.0 / 1 and "x x" at −2.0 / 2, exactly equal: the later one ranks first,
    and "x x x" at −3.0 / 3, no better than the worst of the full list, stays out. When instead "x x x" arrives at
    −1.2 / 3, the earlier of the two tied ("x") makes room for it."""
    tie = {(0,): [-0.5, -4.0, -1.0], (0, 0): [-1.0, -4.0, -1.5], (0, 0, 0): [-5.0, -6.0, -1.5]}
    assert _search(_table(tie), [[0]], 2, 6, num_return_sequences=2) == [[0, 0, EOS], [0, EOS, PAD]]
    evict = {(0,): [-0.5, -4.0, -1.0], (0, 0): [-0.6, -4.0, -1.5], (0, 0, 0): [-5.0, -6.0, -0.1]}
    assert _search(_table(evict), [[0]], 2, 6, num_return_sequences=2) == [[0, 0, 0, EOS], [0, 0, EOS, PAD]]


def test_a_sample_stops_when_the_best_extension_only_equals_the_worst_finished() -> None:
    """Step 2 fills the list with "x" (−0.5) and "x x" (−1.5 / 2 = −0.75). Step 3's best extension "x x x x" (−3.0)
    over the 4 tokens reached is exactly −0.75: the sample stops, although "x x x x x" (−3.2 / 5 = −0.64) would have
    replaced "x x" two steps later."""
    table = {
        (0,): [-1.0, -2.0, -0.5],
        (0, 0): [-1.5, -5.0, -0.5],
        (0, 0, 0): [-0.5, -5.0, -2.0],
        (0, 0, 0, 0): [-0.1, -5.0, -1.0],
        (0, 0, 0, 0, 0): [-5.0, -5.0, -0.1],
    }
    assert _search(_table(table), [[0]], 2, 8, num_return_sequences=2) == [[0, EOS, PAD], [0, 0, EOS]]


def test_the_stopping_test_uses_the_best_extension_even_when_it_ends() -> None:
    """Start "y y y". Step 2 fills the list with "y y y" (−1.8 / 3 = −0.6) and "y y y x" (−2.6 / 4 = −0.65); its best
    extension is "y y y x" + eos (−2.6 / 5 = −0.52), so the search goes on (the best open one, −3.5 / 5 = −0.7, would
    have stopped it) and step 4 finds "y y y x x x" (−3.61 / 6 = −0.602), which replaces the second."""
    table = {
        (1, 1, 1): [-1.0, -2.0, -1.8],
        (1, 1, 1, 0): [-2.5, -5.0, -1.6],
        (1, 1, 1, 0, 0): [-0.01, -6.0, -5.0],
        (1, 1, 1, 0, 0, 0): [-5.0, -6.0, -0.1],
    }
    assert _search(_table(table), [[1, 1, 1]], 2, 10, num_return_sequences=2) == [
        [1, 1, 1, EOS, PAD, PAD, PAD],
        [1, 1, 1, 0, 0, 0, EOS],
    ]


def test_hypotheses_are_scored_in_double_precision() -> None:
    """transformers divides in Python floats: −0.0630630627 / 7 beats −0.0270270277 / 3 by 3e-10, which float32
    division would round to a tie, and a tie would go to the later, shorter hypothesis."""
    finished = FinishedBeams.empty(1, 2, 8, 1.0, torch.device("cpu"))
    offered = torch.tensor([True])
    finished.offer(torch.zeros(1, 7, dtype=torch.long), torch.tensor([-0.06306306272745132]), offered)
    finished.offer(torch.ones(1, 3, dtype=torch.long), torch.tensor([-0.027027027681469917]), offered)
    assert finished.best(1, EOS, PAD).tolist() == [[0] * 7 + [EOS]]


def _all_endings(start: list[int], max_length: int, next_log_probs: NextScores) -> list[tuple[float, list[int]]]:
    """Every complete hypothesis after `start` with its summed log-probability: ended by eos (left out of the
    tokens) or cut at `max_length`."""
    endings = []
    for new in range(max_length - len(start) + 1):
        for middle in itertools.product((0, 1), repeat=new):
            tokens = [*start, *middle]
            steps = [next_log_probs(torch.tensor([tokens[:end]]))[0] for end in range(len(start), len(tokens) + 1)]
            log_prob = sum(float(row[token]) for row, token in zip(steps, middle, strict=False))
            if len(tokens) < max_length:
                endings.append((log_prob + float(steps[-1][EOS]), tokens))
            else:
                endings.append((log_prob, tokens))
    return endings


@pytest.mark.parametrize("length_penalty", [1.0, 2.0, -0.5])
def test_several_returned_sequences_are_the_best_in_order(length_penalty: float) -> None:
    """Nothing is pruned with 12 beams and 3 new tokens, so the 4 returned hypotheses of each sample are the 4 best
    of all, best first, each closed by eos where it ended (and where it fits), then padded to a common width."""

    def next_log_probs(sequences: torch.Tensor) -> torch.Tensor:
        rows = []
        for prefix in sequences.tolist():
            generator = torch.Generator().manual_seed(int("".join(str(token + 1) for token in prefix)))
            rows.append((torch.randn(3, generator=generator) * 2).log_softmax(-1))
        return torch.stack(rows)

    starts = [[0, 1], [1, 1]]
    out = _search(next_log_probs, starts, 12, 5, length_penalty=length_penalty, num_return_sequences=4)
    width = len(out[0])
    for sample, start in enumerate(starts):
        endings = _all_endings(start, 5, next_log_probs)
        ranked = sorted(endings, key=lambda item: item[0] / len(item[1]) ** length_penalty, reverse=True)[:4]
        for rank, (_, tokens) in enumerate(ranked):
            closed = [*tokens, EOS][:width]
            assert out[sample * 4 + rank] == closed + [PAD] * (width - len(closed))


def test_beam_search_refuses_impossible_requests() -> None:
    scorer = _table({})
    with pytest.raises(ValueError, match="num_return_sequences"):
        _search(scorer, [[0]], 2, 4, num_return_sequences=3)
    with pytest.raises(ValueError, match="early_stopping"):
        _search(scorer, [[0]], 2, 4, early_stopping="sometimes")
    with pytest.raises(ValueError, match="no room"):
        _search(scorer, [[0, 0, 0, 0]], 2, 4)


T5_EOS, T5_PAD = 1, 5  # padding other than 0: transformers fills with eos when the pad id is 0


@pytest.fixture(scope="module")
def t5() -> T5ForConditionalGeneration:
    """A tiny T5 with large random weights and a likely eos, so that beams end at different lengths."""
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=24, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, decoder_start_token_id=0, eos_token_id=1
    )
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.normal_(1.0, 0.1)
            else:
                param.normal_(0.0, 2.0 / param.shape[-1] ** 0.5)
        model.shared.weight[T5_EOS] *= 3.0
    return model


@pytest.mark.parametrize(
    ("num_beams", "early_stopping", "num_return_sequences"), [(2, False, 2), (3, True, 3), (4, "never", 1)]
)
def test_beam_search_matches_transformers_generate(
    t5: T5ForConditionalGeneration, num_beams: int, early_stopping: bool | str, num_return_sequences: int
) -> None:
    """Same sequences as transformers' `generate` on a real model, with length penalty 0 (see the module docstring)."""
    input_ids = torch.randint(2, 24, (4, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = t5.generate(
            input_ids=input_ids,
            num_beams=num_beams,
            early_stopping=early_stopping,
            num_return_sequences=num_return_sequences,
            length_penalty=0.0,
            max_new_tokens=5,
            do_sample=False,
            pad_token_id=T5_PAD,
            use_cache=False,
        )
        encoded = t5.get_encoder()(input_ids=input_ids).last_hidden_state.repeat_interleave(num_beams, dim=0)

        def next_log_probs(sequences: torch.Tensor) -> torch.Tensor:
            logits = t5(encoder_outputs=(encoded,), decoder_input_ids=sequences).logits
            return logits[:, -1].float().log_softmax(-1)

        start = torch.zeros(4, 1, dtype=torch.long)
        actual = beam_search(
            next_log_probs,
            lambda rows: None,
            start,
            num_beams,
            6,
            T5_EOS,
            T5_PAD,
            0.0,
            early_stopping=early_stopping,
            num_return_sequences=num_return_sequences,
        )
    assert torch.equal(actual, expected)
    ended = (actual == T5_EOS).any(dim=1)
    assert ended.any() and not ended.all(), "the test needs hypotheses that end early and ones cut at the limit"


def test_filters_match_transformers_processors_on_many_inputs() -> None:
    """Repetition penalty, top-k and top-p give transformers' results on random (tie-free) scores of any scale."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        vocab = int(torch.randint(2, 200, (), generator=generator))
        scores = torch.randn(4, vocab, generator=generator) * float(torch.rand((), generator=generator) * 8)
        sequences = torch.randint(0, vocab, (4, 6), generator=generator)
        top_k = int(torch.randint(0, vocab + 1, (), generator=generator))
        top_p = float(torch.rand((), generator=generator).clamp(0.01, 0.99))
        penalty = 1.0 + float(torch.rand((), generator=generator))

        expected = RepetitionPenaltyLogitsProcessor(penalty)(sequences, scores.clone())
        config = DecodingConfig(min_length=0, repetition_penalty=penalty)
        assert torch.equal(adjust_scores(scores, sequences, config, eos_id=0), expected)

        expected = TopKLogitsWarper(top_k)(sequences, scores.clone()) if top_k else scores.clone()
        expected = TopPLogitsWarper(top_p)(sequences, expected)
        assert torch.equal(filter_top_k_top_p(scores, top_k, top_p), expected)


def test_nucleus_leaves_out_a_token_whose_betters_hold_exactly_top_p() -> None:
    """Four equal tokens (a quarter each): with top-p 1/2 two are kept, with 3/4 three (the mass is exact here)."""
    logits = torch.zeros(1, 4)
    for top_p, kept in ((0.5, 2), (0.75, 3), (0.8, 4)):
        assert int(filter_top_k_top_p(logits, 0, top_p).isfinite().sum()) == kept
        assert int(TopPLogitsWarper(top_p)(None, logits.clone()).isfinite().sum()) == kept
