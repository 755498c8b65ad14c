"""UnifiedQA-v2 T5 Fusion-in-Decoder: FiD data flow, decoding, presets and strict loading of the real layout.

Exact parity with LAVIS lives in `ref_pnp.py`; these tests pin the properties the design relies on with a tiny
random T5 (and the real-size layout built on the meta device).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from fusioncam.checkpoints import T5_TIED_KEYS, CheckpointError, load_t5_weights
from fusioncam.models.t5_fid import FiDEncoding, FusionInDecoderQA, t5_config
from fusioncam.precision import autocast_weights

TINY = {"vocab_size": 64, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_heads": 4}
EOS = 1


@pytest.fixture(scope="module")
def qa() -> FusionInDecoderQA:
    """A tiny T5 with weights far from the default init, whose answers vary and often end before the limit."""
    torch.manual_seed(1)
    model = FusionInDecoderQA.from_preset("base", **TINY).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.normal_(1.0, 0.1)
            elif name == "model.shared.weight":
                param.normal_(0.0, 0.5)
            else:
                param.normal_(0.0, 3.0 / param.shape[-1] ** 0.5)
        model.model.shared.weight[EOS] *= 3.0
    return model


def _passages(batch: int, passages: int, length: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random passages ending in eos, right-padded to `length` (every passage at least 3 tokens + eos)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, TINY["vocab_size"], (batch, passages, length), generator=generator)
    lengths = torch.randint(4, length + 1, (batch, passages), generator=generator)
    positions = torch.arange(length)
    mask = (positions < lengths[..., None]).long()
    ids = torch.where(positions == lengths[..., None] - 1, EOS, ids) * mask
    return ids, mask


def test_single_passage_is_plain_t5(qa: FusionInDecoderQA) -> None:
    ids, mask = _passages(6, 1, 10)
    flat_ids, flat_mask = ids[:, 0], mask[:, 0]
    with torch.no_grad():
        encoding = qa.encode(ids, mask)
        plain = qa.model.encoder(input_ids=flat_ids, attention_mask=flat_mask).last_hidden_state
        assert torch.equal(encoding.last_hidden_state, plain)

        ours = qa.generate(encoding, max_new_tokens=8)
        theirs = qa.model.generate(input_ids=flat_ids, attention_mask=flat_mask, do_sample=False, max_new_tokens=8)
    assert torch.equal(ours, theirs)
    assert (ours == EOS).any(), "the test should include answers that end early"

    with torch.no_grad():
        logits = qa.logits(encoding, ours)
        plain_logits = qa.model(input_ids=flat_ids, attention_mask=flat_mask, decoder_input_ids=ours).logits
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=1e-5)


def test_passage_order_does_not_change_each_passage_encoding(qa: FusionInDecoderQA) -> None:
    ids, mask = _passages(2, 4, 9)
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        encoding = qa.encode(ids, mask)
        shuffled = qa.encode(ids[:, order], mask[:, order])

    def per_passage(encoded: FiDEncoding) -> torch.Tensor:
        return encoded.last_hidden_state.reshape(2, 4, 9, -1)

    torch.testing.assert_close(per_passage(shuffled), per_passage(encoding)[:, order], rtol=0, atol=1e-6)
    assert torch.equal(shuffled.attention_mask.reshape(2, 4, 9), mask[:, order])


def test_dropping_a_passage_equals_encoding_without_it(qa: FusionInDecoderQA) -> None:
    ids, mask = _passages(2, 3, 8)
    with torch.no_grad():
        reduced = qa.encode(ids, mask).without_passage(1)
        direct = qa.encode(ids[:, [0, 2]], mask[:, [0, 2]])
        answer = qa.generate(direct, max_new_tokens=6)[:, 1:]
        torch.testing.assert_close(reduced.last_hidden_state, direct.last_hidden_state, rtol=0, atol=1e-6)
        assert torch.equal(reduced.attention_mask, direct.attention_mask)
        assert reduced.num_passages == 2
        torch.testing.assert_close(qa.answer_log_prob(reduced, answer), qa.answer_log_prob(direct, answer))


def test_cached_decoding_agrees_with_teacher_forcing(qa: FusionInDecoderQA) -> None:
    """Each greedy token (decoded step by step with a cache) is the argmax of the teacher-forced logits."""
    ids, mask = _passages(3, 2, 8)
    with torch.no_grad():
        encoding = qa.encode(ids, mask)
        answers = qa.generate(encoding, max_new_tokens=6)
        logits = qa.logits(encoding, answers[:, :-1])
    real = answers[:, 1:] != 0
    assert torch.equal(logits.argmax(-1)[real], answers[:, 1:][real])


def test_answer_log_prob_matches_transformers_loss_for_one_passage(qa: FusionInDecoderQA) -> None:
    ids, mask = _passages(6, 1, 10)
    with torch.no_grad():
        encoding = qa.encode(ids, mask)
        answers = qa.generate(encoding, max_new_tokens=8)[:, 1:]  # some end in eos, some are cut at the limit
        labels = answers.masked_fill(answers == 0, -100)
        # transformers' loss: mean negative log-likelihood over every labelled token of the batch.
        loss = qa.model(input_ids=ids[:, 0], attention_mask=mask[:, 0], labels=labels).loss
        log_probs = qa.answer_log_prob(encoding, answers)
    assert torch.all(log_probs <= 0)
    torch.testing.assert_close(log_probs.sum(), -loss * (labels != -100).sum())


@pytest.mark.parametrize("num_beams", [1, 3])
def test_decoding_each_sample_alone_gives_the_batch_result(qa: FusionInDecoderQA, num_beams: int) -> None:
    ids, mask = _passages(3, 2, 8, seed=5)
    with torch.no_grad():
        batch = qa.generate(qa.encode(ids, mask), num_beams=num_beams, max_new_tokens=7)
        for row in range(3):
            alone = qa.generate(
                qa.encode(ids[row : row + 1], mask[row : row + 1]), num_beams=num_beams, max_new_tokens=7
            )
            width = alone.shape[1]
            assert torch.equal(batch[row, :width], alone[0])
            assert torch.all(batch[row, width:] == 0)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_min_new_tokens_delays_eos(qa: FusionInDecoderQA, num_beams: int) -> None:
    ids, mask = _passages(3, 2, 8, seed=3)
    with torch.no_grad():
        encoding = qa.encode(ids, mask)
        free = qa.generate(encoding, num_beams=num_beams, max_new_tokens=8)
        delayed = qa.generate(encoding, num_beams=num_beams, max_new_tokens=8, min_new_tokens=4)
    assert (free[:, 1:5] == EOS).any(), "the test needs an answer that ends early without the minimum"
    assert not (delayed[:, 1:5] == EOS).any()


def test_generate_refuses_nonsense_lengths(qa: FusionInDecoderQA) -> None:
    encoding = qa.encode(*_passages(1, 1, 5))
    with pytest.raises(ValueError):
        qa.generate(encoding, max_new_tokens=0)
    with pytest.raises(ValueError, match="batch, passages, length"):
        qa.encode(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long))


def test_presets_have_the_official_sizes(shared_dir: Path) -> None:
    manifest = json.loads((shared_dir / "fixtures" / "checkpoint-keys" / "hf_t5_base_unifiedqa_v2.json").read_text())
    config = t5_config("base")
    for key, value in manifest["config"].items():
        if key != "dropout_rate":
            assert getattr(config, key) == value, key
    # Parameter counts of t5-base / t5-large / t5-3b (tied embedding counted once).
    for preset, count in (("base", 222_903_552), ("large", 737_668_096), ("3b", 2_851_598_336)):
        with torch.device("meta"):
            assert FusionInDecoderQA.from_preset(preset).model.num_parameters() == count, preset
    with pytest.raises(ValueError, match="unknown t5-qa architecture"):
        t5_config("xl")


def _manifest_state_dict(shared_dir: Path, tied_names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Every key of the real checkpoint, each tensor filled with its own index (expanded: no memory)."""
    manifest = json.loads((shared_dir / "fixtures" / "checkpoint-keys" / "hf_t5_base_unifiedqa_v2.json").read_text())
    state_dict = {
        key: torch.tensor(float(index)).expand(shape) for index, (key, shape) in enumerate(manifest["keys"].items())
    }
    for key in T5_TIED_KEYS:
        state_dict[key] = state_dict["shared.weight"]
        if key not in tied_names:
            del state_dict[key]
    return state_dict


@pytest.mark.parametrize("tied_names", [T5_TIED_KEYS, ("shared.weight",)], ids=["all-four-names", "shared-only"])
def test_real_layout_loads_strictly(shared_dir: Path, tied_names: tuple[str, ...]) -> None:
    state_dict = _manifest_state_dict(shared_dir, tied_names)
    with torch.device("meta"):
        qa = FusionInDecoderQA.from_preset("base")

    assert load_t5_weights(qa.model, state_dict, "manifest") == []

    model = qa.model
    assert model.shared.weight is model.encoder.embed_tokens.weight is model.decoder.embed_tokens.weight
    assert model.shared.weight is model.lm_head.weight
    ours = model.state_dict()
    assert set(ours) == set(_manifest_state_dict(shared_dir, T5_TIED_KEYS))
    for key, value in state_dict.items():
        assert torch.equal(ours[key], value), key


def test_old_checkpoints_cross_attention_bias_is_ignored(shared_dir: Path) -> None:
    state_dict = _manifest_state_dict(shared_dir, ("shared.weight",))
    extra = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
    state_dict[extra] = torch.zeros(32, 12)
    with torch.device("meta"):
        qa = FusionInDecoderQA.from_preset("base")
    assert load_t5_weights(qa.model, state_dict) == [extra]


def test_broken_checkpoints_are_refused(shared_dir: Path) -> None:
    with torch.device("meta"):
        qa = FusionInDecoderQA.from_preset("base")

    untied = _manifest_state_dict(shared_dir, T5_TIED_KEYS)
    untied["lm_head.weight"] = torch.tensor(-1.0).expand(32128, 768)
    with pytest.raises(CheckpointError, match=r"lm_head\.weight should equal shared\.weight"):
        load_t5_weights(qa.model, untied)

    truncated = _manifest_state_dict(shared_dir, ("shared.weight",))
    del truncated["decoder.final_layer_norm.weight"]
    truncated["decoder.surprise"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing: decoder\.final_layer_norm\.weight(.|\n)*unexpected"):
        load_t5_weights(qa.model, truncated)


def test_leave_one_out_equals_encoding_without_each_passage() -> None:
    torch.manual_seed(0)
    config = {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "d_kv": 8}
    qa = FusionInDecoderQA.from_preset("base", vocab_size=100, **config).eval()
    ids = torch.randint(2, 100, (1, 5, 7))
    mask = torch.ones_like(ids)
    mask[0, 2, 5:] = 0  # a passage with padding
    with torch.no_grad():
        encoding = qa.encode(ids, mask)
        answer = qa.generate(encoding, max_new_tokens=4)[:, 1:]
        with_all, fast = qa.leave_one_out_log_probs(encoding, answer, chunk=2)
        slow = torch.cat([qa.answer_log_prob(encoding.without_passage(i), answer) for i in range(5)])
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_all, qa.answer_log_prob(encoding, answer), atol=1e-5, rtol=1e-5)


def test_leave_one_out_skips_answer_padding_and_any_chunking_agrees(qa: FusionInDecoderQA) -> None:
    """Padding after the answer (a batch's shorter answers) counts nothing; the removals per pass change nothing."""
    ids, mask = _passages(1, 6, 8)
    with torch.no_grad():
        encoding = qa.encode(ids, mask)
        answer = qa.generate(encoding, max_new_tokens=4)[:, 1:]
        padded = torch.cat([answer, torch.zeros(1, 3, dtype=torch.long)], dim=1)
        with_all, without = qa.leave_one_out_log_probs(encoding, padded)
        for chunk in (1, 4):
            expected = qa.leave_one_out_log_probs(encoding, answer, chunk=chunk)
            torch.testing.assert_close((with_all, without), expected, rtol=0, atol=1e-6)
        slow = torch.cat([qa.answer_log_prob(encoding.without_passage(i), answer) for i in range(6)])
    torch.testing.assert_close(without, slow, atol=1e-5, rtol=1e-5)


def test_half_precision_on_cpu_uses_plain_attention_and_casts_the_weights_once(qa: FusionInDecoderQA) -> None:
    """bf16 decoding passes the linear weights cast once; the tied LM head stays with the embedding, in float32."""
    model = copy.deepcopy(qa)
    model.set_precision("bf16")
    assert model.model.config._attn_implementation == "eager"
    ids, mask = _passages(2, 3, 8)
    with torch.no_grad(), model.autocast():
        encoding = model.encode(ids, mask)
        decoder_ids = model.generate(encoding, max_new_tokens=4)
        weights = autocast_weights(model.model)
        assert weights and "lm_head.weight" not in weights
        assert all(weight.dtype == torch.bfloat16 for weight in weights.values())
        cast_once = model.logits(encoding, decoder_ids, weights=weights)
        assert torch.equal(cast_once, model.logits(encoding, decoder_ids))
    assert autocast_weights(model.model) == {}
    model.set_precision("fp32")
    assert model.model.config._attn_implementation == "sdpa"


def test_bf16_decoding_casts_the_tied_head_for_the_head_only() -> None:
    """In bf16 the decoding weights hold the LM head's cast (UnifiedQA ties it to the embedding): the logits are
    autocast's own, and the embedding keeps reading its float32 matrix."""
    from fusioncam.precision import autocast_weights

    torch.manual_seed(2)
    model = FusionInDecoderQA.from_preset("base", **TINY).eval().requires_grad_(False)
    model.set_precision("bf16")
    ids, mask = _passages(2, 3, 8)
    start = torch.zeros(2, 1, dtype=torch.long)
    with torch.inference_mode(), model.autocast():
        encoding = model.encode(ids, mask)
        weights = model._decoding_weights()
        assert weights["lm_head.weight"].dtype == torch.bfloat16
        expected = model.logits(encoding, start, None, autocast_weights(model.model))
        assert torch.equal(model.logits(encoding, start, None, weights), expected)
    assert model.model.shared.weight.dtype == torch.float32 and model.model.lm_head.weight is model.model.shared.weight
