"""Every key and shape of the official BLIP ITM checkpoints loads strictly into the matching preset.

The manifests in `shared/fixtures/checkpoint-keys/` list the real files' keys and shapes. Each tensor is filled
with its own index, so after loading we can tell which key a parameter came from: `KEYS_BY_HAND` names, for a
sample of every kind of parameter, the key it must come from, written out from the manifests and
`BlipITM.state_dict()` rather than derived from the converter under test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fusioncam.checkpoints import CheckpointError, load_blip_itm_weights
from fusioncam.models.blip import BlipITM, BlipITMConfig

MANIFESTS = {
    "lavis_blip_itm_base.json": ("base", "lavis"),
    "lavis_blip_itm_large.json": ("large", "lavis"),
    "hf_blip_itm_base_coco.json": ("base", "hf"),
    "hf_blip_itm_large_coco.json": ("large", "hf"),
}

# The text tower and the heads have the same keys in both layouts.
TEXT_AND_HEADS = {
    "text_encoder.embeddings.word_embeddings.weight": "text_encoder.embeddings.word_embeddings.weight",
    "text_encoder.embeddings.position_embeddings.weight": "text_encoder.embeddings.position_embeddings.weight",
    "text_encoder.embeddings.LayerNorm.weight": "text_encoder.embeddings.norm.weight",
    "text_encoder.embeddings.LayerNorm.bias": "text_encoder.embeddings.norm.bias",
    "text_encoder.encoder.layer.0.attention.self.query.weight": "text_encoder.layers.0.self_attn.query.weight",
    "text_encoder.encoder.layer.0.attention.self.key.bias": "text_encoder.layers.0.self_attn.key.bias",
    "text_encoder.encoder.layer.1.attention.self.value.weight": "text_encoder.layers.1.self_attn.value.weight",
    "text_encoder.encoder.layer.2.attention.output.dense.weight": "text_encoder.layers.2.self_attn.out.weight",
    "text_encoder.encoder.layer.3.attention.output.LayerNorm.bias": "text_encoder.layers.3.self_attn_norm.bias",
    "text_encoder.encoder.layer.4.crossattention.self.query.bias": "text_encoder.layers.4.cross_attn.query.bias",
    "text_encoder.encoder.layer.5.crossattention.self.key.weight": "text_encoder.layers.5.cross_attn.key.weight",
    "text_encoder.encoder.layer.6.crossattention.self.value.bias": "text_encoder.layers.6.cross_attn.value.bias",
    "text_encoder.encoder.layer.7.crossattention.output.dense.bias": "text_encoder.layers.7.cross_attn.out.bias",
    "text_encoder.encoder.layer.8.crossattention.output.LayerNorm.weight": (
        "text_encoder.layers.8.cross_attn_norm.weight"
    ),
    "text_encoder.encoder.layer.9.intermediate.dense.weight": "text_encoder.layers.9.mlp.fc1.weight",
    "text_encoder.encoder.layer.10.output.dense.bias": "text_encoder.layers.10.mlp.fc2.bias",
    "text_encoder.encoder.layer.11.output.LayerNorm.weight": "text_encoder.layers.11.mlp_norm.weight",
    "text_encoder.encoder.layer.11.output.LayerNorm.bias": "text_encoder.layers.11.mlp_norm.bias",
    "vision_proj.weight": "vision_proj.weight",
    "vision_proj.bias": "vision_proj.bias",
    "text_proj.weight": "text_proj.weight",
    "text_proj.bias": "text_proj.bias",
    "itm_head.weight": "itm_head.weight",
    "itm_head.bias": "itm_head.bias",
}

# Official checkpoint key → our `BlipITM` parameter, per layout; valid for both sizes (block and layer indices
# below 12: the large ViT has 24 blocks, both text towers 12 layers).
KEYS_BY_HAND = {
    "lavis": TEXT_AND_HEADS
    | {
        "visual_encoder.cls_token": "vision_encoder.cls_token",
        "visual_encoder.pos_embed": "vision_encoder.pos_embed",
        "visual_encoder.patch_embed.proj.weight": "vision_encoder.patch_embed.proj.weight",
        "visual_encoder.patch_embed.proj.bias": "vision_encoder.patch_embed.proj.bias",
        "visual_encoder.blocks.0.norm1.weight": "vision_encoder.blocks.0.norm1.weight",
        "visual_encoder.blocks.0.attn.qkv.weight": "vision_encoder.blocks.0.attn.qkv.weight",
        "visual_encoder.blocks.3.attn.proj.bias": "vision_encoder.blocks.3.attn.proj.bias",
        "visual_encoder.blocks.7.norm2.bias": "vision_encoder.blocks.7.norm2.bias",
        "visual_encoder.blocks.10.mlp.fc1.weight": "vision_encoder.blocks.10.mlp.fc1.weight",
        "visual_encoder.blocks.11.mlp.fc2.bias": "vision_encoder.blocks.11.mlp.fc2.bias",
        "visual_encoder.norm.weight": "vision_encoder.norm.weight",
        "visual_encoder.norm.bias": "vision_encoder.norm.bias",
    },
    "hf": TEXT_AND_HEADS
    | {
        "vision_model.embeddings.class_embedding": "vision_encoder.cls_token",
        "vision_model.embeddings.position_embedding": "vision_encoder.pos_embed",
        "vision_model.embeddings.patch_embedding.weight": "vision_encoder.patch_embed.proj.weight",
        "vision_model.embeddings.patch_embedding.bias": "vision_encoder.patch_embed.proj.bias",
        "vision_model.encoder.layers.0.layer_norm1.weight": "vision_encoder.blocks.0.norm1.weight",
        "vision_model.encoder.layers.0.self_attn.qkv.weight": "vision_encoder.blocks.0.attn.qkv.weight",
        "vision_model.encoder.layers.3.self_attn.projection.bias": "vision_encoder.blocks.3.attn.proj.bias",
        "vision_model.encoder.layers.7.layer_norm2.bias": "vision_encoder.blocks.7.norm2.bias",
        "vision_model.encoder.layers.10.mlp.fc1.weight": "vision_encoder.blocks.10.mlp.fc1.weight",
        "vision_model.encoder.layers.11.mlp.fc2.bias": "vision_encoder.blocks.11.mlp.fc2.bias",
        "vision_model.post_layernorm.weight": "vision_encoder.norm.weight",
        "vision_model.post_layernorm.bias": "vision_encoder.norm.bias",
    },
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
    ours = model.state_dict()
    for checkpoint_key, our_key in KEYS_BY_HAND[layout].items():
        # Values are key indices: equal only when `our_key` was loaded from `checkpoint_key`.
        assert torch.equal(ours[our_key], state_dict[checkpoint_key]), f"{checkpoint_key} should load into {our_key}"


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
