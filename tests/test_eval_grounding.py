"""`fusioncam eval pointing` and `eval faithfulness` on RefCOCO in a published layout, end to end: several encoders in
one run (table, JSONL, JSON report, chart), the figures the library computes for the same records, `--limit` with
a seed, masks and proposals, and `--resume` from the per-record scores.

The dataset is written here: synthetic scenes saved as COCO train2014 JPEGs under an images root, and a RefCOCO
JSON conversion (one row per object, COCO boxes, rectangle polygons) naming them.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_presets import write_tiny_presets
from typer.testing import CliRunner

import fusioncam
from fusioncam.cli import app
from fusioncam.evaluate import GroundingSettings, evaluate_faithfulness, evaluate_pointing, read_grounding_data
from fusioncam.faithfulness import CausalSettings
from fusioncam.synth import generate

SCENES = 4
BLOCK = 1


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_presets(tmp_path_factory.mktemp("presets"))


@pytest.fixture(scope="module")
def refcoco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(refs JSON, images root): one ref per synthetic object, its box as COCO [x, y, w, h] and as a polygon."""
    folder = tmp_path_factory.mktemp("refcoco")
    scenes = generate(folder / "scenes", SCENES, 5, image_size=64)
    root = folder / "coco"
    (root / "train2014").mkdir(parents=True)
    rows = []
    for index, line in enumerate(scenes.referring_jsonl.read_text().splitlines()):
        record = json.loads(line)
        image_id = 1000 + int(Path(record["image"]).stem)
        target = root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg"
        if not target.exists():
            pixels = cv2.imread(str(scenes.referring_jsonl.parent / record["image"]))
            cv2.imwrite(str(target), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
        x0, y0, x1, y1 = record["box"]
        rows.append({
            "ref_id": index, "ann_id": 50 + index, "image_id": image_id, "split": "testA" if index % 3 else "val",
            "file_name": f"COCO_train2014_{image_id:012d}_{50 + index}.jpg",
            "sentences": [{"sent": record["text"], "sent_id": index}],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "raw_anns": json.dumps({"segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}),
        })  # fmt: skip
    data = folder / "refcoco+.json"
    data.write_text(json.dumps(rows))
    return data, root


def _run(*args: object) -> str:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def _common(presets: dict[str, Path], data: Path, root: Path) -> list[object]:
    return ["--data", data, "--images", root, "--model", presets["itm"], "--block", BLOCK, "--device", "cpu", "--quiet"]


def test_pointing_compares_encoders_and_reports_the_library_figures(
    presets: dict[str, Path], refcoco: tuple[Path, Path], tmp_path: Path
) -> None:
    data, root = refcoco
    out = tmp_path / "run"
    lines = _run(
        "eval", "pointing", *_common(presets, data, root), "--split", "testA", "--encoder", "blip", "--encoder", "esam",
        "--sam-model", presets["sam"], "--tolerance", 3, "--out", out, "--jsonl",
    ).splitlines()  # fmt: skip
    figures = {json.loads(line)["encoder"]: json.loads(line) for line in lines}
    assert list(figures) == ["blip", "esam"]

    records = read_grounding_data(data, root, split="testA")
    assert len(records) == sum(index % 3 != 0 for index in range(len(json.loads(data.read_text()))))
    matcher = fusioncam.load(str(presets["itm"]), device="cpu")
    expected = evaluate_pointing(matcher, records, BLOCK, settings=GroundingSettings(tolerance=3))
    for key, value in expected.to_dict().items():
        assert figures["blip"][key] == pytest.approx(value), key
    assert figures["esam"]["count"] == len(records)

    report = json.loads((out / "pointing-report.json").read_text())
    assert set(report["encoders"]) == {"blip", "esam"} and report["split"] == "testA" and report["tolerance"] == 3
    chart = cv2.imread(str(out / "pointing-chart.png"))
    assert chart is not None and chart.shape[0] > 100 and chart.shape[1] > 100
    journal = (out / "pointing-scores.jsonl").read_text().splitlines()
    assert len(journal) == 2 * len(records)  # one score per record and encoder


def test_masks_proposals_and_a_seeded_limit(
    presets: dict[str, Path], refcoco: tuple[Path, Path], tmp_path: Path
) -> None:
    data, root = refcoco
    rows = json.loads(data.read_text())
    # Proposals: every object of the image (the truth among them) and the whole image.
    proposals: dict[str, list[list[float]]] = {}
    for row in rows:
        proposals.setdefault(str(row["image_id"]), [[0, 0, 64, 64]]).append(row["bbox"])
    proposals_file = tmp_path / "proposals.json"
    proposals_file.write_text(json.dumps(proposals))
    common = [*_common(presets, data, root), "--tolerance", 0, "--jsonl"]
    by_box = json.loads(_run("eval", "pointing", *common))
    by_mask = json.loads(_run("eval", "pointing", *common, "--region", "mask", "--proposals", proposals_file))
    # The polygons are the boxes (integer corners): the same pixels, the same figures.
    for key in ("count", "pointing", "energy", "random_pointing", "random_energy"):
        assert by_mask[key] == pytest.approx(by_box[key]), key
    assert by_box["box_accuracy"] is None and 0 <= by_mask["box_accuracy"] <= 1
    assert by_mask["random_box_accuracy"] > 0  # the truth is always among the proposals

    limited = [json.loads(_run("eval", "pointing", *common, "--limit", 3, "--seed", seed)) for seed in (1, 1, 2)]
    assert [report["count"] for report in limited] == [3, 3, 3]
    assert limited[0] == limited[1]


def test_a_resumed_run_reads_the_scores_it_has(
    presets: dict[str, Path], refcoco: tuple[Path, Path], tmp_path: Path
) -> None:
    data, root = refcoco
    out = tmp_path / "run"
    command = ["eval", "pointing", *_common(presets, data, root), "--out", out, "--jsonl"]
    whole = json.loads(_run(*command))
    journal = out / "pointing-scores.jsonl"
    lines = journal.read_text().splitlines()
    # A killed run: the last two scores missing, the one before cut mid-line; and one kept score marked, so that
    # the resumed figures show it was read back rather than computed again.
    marked = json.loads(lines[0])
    marked["score"]["energy"] = 1.0
    journal.write_text("\n".join([json.dumps(marked), *lines[1:-3], lines[-3][:20]]))
    resumed = json.loads(_run(*command, "--resume"))
    assert resumed["count"] == whole["count"]
    assert resumed["pointing"] == pytest.approx(whole["pointing"])
    original = json.loads(lines[0])["score"]["energy"]
    assert resumed["energy"] == pytest.approx(whole["energy"] + (1.0 - original) / whole["count"])
    assert len(journal.read_text().splitlines()) == len(lines)  # the cut line replaced, nothing doubled
    again = json.loads(_run(*command))  # without --resume everything is scored afresh
    assert again["energy"] == pytest.approx(whole["energy"])


def test_faithfulness_reports_the_library_curves(
    presets: dict[str, Path], refcoco: tuple[Path, Path], tmp_path: Path
) -> None:
    data, root = refcoco
    command = ["eval", "faithfulness", *_common(presets, data, root), "--split", "val", "--steps", 4]
    report = json.loads(_run(*command, "--jsonl", "--out", tmp_path / "run"))
    records = read_grounding_data(data, root, split="val")
    matcher = fusioncam.load(str(presets["itm"]), device="cpu")
    expected = evaluate_faithfulness(matcher, records, BLOCK, settings=CausalSettings(steps=4))
    assert report["count"] == expected.count == len(records)
    assert report["deletion_auc"] == pytest.approx(expected.deletion_auc)
    assert report["insertion_auc"] == pytest.approx(expected.insertion_auc)
    assert 0 <= report["deletion_auc"] <= 1 and 0 <= report["insertion_auc"] <= 1
    assert np.isfinite(json.loads((tmp_path / "run" / "faithfulness-report.json").read_text())["steps"])
