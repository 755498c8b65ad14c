"""The built-in model set (`synth-*` presets), loaded from the weights.toml shipped with the package as `fusioncam
demo` loads it offline, for the tests that measure it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import fusioncam
from fusioncam.api import BlipMatcher, load_captioner, load_qa, load_sam
from fusioncam.choices import Precision
from fusioncam.models.efficient_sam import EfficientSam
from fusioncam.synth_models import NAMES, ItmRecipe, vqa_config
from fusioncam.vqa import PNPVQA
from fusioncam.weights import ENV_REGISTRY


@dataclass
class BuiltIn:
    matcher: BlipMatcher
    sam: EfficientSam
    pipeline: PNPVQA


def load_built_in(precision: Precision = "fp32", explain: bool = False) -> BuiltIn:
    """Every built-in model in `precision`, whatever registry the environment points at; PNP-VQA at synth-itm's
    localising block."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(ENV_REGISTRY, raising=False)
        matcher = fusioncam.load(NAMES["itm"], device="cpu", download=False, precision=precision)
        sam = load_sam(NAMES["sam"], device="cpu", download=False, precision=precision)
        captioner = load_captioner(NAMES["caption"], device="cpu", download=False, precision=precision)
        qa = load_qa(NAMES["qa"], device="cpu", download=False, precision=precision)
    config = vqa_config(block=ItmRecipe().block, explain=explain)
    return BuiltIn(matcher, sam, PNPVQA(matcher, captioner, qa, config))
