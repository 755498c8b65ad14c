"""Reference checks for BLIP ITM + Grad-CAM (LAVIS `BlipITM`, `compute_gradcam`, `PNPVQA.forward_itm`)."""

from __future__ import annotations

import torch
from converters import lavis_blip_itm_config
from refcase import Case

from fusioncam.checkpoints import load_blip_itm_weights, read_state_dict
from fusioncam.explain.gradcam import compute_gradcam
from fusioncam.models.blip import BlipITM
from fusioncam.text import BlipTokenizer


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


CHECKS = {"blip_itm_gradcam": check_blip_itm_gradcam}
