"""Configs of the original implementations → ours, for the tests that load reference checkpoints.

The presets fusioncam ships carry their architecture in its own terms (`[config]` in weights.toml), so the library
never reads LAVIS, transformers or EfficientSAM settings; the reference cases and parity tests do, and convert them
here. transformers' `BlipConfig` → ours lives in `benchmarks/lavis_way.py`, which builds both models for `make bench`.
"""

from __future__ import annotations

from collections.abc import Mapping

from fusioncam.models.bert import TextConfig
from fusioncam.models.blip import BlipCaptionConfig, BlipITMConfig
from fusioncam.models.efficient_sam import EfficientSamConfig, ImageEncoderConfig, MaskDecoderConfig
from fusioncam.models.vit import VisionConfig


def _lavis_vision_config(vision: Mapping[str, object]) -> VisionConfig:
    """LAVIS `VisionTransformerEncoder` keyword arguments → our ViT config."""
    return VisionConfig(
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        width=vision["embed_dim"],
        depth=vision["depth"],
        num_heads=vision["num_heads"],
        mlp_ratio=vision.get("mlp_ratio", 4.0),
        qkv_bias=vision.get("qkv_bias", True),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
    )


def _bert_text_config(text: Mapping[str, object]) -> TextConfig:
    """A BERT `med_config.json`-style dict → our text config."""
    return TextConfig(
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        num_layers=text["num_hidden_layers"],
        num_heads=text["num_attention_heads"],
        intermediate_size=text["intermediate_size"],
        max_position_embeddings=text["max_position_embeddings"],
        layer_norm_eps=text.get("layer_norm_eps", 1e-12),
        encoder_width=text["encoder_width"],
        pad_token_id=text.get("pad_token_id", 0),
    )


def lavis_blip_itm_config(
    vision: Mapping[str, object], text: Mapping[str, object], embed_dim: int, max_txt_len: int
) -> BlipITMConfig:
    """Our config from LAVIS's: ViT keyword arguments and a BERT `med_config.json`-style dict."""
    return BlipITMConfig(_lavis_vision_config(vision), _bert_text_config(text), embed_dim, max_txt_len)


def lavis_blip_caption_config(
    vision: Mapping[str, object], text: Mapping[str, object], prompt: str, max_txt_len: int
) -> BlipCaptionConfig:
    """Our captioner config from LAVIS's `BlipCaption` settings."""
    return BlipCaptionConfig(_lavis_vision_config(vision), _bert_text_config(text), prompt, max_txt_len)


def efficient_sam_config(architecture: Mapping[str, object]) -> EfficientSamConfig:
    """Our config from the names of the original `build_efficient_sam`; absent names take its constants.

    The original's `encoder_neck_dims` sizes both neck convolutions by its first entry and declares the last as the
    output width, so the entries must agree; only GELU was ever released.
    """
    official = EfficientSamConfig()
    encoder, decoder = official.encoder, official.decoder
    neck_dims = list(architecture.get("encoder_neck_dims", [encoder.neck_dim]))
    if len(set(neck_dims)) != 1:
        raise ValueError(f"encoder_neck_dims {neck_dims}: the original model only works with equal entries")
    if architecture.get("activation", "gelu") != "gelu":
        raise ValueError(f"activation {architecture['activation']!r} is not supported: EfficientSAM uses gelu")
    return EfficientSamConfig(
        encoder=ImageEncoderConfig(
            image_size=architecture.get("img_size", encoder.image_size),
            patch_size=architecture.get("encoder_patch_size", encoder.patch_size),
            width=architecture.get("encoder_patch_embed_dim", encoder.width),
            depth=architecture.get("encoder_depth", encoder.depth),
            num_heads=architecture.get("encoder_num_heads", encoder.num_heads),
            mlp_ratio=architecture.get("encoder_mlp_ratio", encoder.mlp_ratio),
            neck_dim=neck_dims[0],
        ),
        decoder=MaskDecoderConfig(
            transformer_depth=architecture.get("decoder_transformer_depth", decoder.transformer_depth),
            transformer_mlp_dim=architecture.get("decoder_transformer_mlp_dim", decoder.transformer_mlp_dim),
            num_heads=architecture.get("decoder_num_heads", decoder.num_heads),
            attention_downsample_rate=architecture.get("attention_downsample_rate", decoder.attention_downsample_rate),
            num_multimask_outputs=architecture.get("num_multimask_outputs", decoder.num_multimask_outputs),
            iou_head_depth=architecture.get("iou_head_depth", decoder.iou_head_depth),
            iou_head_hidden_dim=architecture.get("iou_head_hidden_dim", decoder.iou_head_hidden_dim),
            upscaling_dims=tuple(architecture.get("decoder_upscaling_layer_dims", decoder.upscaling_dims)),
        ),
        max_num_points=architecture.get("decoder_max_num_input_points", official.max_num_points),
        pixel_mean=tuple(architecture.get("pixel_mean", official.pixel_mean)),
        pixel_std=tuple(architecture.get("pixel_std", official.pixel_std)),
    )


# A transformers `BlipConfig` small enough for a test (BLIP ITM parity and the LAVIS-way baseline).
TINY_HF_BLIP = {
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 96,
        "patch_size": 16,
        "initializer_range": 0.02,
    },
    "text_config": {
        "vocab_size": 99,
        "hidden_size": 48,
        "encoder_hidden_size": 32,
        "intermediate_size": 80,
        "num_hidden_layers": 3,
        "num_attention_heads": 6,
        "max_position_embeddings": 40,
    },
    "image_text_hidden_size": 24,
}
