"""The LAVIS way of explaining an image–text pair, on an implementation that shares no code with fusioncam.

LAVIS `compute_gradcam` runs BLIP ITM as a training step would: the vision and text encoders under autograd with
every parameter requiring a gradient, `loss.backward()` from the summed match logits, and the probed block's
cross-attention probabilities and their gradient read back from hooks. Here the model is transformers'
`BlipForImageTextRetrieval` (explicit attention everywhere, as LAVIS's own ViT and BERT), driven the way LAVIS
drives its model: the text encoder is given the image tokens directly and the ITM head reads token 0.

This is the baseline `make bench` times fusioncam against, and `tests/test_bench_baseline.py` checks that it gives
fusioncam's maps. `twin_models` puts one set of weights into both implementations, so that both time and output
can be compared on equal terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BlipConfig, BlipForImageTextRetrieval

from fusioncam.checkpoints import load_blip_itm_weights
from fusioncam.models.bert import TextConfig
from fusioncam.models.blip import BlipITM, BlipITMConfig
from fusioncam.models.vit import VisionConfig

# transformers `BlipConfig` values of BLIP ITM at the sizes the official checkpoints have: ViT-B/16 or ViT-L/16 at
# 384², BERT-base with cross-attention, the vocabulary of bert-base-uncased plus [DEC] and [ENC]. transformers
# initialises the vision tower with std 1e-10, which makes every image token alike and every Grad-CAM map flat;
# the text tower's 0.02 gives random weights whose maps have structure to compare.
_TEXT = {
    "vocab_size": 30524,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 512,
}
HF_BLIP_ITM: dict[str, dict[str, Any]] = {
    "base": {
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 384,
            "patch_size": 16,
            "initializer_range": 0.02,
        },
        "text_config": _TEXT | {"encoder_hidden_size": 768},
        "image_text_hidden_size": 256,
    },
    "large": {
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 384,
            "patch_size": 16,
            "initializer_range": 0.02,
        },
        "text_config": _TEXT | {"encoder_hidden_size": 1024},
        "image_text_hidden_size": 256,
    },
}


def hf_blip_itm_config(config: Mapping[str, Mapping[str, Any]], max_txt_len: int = 35) -> BlipITMConfig:
    """Our config from a Hugging Face `BlipConfig` dict (`config.json`), keeping its own LayerNorm eps.

    transformers' vision tower defaults to eps 1e-5 (LAVIS: 1e-6); the value the file says is the one its
    weights were converted for, so it is taken as is.
    """
    vision, text = config["vision_config"], config["text_config"]
    return BlipITMConfig(
        vision=VisionConfig(
            image_size=vision.get("image_size", 384),
            patch_size=vision.get("patch_size", 16),
            width=vision["hidden_size"],
            depth=vision["num_hidden_layers"],
            num_heads=vision["num_attention_heads"],
            mlp_ratio=vision["intermediate_size"] / vision["hidden_size"],
            layer_norm_eps=vision.get("layer_norm_eps", 1e-5),
        ),
        text=TextConfig(
            vocab_size=text["vocab_size"],
            hidden_size=text["hidden_size"],
            num_layers=text["num_hidden_layers"],
            num_heads=text["num_attention_heads"],
            intermediate_size=text["intermediate_size"],
            max_position_embeddings=text.get("max_position_embeddings", 512),
            layer_norm_eps=text.get("layer_norm_eps", 1e-12),
            encoder_width=text.get("encoder_hidden_size", vision["hidden_size"]),
            pad_token_id=text.get("pad_token_id", 0),
        ),
        embed_dim=config.get("image_text_hidden_size", 256),
        max_txt_len=max_txt_len,
    )


def twin_models(
    config: Mapping[str, Any], seed: int = 0, perturb: float = 0.0
) -> tuple[BlipForImageTextRetrieval, BlipITM]:
    """transformers' BLIP ITM with random weights and fusioncam's `BlipITM` holding the same weights.

    `perturb` adds that much Gaussian noise to every weight first: freshly initialised LayerNorms (weight 1, bias 0)
    and zero biases would hide a weight loaded into the wrong place. Both models come back in eval mode and on the
    CPU; the transformers one keeps `requires_grad` on every parameter, as LAVIS's model has it.
    """
    torch.manual_seed(seed)
    hf = BlipForImageTextRetrieval(BlipConfig(**config)).eval()
    if perturb:
        with torch.no_grad():
            for parameter in hf.parameters():
                parameter.add_(torch.randn_like(parameter) * perturb)
    ours = BlipITM(hf_blip_itm_config(hf.config.to_dict())).eval()
    load_blip_itm_weights(ours, hf.state_dict(), "hf", "transformers BlipForImageTextRetrieval")
    return hf, ours


@dataclass
class LavisGradCAM:
    """What LAVIS `compute_gradcam` yields for a batch, as tensors rather than its per-sample list.

    `token_maps` [B, L, gh, gw] (position 0 = `[ENC]`, padded positions 0), `sentence_maps` [B, gh, gw] (its row 1)
    and the ITM logits [B, 2] of the forward pass the maps came from.
    """

    token_maps: torch.Tensor
    sentence_maps: torch.Tensor
    itm_logits: torch.Tensor


def lavis_gradcam(
    model: BlipForImageTextRetrieval,
    pixels: torch.Tensor,
    itm_input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    block: int,
) -> LavisGradCAM:
    """Grad-CAM at text block `block` the way LAVIS computes it, for ids whose position 0 already holds `[ENC]`.

    The whole forward pass is recorded and back-propagated into every parameter that requires a gradient (all of
    them, unless the caller froze some), which is where LAVIS spends its time and memory; the gradients are
    dropped again afterwards. transformers' BLIP takes `input_ids` as given (LAVIS swaps `[CLS]` for `[ENC]`
    inside its forward), so both implementations must be handed the same `[ENC]`-first ids.
    """
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = model.text_encoder(
            input_ids=itm_input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            output_attentions=True,
        )
        attention = text.cross_attentions[block]
        attention.retain_grad()  # LAVIS keeps it with a tensor hook; the gradient seen is the same
        logits = model.itm_head(text.last_hidden_state[:, 0])
        logits[:, 1].sum().backward()
    grad = attention.grad
    model.zero_grad(set_to_none=True)
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size
    return gradcam_maps(attention.detach(), grad, attention_mask, (side, side), logits.detach())


def gradcam_maps(
    attention: torch.Tensor,
    grad: torch.Tensor,
    attention_mask: torch.Tensor,
    grid: tuple[int, int],
    itm_logits: torch.Tensor,
) -> LavisGradCAM:
    """LAVIS's arithmetic on the probed probabilities A and their gradient G, both [B, heads, L, 1 + N].

    Per token: the head mean of A · max(G, 0) over the patch grid (the image class column dropped, padded tokens
    zeroed). Sentence: the sum of the maps of tokens 1…n divided by n, n = real tokens − 2, i.e. the mean over the
    word-pieces between `[ENC]` and `[SEP]`. Written per sample, as LAVIS loops over its batch.
    """
    batch, heads, length, _ = attention.shape
    keep = attention_mask.view(batch, 1, length, 1, 1).to(attention.dtype)
    cams = attention[..., 1:].reshape(batch, heads, length, *grid) * keep
    grads = grad[..., 1:].clamp(min=0).reshape(batch, heads, length, *grid) * keep
    token_maps = (cams * grads).mean(dim=1)
    pieces = attention_mask.sum(dim=-1) - 2
    sentence_maps = torch.stack([token_maps[i, 1 : int(n) + 1].sum(dim=0) / n for i, n in enumerate(pieces)])
    return LavisGradCAM(token_maps, sentence_maps, itm_logits)
