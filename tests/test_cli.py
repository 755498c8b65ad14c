"""The CLI end to end on tiny random-weight presets written by the test (`tests/tiny_presets.py`).

The presets point at the reference fixtures' models (random weights, 24×24 grid), so every run goes through the
real loaders, tokenizers, preprocessing, Grad-CAM, EfficientSAM, captioner, UnifiedQA and writers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_presets import write_tiny_presets
from typer.testing import CliRunner

import fusioncam
from fusioncam.cli import app
from fusioncam.inputs import slug


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_presets(tmp_path_factory.mktemp("presets"))


@pytest.fixture(scope="module")
def tiny_preset(presets: dict[str, Path]) -> Path:
    return presets["itm"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, dogs_jpg: Path) -> Path:
    """A folder with the real photo, a small PNG in a subfolder, and one corrupt JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(dogs_jpg, folder / "dogs.jpg")
    (folder / "sub").mkdir()
    gradient = np.tile(np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None], (80, 1, 3))
    cv2.imwrite(str(folder / "sub" / "gradient.png"), gradient)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    return folder


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, [str(arg) for arg in args], input=stdin)


def test_heatmap_of_one_file_matches_the_library(tiny_preset: Path, dogs_jpg: Path, tmp_path: Path) -> None:
    args = ["--model", tiny_preset, "--out", tmp_path, "--device", "cpu", "--block", "2"]
    result = run("heatmap", dogs_jpg, "A dog running!", *args)
    assert result.exit_code == 0, result.stderr

    records = sorted(path for path in tmp_path.glob("*.json") if path.name != "summary.json")
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["text"] == "A dog running!" and record["cleaned_text"] == "a dog running"
    assert record["model"] == "tiny-itm" and record["block"] == 2
    image = cv2.imread(str(dogs_jpg))
    overlay = cv2.imread(record["outputs"]["overlay"])
    assert overlay.shape == image.shape
    assert 0 <= record["peak"]["x"] < image.shape[1] and 0 <= record["peak"]["y"] < image.shape[0]

    raw = np.load(record["outputs"]["heatmap"])
    assert raw.dtype == np.float32 and raw.shape == (24, 24)
    matcher = fusioncam.load(str(tiny_preset), device="cpu")
    expected = matcher.heatmap(fusioncam.load_image(dogs_jpg), "A dog running!", block=2)
    np.testing.assert_allclose(raw, expected.heatmap, rtol=1e-5, atol=1e-12)
    assert record["itm_score"] == pytest.approx(expected.itm_score, rel=1e-5)
    assert record["itc_score"] == pytest.approx(expected.itc_score, rel=1e-5, abs=1e-6)


def test_folder_with_a_corrupt_image_names_it_and_does_the_rest(
    tiny_preset: Path, photos: Path, tmp_path: Path
) -> None:
    result = run("heatmap", photos, "a dog", "--recursive", "--model", tiny_preset, "--out", tmp_path, "--block", "1")
    assert result.exit_code == 1
    assert "broken.jpg" in result.stderr
    name = slug("a dog")
    assert (tmp_path / f"dogs.jpg__{name}.overlay.png").is_file()
    assert (tmp_path / "sub" / f"gradient.png__{name}.overlay.png").is_file()
    assert cv2.imread(str(tmp_path / "sub" / f"gradient.png__{name}.overlay.png")).shape == (80, 120, 3)
    assert len(list(tmp_path.rglob("*.json"))) == 2 + 1  # two records and the summary
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (2, 1) and "broken.jpg" in summary["failures"][0]["image"]


def test_stdin_jsonl_gives_exactly_one_json_record_per_pair(tiny_preset: Path, photos: Path, tmp_path: Path) -> None:
    lines = [
        {"image": str(photos / "dogs.jpg"), "text": "two dogs"},
        {"image": str(photos / "sub" / "gradient.png"), "text": "a wall"},
        {"image": str(photos / "dogs.jpg"), "text": "the beach"},
        {"image": str(photos / "broken.jpg"), "text": "a dog"},
    ]
    stdin = "\n".join(json.dumps(line) for line in lines) + "\nnot json\n"
    args = ["--jsonl", "--model", tiny_preset, "--out", tmp_path, "--batch-size", "3", "--block", "0"]
    result = run("heatmap", "-", *args, stdin=stdin)
    assert result.exit_code == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]  # every stdout line is JSON
    assert len(out) == 5
    ok = [record for record in out if "error" not in record]
    assert [record["text"] for record in ok] == ["two dogs", "a wall", "the beach"]
    assert all(Path(path).is_file() for record in ok for path in record["outputs"].values())
    errors = [record for record in out if "error" in record]
    assert {record["origin"] for record in errors} == {"stdin:4", "stdin:5"}


def test_per_word_maps_and_contact_sheet(tiny_preset: Path, dogs_jpg: Path, tmp_path: Path) -> None:
    result = run(
        "heatmap",
        dogs_jpg,
        "two kites",
        "--per-word",
        "--jsonl",
        "--model",
        tiny_preset,
        "--out",
        tmp_path,
        "--block",
        "1",
    )
    assert result.exit_code == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert [word["word"] for word in record["words"]] == ["two", "kites"]  # "kite" + "##s" as one word
    sheet = cv2.imread(record["outputs"]["words"])
    assert sheet is not None and sheet.shape[1] >= 3 * 64  # sentence + two words side by side


def test_score_table_and_jsonl(tiny_preset: Path, dogs_jpg: Path) -> None:
    result = run("score", dogs_jpg, "a dog", "a little cat", "--model", tiny_preset, "--jsonl")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["text"] for record in records] == ["a dog", "a little cat"]
    matcher = fusioncam.load(str(tiny_preset), device="cpu")
    scores = matcher.score(fusioncam.load_image(dogs_jpg), ["a dog", "a little cat"])
    assert [r["itm_score"] for r in records] == pytest.approx([s.itm_score for s in scores], rel=1e-5)
    table = run("score", dogs_jpg, "a dog", "--model", tiny_preset)
    assert table.exit_code == 0 and "a dog" in table.stdout
    empty = run("score", dogs_jpg, "...", "a dog", "--model", tiny_preset)
    assert empty.exit_code == 1 and "'...'" in empty.stderr and "empty after cleaning" in empty.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["heatmap", "no-such-file.jpg", "a dog"],
        ["heatmap", "{dogs}"],
        ["heatmap", "{dogs}", "a dog", "--block", "7"],
        ["heatmap", "{dogs}", "a dog", "--colormap", "rainbowish"],
        ["heatmap", "{dogs}", "a dog", "--model", "blip-itm-bse"],
    ],
)
def test_usage_errors_exit_2(tiny_preset: Path, dogs_jpg: Path, args: list[str]) -> None:
    args = [arg.replace("{dogs}", str(dogs_jpg)) for arg in args]
    if "--model" not in args:
        args += ["--model", str(tiny_preset)]
    result = run(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "error" in result.stderr.lower()


def test_weights_list_and_path(tiny_preset: Path) -> None:
    listing = run("weights", "list", "--jsonl")
    assert listing.exit_code == 0
    names = {json.loads(line)["name"] for line in listing.stdout.splitlines()}
    assert {"blip-itm-base", "blip-itm-large"} <= names
    path = run("weights", "path", str(tiny_preset), "--role", "vocab")
    assert path.exit_code == 0 and path.stdout.strip().endswith("vocab.txt")


def _binary_mask_at(path: str, shape: tuple[int, int]) -> np.ndarray:
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert mask.shape == shape
    assert set(np.unique(mask)) <= {0, 255}
    return mask


@pytest.fixture
def sam_embed_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images EfficientSAM's image encoder has embedded (the real `embed`, counted)."""
    from fusioncam.models.efficient_sam import EfficientSam

    embedded: list[int] = []
    original = EfficientSam.embed

    def counting(self, images):
        embedded.append(len(images))
        return original(self, images)

    monkeypatch.setattr(EfficientSam, "embed", counting)
    return embedded


def test_heatmap_esam_refines_and_saves_the_mask(presets, dogs_jpg: Path, tmp_path: Path, sam_embed_count) -> None:
    args = ["--model", presets["itm"], "--sam-model", presets["sam"], "--block", "1", "--out", tmp_path]
    result = run("heatmap", dogs_jpg, "a dog", "a stick", "--encoder", "esam", "--save-mask", "--jsonl", *args)
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sum(sam_embed_count) == 1  # one image, two texts: embedded once
    height, width = cv2.imread(str(dogs_jpg)).shape[:2]
    for record in records:
        assert record["encoder"] == "esam"
        sam = record["sam"]
        assert len(sam["points"]) == 5 and len(sam["weights"]) == 5 and max(sam["weights"]) == 1.0
        assert all(0 <= p["x"] < width and 0 <= p["y"] < height for p in sam["points"])
        assert 0.0 <= sam["mask_area"] <= 1.0
        mask = _binary_mask_at(record["outputs"]["mask"], (height, width))
        assert sam["mask_area"] == pytest.approx((mask > 0).mean(), abs=1e-6)
        refined = np.load(record["outputs"]["heatmap"])
        assert refined.shape == (24, 24) and refined.min() == 0.0 and refined.max() == pytest.approx(1.0, abs=1e-6)


def test_heatmap_esam_sam_blend(presets, dogs_jpg: Path, tmp_path: Path) -> None:
    args = ["--model", presets["itm"], "--sam-model", presets["sam"], "--block", "1", "--encoder", "esam"]
    maps = {}
    for blend in ("fork", "probability"):
        result = run("heatmap", dogs_jpg, "a dog", "--sam-blend", blend, "--jsonl", "--out", tmp_path / blend, *args)
        assert result.exit_code == 0, result.stderr
        maps[blend] = np.load(json.loads(result.stdout)["outputs"]["heatmap"])
    assert not np.allclose(maps["fork"], maps["probability"])  # the option reaches the refinement
    bad = run("heatmap", dogs_jpg, "a dog", "--sam-blend", "logits", "--out", tmp_path / "bad", *args)
    assert bad.exit_code == 2 and "--sam-blend" in bad.stderr and "'fork', 'probability'" in bad.stderr


def test_segment_folder_and_jsonl(presets, photos: Path, tmp_path: Path, sam_embed_count) -> None:
    args = ["--model", presets["itm"], "--sam-model", presets["sam"], "--block", "1"]
    folder = run("segment", photos, "a dog", "a ball", "--recursive", "--out", tmp_path / "folder", *args)
    assert folder.exit_code == 1 and "broken.jpg" in folder.stderr  # the corrupt image fails alone
    assert sum(sam_embed_count) == 2  # two readable images, two texts each: each image embedded once
    records = [json.loads(p.read_text()) for p in (tmp_path / "folder").rglob("*.json") if p.name != "summary.json"]
    assert len(records) == 4
    for record in records:
        size = record["image_size"]
        _binary_mask_at(record["outputs"]["mask"], (size["height"], size["width"]))
        cut = cv2.imread(record["outputs"]["cutout"], cv2.IMREAD_UNCHANGED)
        assert cut.shape == (size["height"], size["width"], 4)

    lines = [{"image": str(photos / "sub" / "gradient.png"), "text": "the wall"}, {"image": "nope.png", "text": "x"}]
    stdin = "\n".join(json.dumps(line) for line in lines)
    piped = run("segment", "-", "--jsonl", "--out", tmp_path / "piped", *args, stdin=stdin)
    assert piped.exit_code == 1
    out = [json.loads(line) for line in piped.stdout.splitlines()]
    assert [("error" in record) for record in out] == [False, True]
    _binary_mask_at(out[0]["outputs"]["mask"], (80, 120))


def test_fused_needs_fusion_weights(presets, dogs_jpg: Path) -> None:
    result = run("heatmap", dogs_jpg, "a dog", "--encoder", "fused", "--model", presets["itm"])
    assert result.exit_code == 2 and "untrained fusion" in result.stderr


def test_vqa_file_folder_and_jsonl(presets, photos: Path, tmp_path: Path) -> None:
    args = ["--model", presets["itm"], "--caption-model", presets["caption"], "--qa-model", presets["qa"]]
    args += ["--block", "1", "--num-captions", "3", "--caption-min-length", "6", "--caption-max-length", "10"]
    single = run("vqa", photos / "dogs.jpg", "what is the dog holding?", "--jsonl", "--out", tmp_path / "a", *args)
    assert single.exit_code == 0, single.stderr
    (record,) = [json.loads(line) for line in single.stdout.splitlines()]
    assert isinstance(record["answer"], str) and len(record["captions"]) == 3
    assert all(isinstance(item["contribution"], float) and len(item["patches"]) == 20 for item in record["captions"])
    assert set(record["seconds"]) >= {"heatmap", "captions", "answer", "explain"}
    assert all(Path(path).is_file() for path in record["outputs"].values())
    assert np.load(record["outputs"]["answer_map"]).shape == (24, 24)

    folder = run("vqa", photos, "is it raining?", "--recursive", "--out", tmp_path / "b", *args)
    assert folder.exit_code == 1 and "broken.jpg" in folder.stderr
    header, *rows = folder.stdout.strip().splitlines()  # piped: tab-separated, a header, a row per answer
    assert header.split("\t") == ["image", "question", "answer", "answer map"] and len(rows) == 2

    stdin = json.dumps({"image": str(photos / "dogs.jpg"), "question": "how many dogs?"})
    piped = run("vqa", "-", "--jsonl", "--out", tmp_path / "c", *args, stdin=stdin)
    assert piped.exit_code == 0, piped.stderr
    assert json.loads(piped.stdout)["question"] == "how many dogs?"
