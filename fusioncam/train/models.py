"""The models of a run: the BLIP ITM to train (or to freeze under a fusion), and a fusion's frozen EfficientSAM.

A BLIP ITM preset is trained from random weights only when asked (`from_scratch=True`), and then only if it has no
weights: its `[files.checkpoint]` is not declared, or is a `path` that does not exist yet. The vocabulary and the
`[config]` come from the preset as usual. A preset with weights is fine-tuned; one without them fails unless
`from_scratch` is set, so a mistyped checkpoint path never turns into a silently random model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fusioncam.api import (
    BlipMatcher,
    blip_preset_tokenizer,
    blip_preset_transform,
    build_blip_itm,
    load,
    load_sam,
)
from fusioncam.models.blip import BlipITM
from fusioncam.models.efficient_sam import EfficientSam
from fusioncam.models.fusion import BlipFusionITM, FusionConfig
from fusioncam.train.config import TrainConfig
from fusioncam.train.objectives import MatchingObjective
from fusioncam.train.seeds import INIT, derive_seed
from fusioncam.weights import Preset, get_preset, resolve_file


@dataclass
class RunModels:
    """What a run trains and what it needs around it."""

    objective: MatchingObjective
    matcher: BlipMatcher  # BLIP with its tokenizer and preprocessing (its model is the one being trained for itm)
    blip_preset: Preset
    vocab: Path
    sam: EfficientSam | None
    sam_preset: Preset | None


def build_models(config: TrainConfig, device: torch.device) -> RunModels:
    """The objective on `device` in training mode; a fusion's BLIP stays in eval mode (frozen, no dropout)."""
    matcher, blip_preset, vocab = _blip(config)
    if not isinstance(matcher.model, BlipITM):
        raise ValueError(f"model {config.model!r} is a fusion; training starts from a BLIP ITM preset")
    if config.what == "itm":
        model: BlipITM | BlipFusionITM = matcher.model.requires_grad_(True)
        sam = sam_preset = None
    else:
        assert config.sam is not None  # TrainConfig refuses a fusion without an EfficientSAM preset
        sam_preset = get_preset(config.sam)
        sam = load_sam(config.sam, device=str(device))
        fusion = FusionConfig.from_dict({"sam_channels": sam.config.encoder.neck_dim} | config.fusion)
        torch.manual_seed(derive_seed(config.seed, INIT))
        model = BlipFusionITM(matcher.model, fusion)
    objective = MatchingObjective(model).to(device).train()
    if isinstance(model, BlipFusionITM):
        model.blip.eval()
    return RunModels(objective, matcher, blip_preset, vocab, sam, sam_preset)


def _blip(config: TrainConfig) -> tuple[BlipMatcher, Preset, Path]:
    """The BLIP ITM preset with its weights, or randomly initialised under the `from_scratch` rule (on the CPU)."""
    preset = get_preset(config.model)
    absent = _absent_weights(preset)
    vocab = resolve_file(preset, "vocab")
    if absent is None and config.from_scratch:
        raise ValueError(
            f"preset {preset.name!r} has weights ({preset.file('checkpoint').origin}); from_scratch only starts "
            "presets without them. Drop from_scratch to fine-tune these weights, or point the checkpoint at a file "
            "that does not exist"
        )
    if absent is not None and not config.from_scratch:
        raise ValueError(
            f"preset {preset.name!r} has no weights ({absent}); pass from_scratch=True (--from-scratch) to train "
            "it from random weights"
        )
    if absent is None:
        return load(config.model, device="cpu"), preset, vocab
    blip_config = build_blip_itm(preset).config
    torch.manual_seed(derive_seed(config.seed, INIT))
    model = BlipITM(blip_config)
    tokenizer = blip_preset_tokenizer(preset, vocab, blip_config.max_txt_len, blip_config.text.vocab_size)
    transform = blip_preset_transform(preset, blip_config.vision.image_size)
    return BlipMatcher(model, tokenizer, transform, name=preset.name), preset, vocab


def _absent_weights(preset: Preset) -> str | None:
    """Why `preset` has no weights (no checkpoint declared, or a `path` not written yet); None when it has them."""
    spec = preset.files.get("checkpoint")
    if spec is None:
        return "it declares no checkpoint"
    if spec.source_kind == "path" and spec.path is not None and not spec.path.is_file():
        return f"its checkpoint {spec.path} does not exist"
    return None


class SamEmbeddings:
    """EfficientSAM embeddings of the training images; SAM is frozen, so an image's embedding never changes.

    With `cache`, each image is embedded once, on its own: a cached value must not depend on which batch first
    met the image, or a resumed run (which meets it in another batch) could differ in the last bits.
    """

    def __init__(self, sam: EfficientSam, cache: bool) -> None:
        self.sam = sam
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, image_keys: list[int]) -> torch.Tensor:
        if self.cache is None:
            return self.sam.embed(pixels).embeddings
        for key, image in zip(image_keys, pixels, strict=True):
            if key not in self.cache:
                self.cache[key] = self.sam.embed(image[None]).embeddings[0].cpu()
        return torch.stack([self.cache[key] for key in image_keys]).to(pixels.device)
