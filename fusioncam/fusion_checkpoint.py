"""fusioncam's own checkpoint format for a trained BLIP + EfficientSAM fusion (what `fusioncam train --what fusion`
writes and `--encoder fused --fusion PATH` reads).

One safetensors file holds the fusion's parameters only — BLIP and EfficientSAM stay frozen and come from their
own presets — and its header metadata (string → string) says what the tensors are and what they fit:

    format             FUSION_FORMAT
    fusion_config      FusionConfig as JSON
    blip_preset        name of the BLIP ITM preset the fusion was trained on
    sam_preset         name of the EfficientSAM preset whose embeddings it was trained on
    blip_architecture  JSON fingerprint of that BLIP's ViT (`blip_fingerprint`)

Metadata in the header rather than a sidecar file: the file cannot travel without it. Loading refuses a fusion on
any other BLIP or EfficientSAM, since it only means something on top of the frozen models it was trained with.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fusioncam.checkpoints import CheckpointError, load_strict
from fusioncam.models.blip import BlipITM, BlipITMConfig
from fusioncam.models.fusion import BlipFusionITM, FusionConfig

# The `format` metadata of a fusion checkpoint; the number changes when the file's meaning does.
FUSION_FORMAT = "fusioncam.blip-sam-fusion/1"


def blip_fingerprint(config: BlipITMConfig) -> dict[str, Any]:
    """The BLIP architecture a fusion is wired to: the ViT whose tokens it reads and adds to."""
    vision = config.vision
    return {
        "width": vision.width,
        "grid": list(vision.grid_size),
        "image_size": vision.image_size,
        "patch_size": vision.patch_size,
        "depth": vision.depth,
        "num_heads": vision.num_heads,
    }


def save_fusion(path: str | Path, model: BlipFusionITM, blip_preset: str, sam_preset: str) -> None:
    """Write the fusion's parameters (not BLIP's) and config to a safetensors file, naming the presets it fits."""
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.fusion.state_dict().items()}
    metadata = {
        "format": FUSION_FORMAT,
        "fusion_config": json.dumps(asdict(model.fusion.config), sort_keys=True),
        "blip_preset": blip_preset,
        "sam_preset": sam_preset,
        "blip_architecture": json.dumps(blip_fingerprint(model.config), sort_keys=True),
    }
    save_file(tensors, str(path), metadata=metadata)


def load_fusion(path: str | Path, blip_model: BlipITM, blip_preset: str, sam_preset: str) -> BlipFusionITM:
    """The fusion in `path` on top of `blip_model`, refused unless they are the presets (and BLIP architecture)
    it was trained on; every fusion parameter must be in the file and nothing else.
    """
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
    if metadata.get("format") != FUSION_FORMAT:
        raise CheckpointError(f"{path}: not a fusioncam fusion checkpoint (format {metadata.get('format')!r})")
    trained = (metadata["blip_preset"], metadata["sam_preset"])
    if trained != (blip_preset, sam_preset):
        raise CheckpointError(
            f"{path} was trained on BLIP {trained[0]!r} with EfficientSAM {trained[1]!r}, not on BLIP "
            f"{blip_preset!r} with EfficientSAM {sam_preset!r}: a fusion only fits the frozen models it was trained "
            "with; use those presets or train a fusion for these"
        )
    expected, given = json.loads(metadata["blip_architecture"]), blip_fingerprint(blip_model.config)
    if expected != given:
        raise CheckpointError(
            f"{path} was trained on BLIP {blip_preset!r} with the ViT {expected}, but the model given as "
            f"{blip_preset!r} has {given}: is the preset definition the one the fusion was trained with?"
        )
    model = BlipFusionITM(blip_model, FusionConfig.from_dict(json.loads(metadata["fusion_config"])))
    load_strict(model.fusion, load_file(str(path)), str(path))
    return model
