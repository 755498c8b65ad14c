"""The baseline `make bench` times fusioncam against computes fusioncam's maps, and the suite runs end to end.

`benchmarks/lavis_way.py` explains a pair as LAVIS does, on transformers' BLIP: everything under autograd, the
gradient back-propagated into every parameter, the maps read off the probed attention and its gradient. fusioncam
differentiates from the probed block on only. A speed-up is only worth reporting if both give the same maps.
"""

from __future__ import annotations

import io
import json
import time

import pytest
import torch
from converters import TINY_HF_BLIP

from benchmarks.lavis_way import lavis_gradcam, twin_models
from benchmarks.suite import Plan, Sizes, run_suite
from fusioncam.explain.gradcam import compute_gradcam
from fusioncam.models.efficient_sam import EfficientSamConfig, ImageEncoderConfig, MaskDecoderConfig
from fusioncam.models.fusion import FusionConfig

TINY_SAM = EfficientSamConfig(
    encoder=ImageEncoderConfig(image_size=64, width=32, depth=1, num_heads=2, neck_dim=32),
    decoder=MaskDecoderConfig(transformer_mlp_dim=64, num_heads=4, iou_head_hidden_dim=32, upscaling_dims=(16, 8)),
)


@pytest.fixture(scope="module")
def twins():
    hf, ours = twin_models(TINY_HF_BLIP, seed=0, perturb=0.2)
    return hf, ours.requires_grad_(False)


@pytest.mark.parametrize("block", [0, 1, 2])
def test_lavis_way_gives_fusioncams_token_and_sentence_maps(twins, block: int) -> None:
    hf, ours = twins
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 96, 96)
    # [ENC] (id 98 here) first, as both implementations must be given it; the first text is padded.
    ids = torch.tensor([[98, 5, 17, 33, 2, 0, 0], [98, 8, 9, 10, 11, 12, 2]])
    mask = (ids != 0).long()

    lavis = lavis_gradcam(hf, pixels, ids, mask, block)
    with torch.no_grad():
        image_embeds = ours.encode_image(pixels)
    cam = compute_gradcam(ours, image_embeds, ids, mask, block)

    scale = float(lavis.token_maps.abs().max())
    assert scale > 0
    assert (lavis.token_maps[0, 5:] == 0).all()  # padded positions
    torch.testing.assert_close(cam.token_maps, lavis.token_maps, atol=1e-6 * scale, rtol=1e-5)
    torch.testing.assert_close(cam.sentence_maps, lavis.sentence_maps, atol=1e-6 * scale, rtol=1e-5)
    torch.testing.assert_close(cam.itm_logits, lavis.itm_logits, atol=1e-5, rtol=1e-5)
    # Back-propagating into every parameter is the cost being measured; none of it is left behind.
    assert all(parameter.requires_grad and parameter.grad is None for parameter in hf.parameters())


def test_suite_runs_end_to_end_on_tiny_models(tmp_path) -> None:
    sizes = Sizes(
        {"base": TINY_HF_BLIP}, {"vitt": TINY_SAM}, FusionConfig(sam_channels=32, heads=2, d_ff=48), "tiny", (64, 48)
    )
    sections = ("heatmap", "sam-encoder")  # what --quick runs
    plan = Plan(sections, ("fp32", "bf16", "int8"), {"base": (2,)}, pipeline_batch=2, sam_archs=("vitt",), repeats=1)
    table, out = io.StringIO(), tmp_path / "bench.jsonl"

    started = time.perf_counter()
    assert run_suite(plan, sizes, torch.device("cpu"), out, "test", table)
    assert time.perf_counter() - started < 60

    records = [json.loads(line) for line in out.read_text().splitlines()]
    measured = [(record["section"], record["impl"], record["precision"], record["batch"]) for record in records]
    precisions = ("fp32", "bf16", "int8")
    assert measured == [
        ("heatmap", "lavis", "fp32", 2),
        *(("heatmap", "fusioncam", p, 2) for p in precisions),
        *(("sam-encoder", impl, p, 1) for p in precisions for impl in ("explicit", "fusioncam")),
    ]
    assert all(record["s_per_item"] > 0 and record["repeats"] == 1 for record in records)
    assert all({"device_name", "torch", "threads", "git_commit"} <= record.keys() for record in records)
    for record in records:
        if record["impl"] == "lavis":  # the same computation, compared with fusioncam fp32
            assert record["pearson_min"] > 0.99999 and record["itm_max_abs_diff"] < 1e-5
            assert record["vs_baseline"] == 1.0
        if record["section"] == "sam-encoder" and record["precision"] == "fp32" and record["impl"] == "explicit":
            assert record["cosine_min"] > 0.99999
    assert len(table.getvalue().splitlines()) > len(records)
