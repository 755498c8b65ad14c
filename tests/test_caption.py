"""The BLIP captioner beyond the reference case: transformers parity, official layouts, decoding strategies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BlipConfig, BlipForConditionalGeneration
from transformers.generation.logits_process import (
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from fusioncam.checkpoints import load_blip_caption_weights
from fusioncam.models import blip
from fusioncam.models.blip import BlipCaption, BlipCaptionConfig
from fusioncam.models.decoding import DecodingConfig, adjust_scores, beam_search, filter_top_k_top_p
from fusioncam.precision import autocast_weights

TINY = {
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 64,
        "patch_size": 16,
    },
    "text_config": {
        "vocab_size": 50,
        "hidden_size": 48,
        "encoder_hidden_size": 32,
        "intermediate_size": 80,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 40,
        "bos_token_id": 48,
        "sep_token_id": 3,
        "pad_token_id": 0,
    },
}


def _tiny_caption_config() -> BlipCaptionConfig:
    return BlipCaptionConfig.from_dict(
        {
            "vision": {
                "image_size": 64,
                "width": 32,
                "depth": 2,
                "num_heads": 4,
                "mlp_ratio": 2.0,
                "layer_norm_eps": 1e-5,
            },
            "text": {
                "vocab_size": 50,
                "hidden_size": 48,
                "num_layers": 2,
                "num_heads": 4,
                "intermediate_size": 80,
                "max_position_embeddings": 40,
                "encoder_width": 32,
            },
        }
    )


@pytest.fixture(scope="module")
def pair() -> tuple[BlipForConditionalGeneration, BlipCaption]:
    torch.manual_seed(0)
    hf = BlipForConditionalGeneration(BlipConfig(**TINY)).eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    ours = BlipCaption(_tiny_caption_config()).eval()
    load_blip_caption_weights(ours, hf.state_dict(), "hf", "transformers state_dict")
    return hf, ours


def test_teacher_forced_logits_match_transformers(pair) -> None:
    hf, ours = pair
    pixels = torch.randn(2, 3, 64, 64)
    ids = torch.tensor([[48, 7, 9, 11, 13, 3], [48, 21, 22, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
        actual = ours.logits(ours.encode_image(pixels), ids, mask)
    torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-5)


def test_cached_decoding_equals_rerunning_the_prefix(pair) -> None:
    _, ours = pair
    torch.manual_seed(3)
    embeds = ours.encode_image(torch.randn(2, 3, 64, 64))
    prompt = torch.tensor([[48, 5, 6], [48, 5, 6]])
    with torch.no_grad():
        ids = ours.generate(embeds, prompt, eos_id=3, pad_id=0, config=DecodingConfig(max_length=12, min_length=4))
        full = ours.logits(embeds, ids, torch.ones_like(ids))
    # Greedy means: each generated token is the argmax of the full-prefix logits before it (EOS allowed late).
    for row in range(2):
        for position in range(prompt.shape[1], ids.shape[1]):
            if ids[row, position - 1] in (0, 3) and position > prompt.shape[1]:
                break
            scores = full[row, position - 1].clone()
            if position < 4:
                scores[3] = -float("inf")
            assert ids[row, position] == scores.argmax()


def test_beam_of_one_is_greedy_and_sampling_is_seeded(pair) -> None:
    _, ours = pair
    torch.manual_seed(4)
    embeds = ours.encode_image(torch.randn(3, 3, 64, 64))
    prompt = torch.tensor([[48, 5]] * 3)
    greedy = ours.generate(embeds, prompt, 3, 0, DecodingConfig(max_length=10, min_length=3))
    beam1 = ours.generate(embeds, prompt, 3, 0, DecodingConfig("beam", max_length=10, min_length=3, num_beams=1))
    assert torch.equal(beam1[:, : greedy.shape[1]], greedy)
    beam3 = ours.generate(embeds, prompt, 3, 0, DecodingConfig("beam", max_length=10, min_length=3, num_beams=3))
    assert beam3.shape[0] == 3 and torch.all(beam3[:, :2] == prompt)

    def sample(seed: int, **options) -> torch.Tensor:
        config = DecodingConfig("sample", max_length=10, min_length=3, **options)
        return ours.generate(embeds, prompt, 3, 0, config, torch.Generator().manual_seed(seed))

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1, top_k=0, temperature=5.0), sample(2, top_k=0, temperature=5.0))
    assert torch.equal(sample(5, top_k=1)[:, : greedy.shape[1]], greedy)


def test_beam_search_with_a_cache_equals_rerunning_the_prefix(pair) -> None:
    """BLIP's beam search (cache reordered with the beams) gives what the same search gives re-running every prefix."""
    _, ours = pair
    torch.manual_seed(5)
    embeds = ours.encode_image(torch.randn(3, 3, 64, 64))
    prompt = torch.tensor([[48, 5]] * 3)
    config = DecodingConfig("beam", max_length=12, min_length=4, num_beams=3, repetition_penalty=1.3)
    beam_embeds = embeds.repeat_interleave(3, dim=0)

    def next_log_probs(sequences: torch.Tensor) -> torch.Tensor:
        logits = ours.logits(beam_embeds, sequences, torch.ones_like(sequences))[:, -1]
        return adjust_scores(logits.log_softmax(-1), sequences, config, eos_id=3)

    with torch.no_grad():
        cached = ours.generate(embeds, prompt, 3, 0, config)
        uncached = beam_search(next_log_probs, lambda rows: None, prompt, 3, 12, eos_id=3, pad_id=0)
    assert torch.equal(cached, uncached)
    assert (cached[:, 2:] == 3).any(), "the test should include captions that end before the limit"


EOS, PAD = 2, 3  # a three-token vocabulary (0, 1, eos) and a padding id outside it


def _prefix_log_probs(sequences: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of tokens 0, 1, eos after each sequence: random, but a fixed function of the whole prefix."""
    rows = []
    for prefix in sequences.tolist():
        generator = torch.Generator().manual_seed(int("".join(str(token + 1) for token in prefix)))
        rows.append((torch.randn(3, generator=generator) * 2).log_softmax(-1))
    return torch.stack(rows)


def _best_by_brute_force(start: list[int], max_length: int, length_penalty: float) -> list[int]:
    """The best of all complete sequences: ended by eos (not counted in the length) or cut at `max_length`."""
    scored: list[tuple[float, list[int]]] = []

    def visit(prefix: list[int], log_prob: float) -> None:
        if len(prefix) == max_length:
            scored.append((log_prob / len(prefix) ** length_penalty, prefix))
            return
        next_log_prob = _prefix_log_probs(torch.tensor([prefix]))[0].tolist()
        scored.append(((log_prob + next_log_prob[EOS]) / len(prefix) ** length_penalty, [*prefix, EOS]))
        for token in (0, 1):
            visit([*prefix, token], log_prob + next_log_prob[token])

    visit(start, 0.0)
    return max(scored, key=lambda item: item[0])[1]


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0, -0.5])
def test_wide_beam_search_finds_the_brute_force_best(length_penalty: float) -> None:
    """With 12 beams and 3 new tokens nothing is ever pruned, so the search must return the best of all sequences.

    Every step has at most 12 real candidates, all ranked within the top `num_beams`, and the finished list never
    fills with real hypotheses before the end; the scoring rules alone decide. With penalty 1 the first sample's
    winner would change if the closing eos counted in the length.
    """
    starts = [[0, 1], [1, 1], [1, 0]]  # winners: ended by eos at two lengths, and cut at the limit
    out = beam_search(_prefix_log_probs, lambda rows: None, torch.tensor(starts), 12, 5, EOS, PAD, length_penalty)
    for row, start in enumerate(starts):
        expected = _best_by_brute_force(start, 5, length_penalty)
        assert out[row].tolist() == expected + [PAD] * (out.shape[1] - len(expected))


def test_beam_search_judges_stopping_at_the_length_the_step_reached() -> None:
    """transformers 4.33 scores the best candidate of a step at the new length (4.26 used the old one) when deciding
    whether a sample with `num_beams` finished hypotheses may stop; the later rule keeps searching here.

    Tokens x = 0, y = 1, eos; start "x", two beams, length penalty 1. Step 1 finishes "x" (−0.6). Step 2's best
    candidate is "x x" + eos (−1.3), finishing "x x" (−0.65): two finished, the worst −0.65. −1.3 over the 3 tokens
    the step reached (−0.43) could still beat it, so the search goes on (4.26 divided by 2 and stopped with "x").
    Step 3 finishes "x x x" (−1.36 / 3 = −0.45), the answer; step 4 (best −7.35 / 5) stops.
    """
    table = {(0,): [-1.0, -2.0, -0.6], (0, 0): [-0.35, -5.0, -0.3], (0, 0, 0): [-1.0, -5.0, -0.01]}

    def next_log_probs(sequences: torch.Tensor) -> torch.Tensor:
        return torch.tensor([table.get(tuple(prefix), [-5.0] * 3) for prefix in sequences.tolist()])

    out = beam_search(next_log_probs, lambda rows: None, torch.tensor([[0]]), 2, 6, EOS, PAD, 1.0)
    assert out.tolist() == [[0, 0, 0, EOS]]


def test_score_adjustments_match_transformers_processors() -> None:
    torch.manual_seed(0)
    scores = torch.randn(3, 30) * 3
    sequences = torch.randint(0, 30, (3, 6))
    config = DecodingConfig(min_length=8, repetition_penalty=1.3)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(sequences, scores.clone())
    expected = MinLengthLogitsProcessor(8, eos_token_id=3)(sequences, expected)
    torch.testing.assert_close(adjust_scores(scores, sequences, config, eos_id=3), expected)
    for top_k, top_p in [(5, 1.0), (0, 0.7), (10, 0.5)]:
        expected = scores.clone()
        if top_k:
            expected = TopKLogitsWarper(top_k)(sequences, expected)
        expected = TopPLogitsWarper(top_p)(sequences, expected) if top_p < 1 else expected
        torch.testing.assert_close(filter_top_k_top_p(scores, top_k, top_p), expected)


MANIFESTS = {"lavis_blip_caption_large.json": "lavis", "hf_blip_image_captioning_large.json": "hf"}


@pytest.mark.parametrize("filename", MANIFESTS)
def test_official_caption_checkpoint_layout_loads_strictly(shared_dir: Path, filename: str) -> None:
    manifest = json.loads((shared_dir / "fixtures" / "checkpoint-keys" / filename).read_text())
    state_dict = {key: torch.full(shape, float(i)) for i, (key, shape) in enumerate(manifest["keys"].items())}
    # The file stores tied tensors under two names each, with equal values.
    state_dict["text_decoder.cls.predictions.decoder.weight"] = state_dict[
        "text_decoder.bert.embeddings.word_embeddings.weight"
    ]
    state_dict["text_decoder.cls.predictions.decoder.bias"] = state_dict["text_decoder.cls.predictions.bias"]
    with torch.device("meta"):
        model = BlipCaption(BlipCaptionConfig.preset("large"))
    load_blip_caption_weights(model, state_dict, MANIFESTS[filename], filename)
    assert torch.equal(model.text_decoder.lm_head.bias, state_dict["text_decoder.cls.predictions.bias"])

    state_dict["text_decoder.cls.predictions.decoder.bias"] = state_dict["text_decoder.cls.predictions.bias"] + 1
    with torch.device("meta"):
        model = BlipCaption(BlipCaptionConfig.preset("large"))
    with pytest.raises(ValueError, match="tied"):
        load_blip_caption_weights(model, state_dict, MANIFESTS[filename], filename)


def test_top_k_sampling_draws_from_the_filtered_distribution() -> None:
    """Sampling among the k best gives the frequencies of softmax over the top-k-filtered logits."""
    from fusioncam.models.decoding import sample_tokens

    logits = torch.tensor([[2.0, 1.0, 0.5, 3.0, -1.0, 0.0]]).expand(20000, -1)
    draws = sample_tokens(logits, top_k=3, top_p=1.0, generator=torch.Generator().manual_seed(0))
    expected = filter_top_k_top_p(logits[:1], 3, 1.0).softmax(-1)[0]
    frequencies = torch.bincount(draws, minlength=6).float() / len(draws)
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)
    assert set(draws.tolist()) <= {0, 1, 3}  # the three best
    nucleus = sample_tokens(logits, top_k=0, top_p=0.5, generator=torch.Generator().manual_seed(1))
    assert set(nucleus.tolist()) <= {0, 3}  # the smallest set holding half the mass


def test_bf16_decoding_casts_the_weights_once_to_autocasts_values(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 decoding casts the decoder's weights once per caption batch, not once per token: the same logits."""
    _, ours = pair
    torch.manual_seed(6)
    embeds = ours.encode_image(torch.randn(2, 3, 64, 64))
    prompt = torch.tensor([[48, 7, 9, 11], [48, 21, 22, 3]])
    first_step: list[torch.Tensor] = []

    def decode_one_step(next_logits, reorder, start_ids: torch.Tensor, *args) -> torch.Tensor:
        first_step.append(next_logits(start_ids))
        return start_ids

    monkeypatch.setattr(blip, "decode", decode_one_step)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours.generate(embeds, prompt, eos_id=3, pad_id=0, config=DecodingConfig())
        expected = ours.logits(embeds, prompt, torch.ones_like(prompt))[:, -1].float()
        weights = autocast_weights(ours.text_decoder)
    assert torch.equal(first_step[0], expected)
    assert weights and all(weight.dtype == torch.bfloat16 for weight in weights.values())
    assert "bert.embeddings.word_embeddings.weight" not in weights  # the embedding reads float32
    assert autocast_weights(ours.text_decoder) == {}
