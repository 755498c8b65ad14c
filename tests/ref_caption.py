"""Reference checks for the BLIP captioner (LAVIS `BlipCaption`, `XBertLMHeadDecoder`, `PNPVQA.forward_cap`)."""

from __future__ import annotations

import torch
from converters import lavis_blip_caption_config
from refcase import Case

from fusioncam.checkpoints import load_blip_caption_weights, read_state_dict
from fusioncam.models.blip import BlipCaption, caption_loss
from fusioncam.models.decoding import DecodingConfig
from fusioncam.text import BlipTokenizer
from fusioncam.vqa import gather_patches


def check_blip_caption_decode(case: Case) -> None:
    config, meta = case.config, case.meta
    model = BlipCaption(
        lavis_blip_caption_config(config["vision"], config["text"], config["prompt"], config["max_txt_len"])
    ).eval()
    load_blip_caption_weights(model, read_state_dict(case.path / "weights.safetensors"), "lavis", "reference")
    tokenizer = BlipTokenizer(case.path / "vocab.txt", max_length=config["max_txt_len"])
    pixels = case.inputs["image"].float()

    with torch.no_grad():
        image_embeds = model.encode_image(pixels)
        case.check("image_embeds", image_embeds)

        # Teacher forcing: the texts carry the prompt; [CLS] becomes [DEC].
        encoding = tokenizer(meta["texts"])
        ids = encoding.input_ids.clone()
        ids[:, 0] = tokenizer.bos_token_id
        assert ids.tolist() == meta["tf_input_ids"]
        logits = model.logits(image_embeds, ids, encoding.attention_mask)
        case.check("tf_logits", logits)
        loss = caption_loss(logits, ids, encoding.attention_mask, config["prompt_length"])
        case.check("tf_loss", loss.reshape(1))

        prompt = tokenizer.prompt_ids(config["prompt"], len(pixels))
        assert prompt[0].tolist() == meta["prompt_input_ids"]
        assert prompt.shape[1] == config["prompt_length"]
        settings = config["generate"]
        decoding = DecodingConfig(
            strategy="greedy", max_length=settings["max_length"], min_length=settings["min_length"]
        )
        eos, pad = settings["eos_token_id"], settings["pad_token_id"]
        greedy = model.generate(image_embeds, prompt, eos, pad, decoding)
        assert greedy.tolist() == case.outputs["greedy_ids"].tolist()
        decoded = tokenizer.decode(greedy)
        assert decoded == meta["greedy_decoded"]
        assert [text[len(config["prompt"]) :] for text in decoded] == meta["greedy_captions"]

        # PNP-VQA: each caption decodes from its own patches only.
        patch_ids = case.inputs["pnp_patch_ids"].permute(1, 0, 2)  # stored [K, B, P]
        patches = gather_patches(image_embeds, patch_ids)
        case.check("pnp_image_embeds", patches)
        pnp_prompt = tokenizer.prompt_ids(config["prompt"], len(patches))
        pnp = model.generate(patches, pnp_prompt, eos, pad, decoding)
        assert pnp.tolist() == case.outputs["pnp_greedy_ids"].tolist()
        assert [text[len(config["prompt"]) :] for text in tokenizer.decode(pnp)] == meta["pnp_greedy_captions"]
        case.check("pnp_greedy_logits", model.logits(patches, pnp, torch.ones_like(pnp)))


CHECKS = {"blip_caption_decode": check_blip_caption_decode}
