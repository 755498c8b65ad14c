"""BLIP image–text matching (ViT + BERT with cross-attention, ITM and ITC heads) and the BLIP captioner.

Two ways to score a pair, as BLIP defines them:
- ITM: the text (with `[ENC]` in place of `[CLS]`) cross-attends to all image tokens; a linear head on token 0
  gives [no-match, match] logits.
- ITC: image class token and text `[CLS]` (text-only mode, no cross-attention) are projected to a shared space;
  their cosine is the similarity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusioncam.models.architectures import architecture
from fusioncam.models.bert import DecoderCache, TextConfig, TextDecoder, TextEncoder, TextEncoderOutput
from fusioncam.models.config import merge_config
from fusioncam.models.decoding import DecodingConfig, decode
from fusioncam.models.layers import FullPrecisionLinear, Model
from fusioncam.models.vit import VisionConfig, VisionTransformer
from fusioncam.precision import autocast_weights, current_autocast_dtype


@dataclass
class BlipITMConfig:
    """A whole BLIP ITM model: its two encoders, the ITC projection size and the text length limit."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256
    max_txt_len: int = 35

    def __post_init__(self) -> None:
        if self.text.encoder_width != self.vision.width:
            raise ValueError(
                f"text.encoder_width ({self.text.encoder_width}) must equal vision.width ({self.vision.width})"
            )

    @classmethod
    def preset(cls, name: str) -> BlipITMConfig:
        """An official architecture (`base`: ViT-B/16, `large`: ViT-L/16; see `models.architectures`)."""
        return merge_config(cls(), architecture("blip-itm", name))

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: BlipITMConfig | None = None) -> BlipITMConfig:
        """Build from nested plain values (a preset's `[config]` table), on top of `base` when given."""
        return merge_config(base or cls(), values)


@dataclass
class ITMOutput:
    """ITM logits [B, 2] (column 1 = match) and, when probed, the cross-attention leaf of that block."""

    logits: torch.Tensor
    cross_attention: torch.Tensor | None = None

    @property
    def match_probability(self) -> torch.Tensor:
        return self.logits.softmax(dim=-1)[:, 1]


class BlipITM(Model):
    """BLIP's image–text matching model with both heads."""

    def __init__(self, config: BlipITMConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = VisionTransformer(config.vision)
        self.text_encoder = TextEncoder(config.text)
        self.vision_proj = FullPrecisionLinear(config.vision.width, config.embed_dim)
        self.text_proj = FullPrecisionLinear(config.text.hidden_size, config.embed_dim)
        self.itm_head = FullPrecisionLinear(config.text.hidden_size, 2)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.vision_encoder.grid_size

    def inference_only(self) -> list[nn.Module]:
        """The ViT: Grad-CAM differentiates the text tower from the probed block on, never the image encoder."""
        return [self.vision_encoder]

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalized pixels [B, 3, S, S] → image tokens [B, 1 + N, Dv]."""
        return self.vision_encoder(pixels)

    def itm(
        self,
        image_embeds: torch.Tensor,
        itm_input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        probe_block: int | None = None,
    ) -> ITMOutput:
        """Match logits for ids whose position 0 already holds `[ENC]` (see `BlipTokenizer.for_itm`)."""
        out: TextEncoderOutput = self.text_encoder(
            itm_input_ids, attention_mask, image_embeds=image_embeds, probe_block=probe_block
        )
        return ITMOutput(self.itm_head(out.last_hidden_state[:, 0]), out.cross_attention)

    def image_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Unit-norm ITC features of images [B, embed_dim]."""
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm ITC features of texts [B, embed_dim]; ids keep `[CLS]` first, no cross-attention."""
        hidden = self.text_encoder(input_ids, attention_mask).last_hidden_state
        return F.normalize(self.text_proj(hidden[:, 0]), dim=-1)

    def itc_similarity(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Cosine similarity of every image with every text [B_img, B_txt] (no temperature)."""
        return self.image_features(image_embeds) @ self.text_features(input_ids, attention_mask).T


@dataclass
class BlipCaptionConfig:
    """BLIP's captioner: ViT + causal BERT decoder; captions start with `prompt` (LAVIS: "a picture of ")."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    prompt: str = "a picture of "
    max_txt_len: int = 40

    def __post_init__(self) -> None:
        if self.text.encoder_width != self.vision.width:
            raise ValueError(
                f"text.encoder_width ({self.text.encoder_width}) must equal vision.width ({self.vision.width})"
            )

    @classmethod
    def preset(cls, name: str) -> BlipCaptionConfig:
        """An official architecture (`large`: ViT-L/16, the PNP-VQA captioner; `base`: ViT-B/16)."""
        return merge_config(cls(), architecture("blip-caption", name))

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: BlipCaptionConfig | None = None) -> BlipCaptionConfig:
        return merge_config(base or cls(), values)


class BlipCaption(Model):
    """Image → tokens (ViT) → caption logits (causal BERT decoder cross-attending to those tokens)."""

    def __init__(self, config: BlipCaptionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = VisionTransformer(config.vision)
        self.text_decoder = TextDecoder(config.text)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.vision_encoder.grid_size

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_encoder(pixels)

    def logits(
        self,
        image_embeds: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """Next-token logits [B, L, vocab]; ids start with `[DEC]` (teacher forcing, or a decoding step)."""
        return self.text_decoder(input_ids, attention_mask, image_embeds, cache=cache)

    def generate(
        self,
        image_embeds: torch.Tensor,
        prompt_ids: torch.Tensor,
        eos_id: int,
        pad_id: int,
        config: DecodingConfig,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Captions for image tokens [B, N, D] (any N: whole images or sampled patches) as ids [B, ≤ max_length].

        `prompt_ids` [B, P] start with `[DEC]`; `max_length` and `min_length` count the prompt, as in LAVIS. Unlike
        LAVIS (whose decoder never receives its cache under transformers ≥ 4.27 and re-runs the whole prefix every
        step) the decoder keeps a key/value cache, which gives the same tokens up to float rounding.
        """
        cache = self.text_decoder.new_cache()
        context = image_embeds.repeat_interleave(config.rows_per_sample, dim=0)
        decoder = self.text_decoder
        text_weights, head_weights = autocast_weights(decoder.bert), autocast_weights(decoder.lm_head)
        # The LM head multiplies by the word-embedding matrix, which the embedding also reads: cast here, once, for
        # the head alone (the embedding keeps reading float32), as `autocast_weights` does for the linear layers.
        dtype = current_autocast_dtype(context.device)
        head_matrix = decoder.bert.embeddings.word_embeddings.weight
        head_matrix = head_matrix if dtype is None else head_matrix.to(dtype)

        def next_logits(sequences: torch.Tensor) -> torch.Tensor:
            uncached = sequences[:, cache.length :]  # the prompt on the first step, then the token just chosen
            inputs = (uncached, torch.ones_like(sequences), context)
            text = torch.func.functional_call(decoder.bert, text_weights, inputs, {"causal": True, "cache": cache})
            logits = torch.func.functional_call(decoder.lm_head, head_weights, (text.last_hidden_state, head_matrix))
            # Float32 whatever the precision: the minimum length, penalties and top-k act on these scores.
            return logits[:, -1].float()

        return decode(next_logits, cache.reorder, prompt_ids, eos_id, pad_id, config, generator)


def caption_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """BLIP's captioning loss: next-token cross-entropy, ignoring padding and the prompt's own tokens."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :prompt_length] = -100
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )
