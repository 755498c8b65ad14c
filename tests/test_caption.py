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
from fusioncam.models.blip import BlipCaption, BlipCaptionConfig
from fusioncam.models.decoding import DecodingConfig, adjust_scores, filter_top_k_top_p

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
