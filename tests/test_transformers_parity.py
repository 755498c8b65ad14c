"""The port against transformers' own BLIP: same weights through the HF-layout loader, same numbers."""

from __future__ import annotations

import pytest
import torch
from converters import TINY_HF_BLIP
from transformers import BlipConfig, BlipForImageTextRetrieval

from benchmarks.lavis_way import hf_blip_itm_config
from fusioncam.checkpoints import load_blip_itm_weights
from fusioncam.models.blip import BlipITM


@pytest.fixture(scope="module")
def pair() -> tuple[BlipForImageTextRetrieval, BlipITM]:
    torch.manual_seed(0)
    hf_config = BlipConfig(**TINY_HF_BLIP)
    hf = BlipForImageTextRetrieval(hf_config).eval()
    with torch.no_grad():  # move every weight off its default init so that a mix-up cannot hide
        for param in hf.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    ours = BlipITM(hf_blip_itm_config(hf_config.to_dict())).eval()
    ignored = load_blip_itm_weights(ours, hf.state_dict(), "hf", "transformers state_dict")
    assert all("position_ids" in key for key in ignored)
    return hf, ours


def test_hf_layout_keeps_the_vision_eps_of_its_source(pair) -> None:
    hf, ours = pair
    assert hf.config.vision_config.layer_norm_eps == 1e-5
    norms = [m for m in ours.vision_encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms)
    assert all(m.eps == 1e-12 for m in ours.text_encoder.modules() if isinstance(m, torch.nn.LayerNorm))


def test_itm_itc_and_cross_attention_match_transformers(pair) -> None:
    hf, ours = pair
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 96, 96)
    input_ids = torch.tensor([[98, 5, 17, 33, 2, 0, 0], [98, 8, 9, 10, 11, 12, 2]])
    attention_mask = (input_ids != 0).long()
    with torch.no_grad():
        hf_itm = hf(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).itm_score
        hf_itc = hf(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask, use_itm_head=False)
        image_embeds = ours.encode_image(pixels)
        hf_embeds = hf.vision_model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(image_embeds, hf_embeds, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            ours.itm(image_embeds, input_ids, attention_mask).logits, hf_itm, atol=1e-5, rtol=1e-5
        )
        # transformers' ITC scores every image against every text: [B_img, B_txt] like ours.
        ours_itc = ours.itc_similarity(image_embeds, input_ids, attention_mask)
        torch.testing.assert_close(ours_itc, hf_itc.itm_score, atol=1e-5, rtol=1e-5)

        block = 1
        hf_text = hf.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=hf_embeds,
            output_attentions=True,
        )
    probe = ours.itm(image_embeds, input_ids, attention_mask, probe_block=block).cross_attention
    torch.testing.assert_close(probe.detach(), hf_text.cross_attentions[block], atol=1e-6, rtol=1e-5)
