"""EfficientSAM: official checkpoint layouts load strictly, and one embedding serves many prompts.

The manifests in `shared/fixtures/checkpoint-keys/` list the keys and shapes of the released ViT-T and ViT-S
checkpoints. Each tensor there is one random value broadcast to its shape (no memory for 26M parameters), so
after loading we can tell that every parameter came from the right key.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from converters import efficient_sam_config

from fusioncam.checkpoints import CheckpointError, load_efficient_sam_weights, read_state_dict
from fusioncam.models.efficient_sam import EfficientSam, EfficientSamConfig, ImageEncoderConfig, MaskDecoderConfig

MANIFESTS = {"vitt": "efficient_sam_vitt.json", "vits": "efficient_sam_vits.json"}


def _manifest_state_dict(shared_dir: Path, architecture: str) -> dict[str, torch.Tensor]:
    manifest = json.loads((shared_dir / "fixtures" / "checkpoint-keys" / MANIFESTS[architecture]).read_text())
    values = torch.randn(len(manifest["keys"]), generator=torch.Generator().manual_seed(0))
    return {key: value.expand(shape) for value, (key, shape) in zip(values, manifest["keys"].items(), strict=True)}


def _meta_model(architecture: str) -> EfficientSam:
    with torch.device("meta"):  # skip allocating and initialising a real-size model
        return EfficientSam(EfficientSamConfig.preset(architecture))


def _assert_loaded(model: EfficientSam, state_dict: dict[str, torch.Tensor]) -> None:
    ours = model.state_dict()
    assert set(ours) == set(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(ours[key], value), key
    # Nothing may stay on the meta device (pixel statistics are config values, not unsaved buffers).
    assert not any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("architecture", MANIFESTS)
def test_official_checkpoint_layout_loads_strictly(shared_dir: Path, architecture: str) -> None:
    state_dict = _manifest_state_dict(shared_dir, architecture)
    model = _meta_model(architecture)
    load_efficient_sam_weights(model, state_dict, MANIFESTS[architecture])
    _assert_loaded(model, state_dict)


def test_vits_loads_from_the_zip_as_published(shared_dir: Path, tmp_path: Path) -> None:
    state_dict = _manifest_state_dict(shared_dir, "vits")
    checkpoint = tmp_path / "efficient_sam_vits.pt"
    torch.save({"model": state_dict}, checkpoint)
    archive = tmp_path / "efficient_sam_vits.pt.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(checkpoint, "efficient_sam_vits.pt")
        bundle.writestr("__MACOSX/._efficient_sam_vits.pt", b"Finder metadata")  # skipped, not ambiguous
    model = _meta_model("vits")
    load_efficient_sam_weights(model, read_state_dict(archive), archive.name)
    _assert_loaded(model, state_dict)


def test_zip_with_two_checkpoints_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "weights.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("a.pt", b"")
        bundle.writestr("b.pt", b"")
    with pytest.raises(CheckpointError, match=r"expected one checkpoint file in the archive, found a\.pt, b\.pt"):
        read_state_dict(archive)


def test_vitt_weights_are_refused_by_a_vits_model(shared_dir: Path) -> None:
    state_dict = _manifest_state_dict(shared_dir, "vitt")
    with pytest.raises(CheckpointError, match=r"wrong shape: image_encoder\.blocks\.0\.attn\.proj\.bias"):
        load_efficient_sam_weights(_meta_model("vits"), state_dict, "efficient_sam_vitt.pt")


def test_presets_are_the_original_builder() -> None:
    """`build_efficient_sam` constants with the two published (embed dim, heads) pairs give our presets."""
    vitt = efficient_sam_config({"encoder_patch_embed_dim": 192, "encoder_num_heads": 3})
    vits = efficient_sam_config({"encoder_patch_embed_dim": 384, "encoder_num_heads": 6})
    assert vitt == EfficientSamConfig.preset("vitt")
    assert vits == EfficientSamConfig.preset("vits")


# A tiny random model: 64² encoder input (4×4 embedding grid, 16×16 low-res masks).
TINY = EfficientSamConfig(
    encoder=ImageEncoderConfig(image_size=64, width=32, depth=1, num_heads=2, neck_dim=32),
    decoder=MaskDecoderConfig(transformer_mlp_dim=64, num_heads=4, iou_head_hidden_dim=32, upscaling_dims=(16, 8)),
)


@pytest.fixture(scope="module")
def tiny() -> EfficientSam:
    torch.manual_seed(0)
    return EfficientSam(TINY).eval()


def _prompts(seed: int, queries: int, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, queries, points, 2, generator=generator) * torch.tensor([50.0, 30.0])
    labels = torch.randint(-1, 4, (2, queries, points), generator=generator).float()
    return xy, labels


def test_embed_once_prompt_many_matches_the_one_shot_call(tiny: EfficientSam) -> None:
    images = torch.rand(2, 3, 30, 50, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embedding = tiny.embed(images)
        for seed, (queries, points) in enumerate([(3, 2), (1, 6), (2, 9)]):
            xy, labels = _prompts(seed, queries, points)
            for multimask in (True, False):
                reused = tiny.predict(embedding, xy, labels, multimask_output=multimask)
                one_shot = tiny(images, xy, labels, multimask_output=multimask)
                assert torch.equal(reused.low_res_masks, one_shot.low_res_masks)
                assert torch.equal(reused.iou_predictions, one_shot.iou_predictions)
                masks = 3 if multimask else 1
                assert reused.low_res_masks.shape == (2, queries, masks, 16, 16)
                assert reused.upscaled().shape == (2, queries, masks, 30, 50)


def test_queries_are_independent(tiny: EfficientSam) -> None:
    """Each query of a batch gets the masks it would get alone; upscaling one mask equals slicing all of them."""
    images = torch.rand(2, 3, 30, 50, generator=torch.Generator().manual_seed(2))
    xy, labels = _prompts(3, queries=3, points=4)
    with torch.no_grad():
        embedding = tiny.embed(images)
        batched = tiny.predict(embedding, xy, labels)
        alone = tiny.predict(embedding, xy[:, 1:2], labels[:, 1:2])
    torch.testing.assert_close(alone.low_res_masks, batched.low_res_masks[:, 1:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(alone.iou_predictions, batched.iou_predictions[:, 1:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(alone.upscaled(), batched.upscaled()[:, 1:2], rtol=0, atol=1e-6)


def test_prompts_are_cut_to_the_decoder_size(tiny: EfficientSam) -> None:
    xy = torch.arange(16.0).reshape(1, 1, 8, 2)
    labels = torch.arange(8.0).reshape(1, 1, 8)
    points, kept = tiny.prepare_prompts(xy, labels, (64, 32))
    assert points.shape == (1, 1, 6, 2)
    assert torch.equal(points, xy[:, :, :6] * torch.tensor([2.0, 1.0]))
    assert torch.equal(kept, labels[:, :, :6])


def test_mismatched_prompts_are_refused(tiny: EfficientSam) -> None:
    with torch.no_grad():
        embedding = tiny.embed(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"points must be \[B=2, Q, P, 2\]"):
        tiny.predict(embedding, torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2))
    with pytest.raises(ValueError, match=r"labels must be \(2, 1, 2\)"):
        tiny.predict(embedding, torch.zeros(2, 1, 2, 2), torch.ones(2, 2))
