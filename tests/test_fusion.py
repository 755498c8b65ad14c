"""The BLIP + EfficientSAM fusion: exact BLIP behaviour while the gate is closed, training reach, checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fusioncam.checkpoints import CheckpointError
from fusioncam.explain.gradcam import compute_gradcam
from fusioncam.fusion_checkpoint import load_fusion, save_fusion
from fusioncam.models.blip import BlipITM, BlipITMConfig
from fusioncam.models.difnet import DifnetEncoder
from fusioncam.models.fusion import BlipFusionITM, FusionConfig

# 64² images in 16² patches: a 4×4 grid of 32-wide tokens.
TINY_BLIP = {
    "vision": {"image_size": 64, "patch_size": 16, "width": 32, "depth": 2, "num_heads": 2},
    "text": {
        "vocab_size": 100,
        "hidden_size": 32,
        "num_layers": 3,
        "num_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 16,
        "encoder_width": 32,
    },
    "embed_dim": 16,
}
TINY_FUSION = FusionConfig(heads=2, d_ff=48)
ENC_ID = 99
BLOCK = 1


def _blip(width: int = 32) -> BlipITM:
    torch.manual_seed(0)
    vision, text = TINY_BLIP["vision"] | {"width": width}, TINY_BLIP["text"] | {"encoder_width": width}
    return BlipITM(BlipITMConfig.from_dict(TINY_BLIP | {"vision": vision, "text": text})).eval()


def _fused(config: FusionConfig = TINY_FUSION, gate: float | None = None) -> BlipFusionITM:
    """A fusion with random parameters everywhere; the gate as initialised unless `gate` is given."""
    model = BlipFusionITM(_blip(), config).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        if gate is not None:
            model.fusion.gate.fill_(gate)
        # Random LayerNorm parameters, so that nothing in the fusion is an identity by construction.
        for name, param in model.fusion.named_parameters():
            if "norm" in name:
                param.copy_(torch.randn_like(param) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return model


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels, SAM embeddings, ITM ids ([ENC] first) and a mask whose second text is padded."""
    generator = torch.Generator().manual_seed(2)
    pixels = torch.randn(2, 3, 64, 64, generator=generator)
    sam = torch.randn(2, 256, 16, 16, generator=generator)
    ids = torch.randint(1, ENC_ID, (2, 6), generator=generator)
    ids[:, 0] = ENC_ID
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return pixels, sam, ids, mask


def test_closed_gate_reproduces_blip_exactly() -> None:
    model = _fused()
    pixels, sam, ids, mask = _inputs()
    with torch.no_grad():
        plain, fused = model.blip.encode_image(pixels), model.encode_image(pixels, sam)
        assert model.fusion.difnet(plain, model.fusion.sam_tokens(sam)).last_hidden_state.abs().min() > 0
        assert torch.equal(fused, plain)
        assert torch.equal(model.itm(fused, ids, mask).logits, model.blip.itm(plain, ids, mask).logits)
        assert torch.equal(model.itc_similarity(fused, ids, mask), model.blip.itc_similarity(plain, ids, mask))
        assert torch.equal(model.train().encode_image(pixels, sam), plain)  # dropout in DIFNet changes nothing
    fused_cam = compute_gradcam(model.eval(), fused, ids, mask, BLOCK)
    plain_cam = compute_gradcam(model.blip, plain, ids, mask, BLOCK)
    assert torch.equal(fused_cam.token_maps, plain_cam.token_maps)
    assert torch.equal(fused_cam.sentence_maps, plain_cam.sentence_maps)
    assert torch.equal(fused_cam.itm_logits, plain_cam.itm_logits)


def test_open_gate_changes_scores_and_heatmaps() -> None:
    model = _fused(gate=0.5)
    pixels, sam, ids, mask = _inputs()
    with torch.no_grad():
        plain, fused = model.blip.encode_image(pixels), model.encode_image(pixels, sam)
        assert not torch.equal(model.itm(fused, ids, mask).logits, model.blip.itm(plain, ids, mask).logits)
    fused_cam = compute_gradcam(model, fused, ids, mask, BLOCK)
    plain_cam = compute_gradcam(model.blip, plain, ids, mask, BLOCK)
    assert fused_cam.sentence_maps.shape == (2, *model.grid_size) == (2, 4, 4)
    assert not torch.equal(fused_cam.sentence_maps, plain_cam.sentence_maps)


def _train_step(model: BlipFusionITM) -> None:
    """An ITM + ITC loss on fused tokens, backpropagated."""
    pixels, sam, ids, mask = _inputs()
    fused = model.encode_image(pixels, sam)
    itm = F.cross_entropy(model.itm(fused, ids, mask).logits, torch.tensor([1, 0]))
    itc = F.cross_entropy(model.itc_similarity(fused, ids, mask), torch.arange(2))
    (itm + itc).backward()


def test_gradients_open_the_gate_then_reach_the_fusion_but_never_blip() -> None:
    model = _fused().train()
    _train_step(model)
    assert model.fusion.gate.grad != 0
    # A closed gate multiplies the fusion's output by 0: the gate is the only thing that can move first.
    assert all(not param.grad.any() for name, param in model.fusion.named_parameters() if name != "gate")

    model = _fused(gate=0.5).train()
    _train_step(model)
    unreached = [name for name, param in model.fusion.named_parameters() if param.grad is None or not param.grad.any()]
    assert unreached == []
    assert all(not param.requires_grad and param.grad is None for param in model.blip.parameters())


def test_rows_summing_to_zero_are_not_padding() -> None:
    # A zero projection makes every SAM token exactly zero: DIFNet's padding rule (padding_idx = 0) would mask the
    # whole pixel stream and produce NaN, which not even a zero gate could hide.
    model = _fused(gate=1.0)
    with torch.no_grad():
        for param in model.fusion.sam_tokens.parameters():
            param.zero_()
        pixels, sam, _, _ = _inputs()
        assert torch.isfinite(model.encode_image(pixels, sam)).all()
        tokens, sam_tokens = model.blip.encode_image(pixels), model.fusion.sam_tokens(sam)
        original_rule = DifnetEncoder(dataclasses.replace(model.fusion.difnet.config, padding_idx=0)).eval()
        original_rule.load_state_dict(model.fusion.difnet.state_dict())
        assert original_rule(tokens, sam_tokens).last_hidden_state.isnan().all()


def test_sam_tokens_are_area_pooled_cells_after_their_mean() -> None:
    model = _fused()
    sam = _inputs()[1]
    sam_tokens = model.fusion.sam_tokens
    # 16×16 → 4×4: cell (1, 2) is the mean of rows 4..7 and columns 8..11.
    cell = sam[:, :, 4:8, 8:12].mean(dim=(2, 3))
    cells = F.avg_pool2d(sam, 4).flatten(2).transpose(1, 2)
    with torch.no_grad():
        tokens = sam_tokens(sam)
        torch.testing.assert_close(tokens[:, 1 + 1 * 4 + 2], sam_tokens.norm(sam_tokens.proj(cell)))
        torch.testing.assert_close(tokens[:, 0], sam_tokens.norm(sam_tokens.proj(cells.mean(1))))
    assert tokens.shape == (2, 1 + 16, 32)


def test_wrong_sam_embeddings_and_heads_are_refused() -> None:
    model = _fused()
    pixels = _inputs()[0]
    with pytest.raises(ValueError, match=r"SAM embedding must be \[2, 256, h, w\]"):
        model.encode_image(pixels, torch.randn(2, 128, 16, 16))
    with pytest.raises(ValueError, match="fusion heads must divide the BLIP token width 32"):
        BlipFusionITM(_blip(), FusionConfig(heads=3))
    assert BlipFusionITM(_blip(), FusionConfig()).fusion.difnet.config.heads == 1  # 32 // 64, at least one


def _saved(tmp_path: Path, config: FusionConfig = TINY_FUSION) -> tuple[Path, BlipFusionITM]:
    model = _fused(config, gate=0.25)
    path = tmp_path / "fusion.safetensors"
    save_fusion(path, model, "blip-tiny", "sam-tiny")
    return path, model


def test_save_load_round_trip(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY_FUSION, Lf=1, T=3, N=2, dropout=0.0)
    path, saved = _saved(tmp_path, config)
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
        assert set(file.keys()) == set(saved.fusion.state_dict())  # no BLIP weights in the file
    assert (metadata["blip_preset"], metadata["sam_preset"]) == ("blip-tiny", "sam-tiny")
    assert json.loads(metadata["blip_architecture"])["grid"] == [4, 4]

    loaded = load_fusion(path, _blip(), "blip-tiny", "sam-tiny").eval()
    assert loaded.fusion.config == config
    for key, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    pixels, sam, ids, mask = _inputs()
    with torch.no_grad():
        fused = loaded.encode_image(pixels, sam)
        assert torch.equal(fused, saved.encode_image(pixels, sam))
        assert torch.equal(loaded.itm(fused, ids, mask).logits, saved.itm(fused, ids, mask).logits)


@pytest.mark.parametrize(("blip_preset", "sam_preset"), [("blip-other", "sam-tiny"), ("blip-tiny", "sam-other")])
def test_loading_onto_other_presets_is_refused(tmp_path: Path, blip_preset: str, sam_preset: str) -> None:
    path = _saved(tmp_path)[0]
    message = (
        r"trained on BLIP 'blip-tiny' with EfficientSAM 'sam-tiny', "
        rf"not on BLIP '{blip_preset}' with EfficientSAM '{sam_preset}'"
    )
    with pytest.raises(CheckpointError, match=message):
        load_fusion(path, _blip(), blip_preset, sam_preset)


def test_loading_onto_another_blip_architecture_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)[0]
    with pytest.raises(CheckpointError, match=r"'width': 32.*but the model given as 'blip-tiny' has .*'width': 48"):
        load_fusion(path, _blip(width=48), "blip-tiny", "sam-tiny")


def test_key_mismatch_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)[0]
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    tensors = load_file(str(path))
    del tensors["gate"]
    tensors["blip.itm_head.weight"] = torch.zeros(2, 32)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"missing: gate\n.*unexpected: blip\.itm_head\.weight"):
        load_fusion(path, _blip(), "blip-tiny", "sam-tiny")


def test_other_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "blip.safetensors"
    save_file(_blip().state_dict(), str(path))
    with pytest.raises(CheckpointError, match="not a fusioncam fusion checkpoint"):
        load_fusion(path, _blip(), "blip-tiny", "sam-tiny")
