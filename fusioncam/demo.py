"""`fusioncam demo`: every kind of output the tool makes, from one picture, on any machine.

With the real models (cached, or downloadable) the demo explains the example photo; on a machine without them and
without a network it runs the built-in toy models (`synth-*` presets, trained by this project on synthetic scenes
and shipped in the package) on a generated scene whose truth is known. Either way it writes, under one folder:
the heatmap with its per-word sheet, the SAM-refined heatmap with its mask, and, when the VQA models are there, a
PNP-VQA answer with its answer map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fusioncam.api import BlipMatcher, SamRefiner, load, load_captioner, load_qa, load_sam
from fusioncam.choices import PrecisionChoice
from fusioncam.explain.render import save_png
from fusioncam.images import load_image
from fusioncam.inputs import Pair, slug
from fusioncam.outputs import write_heatmap, write_vqa
from fusioncam.vqa import PNPVQA, VQAConfig

REAL_ITM, REAL_SAM = "blip-itm-base", "efficient-sam-vitt"
REAL_VQA = ("blip-itm-large", "blip-caption-large", "unifiedqa-v2-t5-base")
REAL_TEXT, REAL_QUESTION, REAL_BLOCK = "two cats lying on a couch", "what are the cats lying on?", 6


@dataclass(frozen=True)
class DemoPlan:
    """What the demo explains and with which presets; `vqa` None leaves VQA out (its models are not here)."""

    image: Path
    text: str
    block: int
    itm: str
    sam: str
    question: str | None = None
    vqa_presets: tuple[str, str, str] | None = None  # ITM, captioner, UnifiedQA
    vqa: VQAConfig | None = None
    expected_answer: str | None = None  # known for a generated scene
    note: str = ""


@dataclass
class DemoResult:
    """The records the demo wrote, by step, and where."""

    out: Path
    records: dict[str, dict] = field(default_factory=dict)


def builtin_plan(out: Path, seed: int = 0) -> DemoPlan:
    """The built-in toy models on a generated scene (written as `out/scene.png`), with a question they were made
    to answer and its true answer."""
    from fusioncam import synth_models

    scene = synth_models.demo_scene(seed)
    image = out / "scene.png"
    save_png(image, scene.image)
    names = synth_models.NAMES
    return DemoPlan(
        image=image,
        text=scene.text,
        block=scene.block,
        itm=names["itm"],
        sam=names["sam"],
        question=scene.question,
        vqa_presets=(names["itm"], names["caption"], names["qa"]),
        vqa=synth_models.vqa_config(block=scene.block),
        expected_answer=scene.answer,
        note=f"scene {scene.index} of the synthetic 'demo' split (seed {seed})",
    )


def real_plan(image: Path, text: str = REAL_TEXT, with_vqa: bool = False) -> DemoPlan:
    """The default real models on `image`; VQA with PNP-VQA's presets when `with_vqa` (they are large)."""
    return DemoPlan(
        image=image,
        text=text,
        block=REAL_BLOCK,
        itm=REAL_ITM,
        sam=REAL_SAM,
        question=REAL_QUESTION if with_vqa else None,
        vqa_presets=REAL_VQA if with_vqa else None,
        vqa=VQAConfig() if with_vqa else None,
    )


def run_demo(
    plan: DemoPlan, out: Path, device: str = "auto", seed: int = 0, precision: PrecisionChoice = "fp32"
) -> DemoResult:
    """Write the demo's outputs under `out`: `heatmap/`, `sam/` (refined map and mask) and `vqa/`."""
    picture = load_image(plan.image)
    result = DemoResult(out)
    matcher = load(plan.itm, device=device, precision=precision)
    explained = matcher.heatmap(picture, plan.text, block=plan.block, per_word=True)
    pair = _pair(plan, "heatmap", plan.text)
    result.records["heatmap"] = write_heatmap(out, pair, picture, explained, matcher.name)

    # The probability blend: a mask sharpens the map (the fork's logit blend is kept for parity, not for looks).
    refiner = SamRefiner(load_sam(plan.sam, device=device, precision=matcher.precision), blend="probability")
    (refined,) = refiner.refine([plan.image], [picture], explained.heatmap[None])
    sam = _pair(plan, "sam", plan.text)
    result.records["sam"] = write_heatmap(out, sam, picture, explained, matcher.name, refined=refined, save_mask=True)

    if plan.question is not None and plan.vqa_presets is not None and plan.vqa is not None:
        same_itm = plan.vqa_presets[0] == plan.itm
        result.records["vqa"] = _answer(plan, picture, out, device, seed, precision, matcher if same_itm else None)
    return result


def _answer(
    plan: DemoPlan,
    picture: np.ndarray,
    out: Path,
    device: str,
    seed: int,
    precision: PrecisionChoice,
    matcher: BlipMatcher | None,
) -> dict:
    assert plan.question is not None and plan.vqa_presets is not None and plan.vqa is not None
    itm, caption, qa = plan.vqa_presets
    matcher = matcher or load(itm, device=device, precision=precision)
    captioner = load_captioner(caption, device=device, precision=matcher.precision)
    pipeline = PNPVQA(matcher, captioner, load_qa(qa, device=device, precision=matcher.precision), plan.vqa)
    (answer,) = pipeline.answer([picture], [plan.question], torch.Generator().manual_seed(seed), keys=[plan.image])
    models = {"itm": itm, "caption": caption, "qa": qa, "encoder": "blip"}
    truth = {"expected_answer": plan.expected_answer} if plan.expected_answer is not None else {}
    return write_vqa(out, _pair(plan, "vqa", plan.question, truth), picture, answer, models)


def _pair(plan: DemoPlan, step: str, text: str, extra: dict | None = None) -> Pair:
    return Pair(plan.image, text, "demo", Path(step) / f"{plan.image.name}__{slug(text)}", extra or {})
