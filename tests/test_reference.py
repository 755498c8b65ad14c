"""Parity with the original implementations: every case under `$FUSIONCAM_REFERENCE_DIR`.

Each case directory holds `config.json` (with `"case"`, the kind), weights, inputs and outputs produced by the
original code. A kind that no landed feature implements yet is skipped with the reason "not implemented".
Tolerances are the case's own `suggested_atol`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import reference_root
from safetensors.torch import load_file

from fusioncam.checkpoints import lavis_blip_itm_config, load_blip_itm_weights, read_state_dict
from fusioncam.explain.gradcam import compute_gradcam
from fusioncam.models.blip import BlipITM
from fusioncam.text import BlipTokenizer


class Case:
    """One reference case directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = json.loads((path / "config.json").read_text())
        self.meta = json.loads((path / "cases.json").read_text())
        self.inputs = load_file(path / "inputs.safetensors") if (path / "inputs.safetensors").exists() else {}
        self.outputs = load_file(path / "outputs.safetensors") if (path / "outputs.safetensors").exists() else {}

    def check(self, name: str, actual: torch.Tensor) -> None:
        expected = self.outputs[name]
        atol = self.config["suggested_atol"][name]
        assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        error = (actual.float() - expected.float()).abs().max().item()
        assert error <= atol, f"{name}: max abs error {error:.3g} > atol {atol:.3g}"


def check_blip_itm_gradcam(case: Case) -> None:
    config = case.config
    model = BlipITM(
        lavis_blip_itm_config(config["vision"], config["text"], config["itc_embed_dim"], config["max_txt_len"])
    ).eval()
    load_blip_itm_weights(model, read_state_dict(case.path / "weights.safetensors"), "lavis", "reference weights")

    tokenizer = BlipTokenizer(case.path / "vocab.txt", max_length=config["max_txt_len"])
    assert tokenizer.enc_token_id == config["tokenizer"]["enc_token_id"]
    assert tokenizer.bos_token_id == config["tokenizer"]["bos_token_id"]
    encoding = tokenizer(case.meta["texts"])
    assert encoding.input_ids.tolist() == case.meta["input_ids"]
    assert encoding.attention_mask.tolist() == case.meta["attention_mask"]
    itm_ids = tokenizer.for_itm(encoding.input_ids)
    assert itm_ids.tolist() == case.meta["itm_input_ids"]

    pixels = case.inputs["image"].float()
    with torch.no_grad():
        image_embeds = model.encode_image(pixels)
        case.check("image_embeds", image_embeds)
        case.check("itm_logits", model.itm(image_embeds, itm_ids, encoding.attention_mask).logits)
        case.check("itc_sim", model.itc_similarity(image_embeds, encoding.input_ids, encoding.attention_mask))

    for block in config["block_nums"]:
        cam = compute_gradcam(model, image_embeds, itm_ids, encoding.attention_mask, block)
        case.check(f"b{block}_itm_logits_from_compute_gradcam", cam.itm_logits)
        for index in range(len(case.meta["texts"])):
            case.check(f"b{block}_gradcam_{index}", cam.lavis_rows(index))
        if f"b{block}_attention_map" in case.outputs:
            case.check(f"b{block}_attention_map", cam.attention)
            case.check(f"b{block}_attention_grad", cam.attention_grad)

    # PNP-VQA's forward_itm: '?' stripped from both ends, no length limit, sentence row of each sample.
    questions = [question.strip("?") for question in case.meta["pnp_questions"]]
    assert questions == case.meta["pnp_questions_after_strip"]
    pnp = tokenizer(questions, max_length=tokenizer.max_length)
    assert pnp.input_ids.tolist() == case.meta["pnp_input_ids"]
    cam = compute_gradcam(
        model, image_embeds, tokenizer.for_itm(pnp.input_ids), pnp.attention_mask, config["pnp_block_num"]
    )
    case.check("pnp_gradcams", cam.sentence_maps.flatten(1))


CHECKS: dict[str, Callable[[Case], None]] = {
    "blip_itm_gradcam": check_blip_itm_gradcam,
}


def _case_dirs() -> list[Path]:
    root = reference_root()
    return sorted(path for path in root.iterdir() if (path / "config.json").is_file()) if root.is_dir() else []


def test_reference_cases_found() -> None:
    assert _case_dirs(), f"no reference cases under {reference_root()}"


@pytest.mark.parametrize("case_dir", _case_dirs(), ids=lambda path: path.name)
def test_reference_case(case_dir: Path) -> None:
    kind = json.loads((case_dir / "config.json").read_text())["case"]
    if kind not in CHECKS:
        pytest.skip("not implemented")
    torch.manual_seed(0)
    CHECKS[kind](Case(case_dir))
