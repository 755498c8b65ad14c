"""Every key and shape of the official BLIP ITM checkpoints loads strictly into the matching preset.

The manifests in `shared/fixtures/checkpoint-keys/` list the real files' keys and shapes. Each tensor is filled
with its own index, so after loading we can tell that every parameter came from the right key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fusioncam.checkpoints import BLIP_ITM_LAYOUTS, CheckpointError, load_blip_itm_weights
from fusioncam.models.blip import BlipITM, BlipITMConfig

MANIFESTS = {
    "lavis_blip_itm_base.json": ("base", "lavis"),
    "lavis_blip_itm_large.json": ("large", "lavis"),
    "hf_blip_itm_base_coco.json": ("base", "hf"),
    "hf_blip_itm_large_coco.json": ("large", "hf"),
}


def _manifest_state_dict(manifest: dict) -> dict[str, torch.Tensor]:
    shapes = dict(manifest["keys"])
    # Retrieval checkpoints also carry momentum encoders and queues; one key name comes with a note attached.
    for key, shape in manifest.get("extra_keys_in_official_retrieval_checkpoint", {}).items():
        shapes[key.split(" ")[0]] = shape
    return {key: torch.full(shape, float(index)) for index, (key, shape) in enumerate(shapes.items())}


@pytest.mark.parametrize("filename", MANIFESTS)
def test_official_checkpoint_layout_loads_strictly(shared_dir: Path, filename: str) -> None:
    architecture, layout = MANIFESTS[filename]
    manifest = json.loads((shared_dir / "fixtures" / "checkpoint-keys" / filename).read_text())
    state_dict = _manifest_state_dict(manifest)
    with torch.device("meta"):  # skip allocating and initialising a real-size model
        model = BlipITM(BlipITMConfig.preset(architecture))

    ignored = load_blip_itm_weights(model, state_dict, layout, filename)

    assert all(re.search(r"_m\.|queue|ptr|temp|position_ids", key) for key in ignored)
    converted, _ = BLIP_ITM_LAYOUTS[layout].convert(state_dict)
    ours = model.state_dict()
    assert set(converted) == set(ours)
    for key, value in converted.items():
        assert torch.equal(ours[key], value), key


def test_truncated_checkpoint_is_refused_naming_the_missing_keys(shared_dir: Path) -> None:
    manifest = json.loads((shared_dir / "fixtures" / "checkpoint-keys" / "lavis_blip_itm_base.json").read_text())
    state_dict = _manifest_state_dict(manifest)
    del state_dict["itm_head.weight"]
    state_dict["text_encoder.surprise"] = torch.zeros(1)
    with torch.device("meta"):
        model = BlipITM(BlipITMConfig.preset("base"))
    with pytest.raises(CheckpointError, match=r"missing: itm_head\.weight(.|\n)*unexpected: text_encoder\.surprise"):
        load_blip_itm_weights(model, state_dict, "lavis")


def test_position_embedding_is_resampled_to_the_model_grid() -> None:
    """A checkpoint trained at 64² (4×4 patches) loads into a 96² model (6×6) with its grid resampled."""
    tiny = {
        "vision": {"image_size": 64, "width": 32, "depth": 1, "num_heads": 2},
        "text": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "encoder_width": 32},
        "embed_dim": 8,
    }
    source = BlipITM(BlipITMConfig.from_dict(tiny))
    ramp = torch.arange(4.0).repeat(4)  # varies along x only
    with torch.no_grad():
        source.vision_encoder.pos_embed[0, 1:] = ramp[:, None]
        source.vision_encoder.pos_embed[0, 0] = -7.0
    state_dict = {key.replace("vision_encoder.", "vision_model."): v for key, v in source.state_dict().items()}
    state_dict = {_HF_VIT_NAMES.get(key, key): v for key, v in state_dict.items()}
    target = BlipITM(BlipITMConfig.from_dict({**tiny, "vision": {**tiny["vision"], "image_size": 96}}))

    with pytest.raises(CheckpointError):  # transformers' ViT names are not LAVIS's
        load_blip_itm_weights(target, state_dict, "lavis")
    load_blip_itm_weights(target, state_dict, "hf")

    pos = target.vision_encoder.pos_embed[0]
    assert pos.shape == (1 + 36, 32)
    assert torch.all(pos[0] == -7.0)
    grid = pos[1:, 0].reshape(6, 6)
    assert torch.allclose(grid, grid[:1].expand(6, 6))  # still constant along y
    assert torch.all(grid[0, 1:] >= grid[0, :-1])  # still increasing along x


# Our ViT names for a 1-block tower → transformers' BLIP names (enough for the test above).
_HF_VIT_NAMES = {
    "vision_model.cls_token": "vision_model.embeddings.class_embedding",
    "vision_model.pos_embed": "vision_model.embeddings.position_embedding",
    "vision_model.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "vision_model.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "vision_model.norm.weight": "vision_model.post_layernorm.weight",
    "vision_model.norm.bias": "vision_model.post_layernorm.bias",
    **{
        f"vision_model.blocks.0.{ours}.{p}": f"vision_model.encoder.layers.0.{theirs}.{p}"
        for ours, theirs in [
            ("norm1", "layer_norm1"),
            ("norm2", "layer_norm2"),
            ("attn.qkv", "self_attn.qkv"),
            ("attn.proj", "self_attn.projection"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ]
        for p in ("weight", "bias")
    },
}
