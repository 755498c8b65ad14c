"""Reduced precision: what `--precision` switches, and how far bf16 and int8 stay from fp32.

Fidelity is measured on the built-in models (trained by this project on synthetic scenes, `synth-*` presets) over
held-out scenes: per-pair heatmap correlation and score changes, pointing and energy figures, SAM masks, PNP-VQA
answers and the captions behind them. The bounds are the issue's: heatmap Pearson ≥ 0.99 to fp32; pointing,
energy, mask IoU and VQA accuracy within 0.02 of fp32. fp32 itself is checked bit for bit by the reference tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from built_in import BuiltIn, load_built_in
from typer.testing import CliRunner

from fusioncam.cli import app
from fusioncam.evaluate import PEAK_IN_BOX, read_referring, score_map
from fusioncam.grounding import summarize_grounding
from fusioncam.models.blip import BlipITM, BlipITMConfig
from fusioncam.models.layers import FullPrecisionLinear
from fusioncam.precision import resolve_precision
from fusioncam.synth import generate, synth_scene
from fusioncam.synth_models import NAMES, ItmRecipe, measure_sam, measure_vqa, one_thread, vqa_scenes
from fusioncam.weights import ENV_REGISTRY

SEED, SPLIT = 0, "test"
ITM = ItmRecipe()
POINTING_SCENES, SAM_SCENES, VQA_SCENES = 60, 40, 60
MIN_PEARSON = 0.99
FIGURE_TOLERANCE = 0.02
MAX_SCORE_CHANGE = 0.02  # of an ITM probability or an ITC cosine
REDUCED = ["bf16", "int8"]


@pytest.fixture(autouse=True)
def bundled_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights.toml shipped with the package (the synth-* presets), whatever the environment points at."""
    monkeypatch.delenv(ENV_REGISTRY, raising=False)


@pytest.fixture(scope="module")
def models() -> dict[str, BuiltIn]:
    return {precision: load_built_in(precision, explain=True) for precision in ["fp32", *REDUCED]}


@pytest.fixture(scope="module")
def referring(tmp_path_factory: pytest.TempPathFactory) -> list:
    data = generate(tmp_path_factory.mktemp("scenes"), POINTING_SCENES, SEED, image_size=ITM.image_size, split=SPLIT)
    return read_referring(data.referring_jsonl)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


# --- what the switch does ---------------------------------------------------------------------------------------


def test_auto_and_refusals() -> None:
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16 else "fp32")
    assert resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_precision("int8", "cuda")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp64", "cpu")  # type: ignore[arg-type]


def _tiny_itm() -> BlipITM:
    torch.manual_seed(0)
    config = BlipITMConfig.from_dict(
        {
            "vision": {"image_size": 64, "width": 32, "depth": 2, "num_heads": 4},
            "text": {
                "vocab_size": 50,
                "hidden_size": 32,
                "num_layers": 2,
                "num_heads": 4,
                "intermediate_size": 64,
                "encoder_width": 32,
            },
            "embed_dim": 16,
        }
    )
    return BlipITM(config).eval().requires_grad_(False)


def test_bf16_keeps_heads_and_the_probed_attention_in_float32() -> None:
    from fusioncam.explain.gradcam import compute_gradcam

    model = _tiny_itm()
    model.set_precision("bf16")
    pixels, ids = torch.randn(2, 3, 64, 64), torch.randint(5, 50, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad(), model.autocast():
        tokens = model.encode_image(pixels)
        features = model.image_features(tokens)
    with model.autocast():
        cam = compute_gradcam(model, tokens, ids, mask, block=1)
    assert tokens.dtype == torch.float32  # the residual stream stays float32; the matmuls inside ran in bf16
    assert features.dtype == cam.itm_logits.dtype == cam.attention.dtype == cam.attention_grad.dtype == torch.float32
    # The heads are float32 linears: the same numbers as nn.Linear outside autocast, and inside it.
    head = model.itm_head
    assert isinstance(head, FullPrecisionLinear)
    x = torch.randn(3, 32)
    plain = torch.nn.functional.linear(x, head.weight, head.bias)
    assert torch.equal(head(x), plain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(head(x), plain)


def test_int8_quantises_only_what_no_gradient_flows_through() -> None:
    model = _tiny_itm()
    model.set_precision("int8")
    linear_types = {type(m) for m in model.vision_encoder.modules() if "Linear" in type(m).__name__}
    assert torch.nn.Linear not in linear_types and linear_types, linear_types  # all quantised
    assert all(type(m) is torch.nn.Linear for m in model.text_encoder.modules() if "Linear" in type(m).__name__)
    assert isinstance(model.itm_head, FullPrecisionLinear)
    with pytest.raises(ValueError, match="cannot be turned back"):
        model.set_precision("fp32")


# --- fidelity on held-out scenes --------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", REDUCED)
def test_heatmaps_and_scores_stay_with_fp32(precision: str, models: dict[str, BuiltIn], referring: list) -> None:
    from fusioncam.images import load_image

    images = [load_image(record.image) for record in referring]
    texts = [record.text for record in referring]
    found = {}
    with one_thread():
        for name in ("fp32", precision):
            found[name] = [
                heatmap
                for start in range(0, len(texts), 32)
                for heatmap in models[name].matcher.heatmaps(
                    images[start : start + 32], texts[start : start + 32], block=ITM.block
                )
            ]
    pearson = [_pearson(a.heatmap, b.heatmap) for a, b in zip(found["fp32"], found[precision], strict=True)]
    itm = max(abs(a.itm_score - b.itm_score) for a, b in zip(found["fp32"], found[precision], strict=True))
    itc = max(abs(a.itc_score - b.itc_score) for a, b in zip(found["fp32"], found[precision], strict=True))
    reports = {
        name: summarize_grounding(
            [score_map(h.heatmap, r, i.shape[:2], PEAK_IN_BOX) for h, r, i in zip(maps, referring, images, strict=True)]
        )
        for name, maps in found.items()
    }
    print(
        f"\n{precision}: heatmap Pearson mean {np.mean(pearson):.5f} min {min(pearson):.5f}; max ΔITM {itm:.2e}, "
        f"max ΔITC {itc:.2e}; pointing {reports[precision].pointing:.3f} (fp32 {reports['fp32'].pointing:.3f}), "
        f"energy {reports[precision].energy:.3f} (fp32 {reports['fp32'].energy:.3f}) over {len(referring)} pairs"
    )
    assert min(pearson) >= MIN_PEARSON
    assert itm <= MAX_SCORE_CHANGE and itc <= MAX_SCORE_CHANGE
    assert abs(reports[precision].pointing - reports["fp32"].pointing) <= FIGURE_TOLERANCE
    assert abs(reports[precision].energy - reports["fp32"].energy) <= FIGURE_TOLERANCE


@pytest.mark.parametrize("precision", REDUCED)
def test_sam_masks_stay_with_fp32(precision: str, models: dict[str, BuiltIn]) -> None:
    scenes = [synth_scene(index, SEED, image_size=ITM.image_size, split=SPLIT)[0] for index in range(SAM_SCENES)]
    with one_thread():
        figures = {name: measure_sam(models[name].sam, scenes, SEED) for name in ("fp32", precision)}
    print(f"\n{precision}: SAM mask IoU {figures[precision].iou:.3f} (fp32 {figures['fp32'].iou:.3f})")
    assert abs(figures[precision].iou - figures["fp32"].iou) <= FIGURE_TOLERANCE


@pytest.mark.parametrize("precision", REDUCED)
def test_vqa_answers_and_captions_stay_with_fp32(precision: str, models: dict[str, BuiltIn]) -> None:
    scenes = vqa_scenes(VQA_SCENES, SEED, ITM.image_size, SPLIT)
    with one_thread():
        figures = {name: measure_vqa(models[name].pipeline, scenes, SEED) for name in ("fp32", precision)}
        # The captions of one question, sampled from the same seed: how many of their tokens agree.
        scene, description = scenes[0]
        question = description.questions[0].question
        results = {
            name: models[name].pipeline.answer([scene.image], [question], torch.Generator().manual_seed(SEED))[0]
            for name in ("fp32", precision)
        }
    words = [[item.caption.split() for item in results[name].evidence] for name in ("fp32", precision)]
    pairs = [(a, b) for a, b in zip(*words, strict=False)]
    agreement = sum(x == y for a, b in pairs for x, y in zip(a, b, strict=False)) / sum(
        max(len(a), len(b)) for a, b in pairs
    )
    accuracy = {name: figure.accuracy for name, figure in figures.items()}
    print(
        f"\n{precision}: PNP-VQA accuracy {accuracy[precision]:.3f} (fp32 {accuracy['fp32']:.3f}) over "
        f"{sum(figures['fp32'].asked.values())} questions; caption word agreement {agreement:.3f}"
    )
    assert abs(accuracy[precision] - accuracy["fp32"]) <= FIGURE_TOLERANCE
    assert results[precision].answer == results["fp32"].answer
    assert agreement >= 0.9


# --- every command --------------------------------------------------------------------------------------------


def _run(*args: object) -> dict:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    scene, description = synth_scene(3, SEED, image_size=ITM.image_size, split=SPLIT)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    return path, description.expressions[0], description.questions[0].question


@pytest.mark.parametrize(
    ("command", "args", "output"),
    [
        ("heatmap", [], ".heatmap.npy"),
        ("heatmap", ["--encoder", "esam", "--sam-model", NAMES["sam"]], ".heatmap.npy"),
        ("segment", ["--sam-model", NAMES["sam"]], ".segment-mask.png"),
        (
            "vqa",
            ["--caption-model", NAMES["caption"], "--qa-model", NAMES["qa"], "--num-captions", "8"],
            ".question.npy",
        ),
    ],
)
def test_commands_run_in_bf16_and_name_it(
    command: str, args: list[str], output: str, scene_png: tuple[Path, str, str], tmp_path: Path
) -> None:
    image, text, question = scene_png
    common = ["--model", NAMES["itm"], "--device", "cpu", "--block", ITM.block, "--quiet"]
    records = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        _run(
            command,
            image,
            question if command == "vqa" else text,
            *common,
            *args,
            "--precision",
            precision,
            "--out",
            out,
        )
        (record_path,) = [p for p in out.glob("*.json") if not p.name.startswith("summary")]
        records[precision] = (json.loads(record_path.read_text()), out)
    record, out = records["bf16"]
    assert record["run"]["precision"] == "bf16" and records["fp32"][0]["run"]["precision"] == "fp32"
    fp32, bf16 = (next(folder.glob(f"*{output}")) for _, folder in records.values())
    if output.endswith(".npy"):
        assert _pearson(torch.from_numpy(np.load(fp32)), torch.from_numpy(np.load(bf16))) >= MIN_PEARSON
    else:  # the mask
        masks = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127 for path in (fp32, bf16)]
        assert (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum() >= 0.95
    if command == "vqa":
        assert record["answer"] == records["fp32"][0]["answer"]


def test_score_and_eval_in_bf16(scene_png: tuple[Path, str, str], tmp_path: Path) -> None:
    image, text, _ = scene_png
    scores = {
        precision: json.loads(
            _run(
                "score", image, text, "--model", NAMES["itm"], "--device", "cpu", "--jsonl", "--precision", precision
            ).stdout.splitlines()[0]
        )
        for precision in ("fp32", "bf16")
    }
    assert scores["bf16"]["run"]["precision"] == "bf16"
    assert abs(scores["bf16"]["itm_score"] - scores["fp32"]["itm_score"]) <= MAX_SCORE_CHANGE
    data = generate(tmp_path / "scenes", 4, SEED, image_size=ITM.image_size, split=SPLIT)
    for evaluation in ("pointing", "itm"):
        block = ["--block", ITM.block] if evaluation == "pointing" else []
        report = json.loads(
            _run("eval", evaluation, "--data", data.referring_jsonl, "--model", NAMES["itm"], *block,
                 "--device", "cpu", "--precision", "bf16", "--jsonl", "--quiet").stdout
        )  # fmt: skip
        assert report["precision"] == "bf16"


@pytest.mark.parametrize("mask_kind", ["none", "additive", "boolean"])
def test_half_precision_attention_on_cpu_is_the_fused_kernels_result(mask_kind: str) -> None:
    """`attend` in bf16 on a CPU takes plain products (faster there for decoding's short queries): the result is
    float32 attention of the same bf16 inputs, within bf16 rounding of the output."""
    from fusioncam.models.layers import attend

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 2, 16, generator=generator).bfloat16()
    k, v = (torch.randn(3, 4, 7, 16, generator=generator).bfloat16() for _ in range(2))
    allowed = torch.rand(3, 1, 2, 7, generator=generator) > 0.3
    allowed[..., 0] = True  # every query attends somewhere
    mask = {"none": None, "additive": torch.where(allowed, 0.0, -1e4), "boolean": allowed}[mask_kind]
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=mask if mask is None or mask.dtype == torch.bool else mask.float()
    )
    found = attend(q, k, v, mask)
    assert found.dtype == torch.bfloat16
    torch.testing.assert_close(found.float(), expected, atol=2e-2, rtol=2e-2)
