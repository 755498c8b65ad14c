"""PNP-VQA's caption rounds and explanation on the tiny random-weight presets: what each round samples, and that
reduced precision runs the whole pipeline (its fidelity to fp32 is `test_precision.py`'s)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_presets import write_tiny_presets

from fusioncam.api import load, load_captioner, load_qa
from fusioncam.vqa import PNPVQA, VQAConfig

CONFIG = VQAConfig(block=1, num_captions=6, num_patches=8, caption_min_length=6, caption_max_length=9)


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_presets(tmp_path_factory.mktemp("presets"))


def _pipeline(presets: dict[str, Path], precision: str = "fp32", config: VQAConfig = CONFIG) -> PNPVQA:
    matcher = load(str(presets["itm"]), device="cpu", precision=precision)
    captioner = load_captioner(str(presets["caption"]), device="cpu", precision=precision)
    return PNPVQA(matcher, captioner, load_qa(str(presets["qa"]), device="cpu", precision=precision), config)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]


def test_a_later_round_samples_what_each_question_still_needs(
    presets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1 samples `num_captions` per question. After it, a full question gets no draws, and one that found 3
    new captions in 6 draws and lacks 3 gets twice the 6 draws that yield suggests, capped at `num_captions`."""
    pipeline = _pipeline(presets)
    captioner = pipeline.captioner
    rows: list[int] = []
    generate, decode = captioner.model.generate, captioner.tokenizer.decode

    def counted_generate(image_embeds: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        rows.append(len(image_embeds))
        return generate(image_embeds, *args, **kwargs)

    def decode_with_repeats(ids: torch.Tensor) -> list[str]:
        texts = decode(ids)
        if len(rows) == 1:  # round 1: question 0's last three captions repeat its first one
            texts[3:6] = [texts[0]] * 3
        # Every other caption made distinct, whatever the random captioner wrote.
        return [text if text in texts[:row] else f"{text} x{len(rows)}-{row}" for row, text in enumerate(texts)]

    monkeypatch.setattr(captioner.model, "generate", counted_generate)
    monkeypatch.setattr(captioner.tokenizer, "decode", decode_with_repeats)
    results = pipeline.answer(_images(), ["what is it?", "what colour?"], torch.Generator().manual_seed(0))
    assert rows == [12, 6]  # two questions × 6, then question 0's round
    for result in results:
        assert len({item.caption for item in result.evidence}) == CONFIG.num_captions
        assert all(len(item.patches) == CONFIG.num_patches for item in result.evidence)
    assert [item.caption[-5:] for item in results[0].evidence[3:]] == [" x2-0", " x2-1", " x2-2"]


def test_bf16_pipeline_answers_and_explains(presets: dict[str, Path]) -> None:
    results = _pipeline(presets, "bf16").answer(
        _images(), ["what is it?", "what colour?"], torch.Generator().manual_seed(0)
    )
    for result in results:
        assert isinstance(result.answer, str) and result.answer_map is not None
        assert len(result.evidence) == CONFIG.num_captions
        assert all(item.contribution is not None and math.isfinite(item.contribution) for item in result.evidence)
