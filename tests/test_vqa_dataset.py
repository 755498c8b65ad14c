"""`fusioncam vqa --questions` over a VQAv2 questions file in the published layout: answers in the official results
format, which `fusioncam eval vqa` then scores; `--limit` draws the same questions for the same seed.

Tiny random-weight models (tests/tiny_presets.py) answer; their answers mean nothing, so the annotations are written
after the run from what they said, which fixes the accuracy each question must get.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tiny_presets import write_tiny_presets
from typer.testing import CliRunner

from fusioncam.cli import app


def _run(*args: object) -> str:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_answers_a_questions_file_into_the_official_results_format(tmp_path: Path) -> None:
    presets = write_tiny_presets(tmp_path / "presets")
    images = tmp_path / "val2014"
    images.mkdir()
    rng = np.random.default_rng(0)
    for image_id in (7, 8):
        pixels = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (96, 64), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(images / f"COCO_val2014_{image_id:012d}.jpg"), pixels)
    asked = [(70, 7, "what color is it?"), (71, 7, "how many dogs?"), (80, 8, "is it a cat?")]
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps({
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014",
        "questions": [{"question_id": q, "image_id": i, "question": text} for q, i, text in asked],
    }))  # fmt: skip
    models = ["--model", presets["itm"], "--caption-model", presets["caption"], "--qa-model", presets["qa"]]
    common = [*models, "--block", 1, "--num-captions", 2, "--device", "cpu", "--quiet", "--no-explain"]
    out = tmp_path / "out"
    _run("vqa", "--questions", questions, "--images", images, *common, "--out", out)

    results = json.loads((out / "vqa-results.json").read_text())
    assert [entry["question_id"] for entry in results] == [70, 71, 80]
    assert all(set(entry) == {"question_id", "answer"} and isinstance(entry["answer"], str) for entry in results)
    records = {
        json.loads(path.read_text())["input"]["question_id"]: json.loads(path.read_text())["answer"]
        for path in out.glob("*.json")
        if path.name not in ("summary.json", "vqa-results.json")
    }
    assert records == {entry["question_id"]: entry["answer"] for entry in results}

    # Ten humans agree with the model on question 70 and never on 71 and 80: 100, 0 and 0, overall 33.33.
    said = {entry["question_id"]: entry["answer"] for entry in results}
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps({
        "info": {}, "license": {}, "data_subtype": "val2014", "annotations": [
            {"question_id": q, "image_id": i, "question_type": "what", "answer_type": "other",
             "multiple_choice_answer": "x",
             "answers": [{"answer": said[q] if q == 70 else "zebra crossing", "answer_confidence": "yes",
                          "answer_id": n + 1} for n in range(10)]}
            for q, i, _ in asked
        ],
    }))  # fmt: skip
    scored = json.loads(
        _run("eval", "vqa", "--annotations", annotations, "--predictions", out / "vqa-results.json", "--jsonl")
    )
    assert scored["overall"] == 33.33

    first = tmp_path / "first"
    _run("vqa", "--questions", questions, "--images", images, *common, "--limit", 2, "--out", first)
    again = tmp_path / "again"
    _run("vqa", "--questions", questions, "--images", images, *common, "--limit", 2, "--out", again)
    picked = [json.loads((folder / "vqa-results.json").read_text()) for folder in (first, again)]
    assert len(picked[0]) == 2 and picked[0] == picked[1]


def test_answers_a_gqa_question_file_into_gqas_predictions_format(tmp_path: Path) -> None:
    presets = write_tiny_presets(tmp_path / "presets")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for image_id in ("n100", "n200"):
        pixels = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (96, 64), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(images / f"{image_id}.jpg"), pixels)
    asked = {"201": ("n100", "is it red?"), "202": ("n200", "what is it?")}
    questions = tmp_path / "testdev_balanced_questions.json"
    questions.write_text(
        json.dumps({q: {"imageId": i, "question": text, "answer": "?"} for q, (i, text) in asked.items()})
    )
    models = ["--model", presets["itm"], "--caption-model", presets["caption"], "--qa-model", presets["qa"]]
    out = tmp_path / "out"
    _run("vqa", "--questions", questions, "--images", images, *models, "--block", 1, "--num-captions", 2,
         "--device", "cpu", "--quiet", "--no-explain", "--out", out)  # fmt: skip

    predictions = json.loads((out / "vqa-results.json").read_text())
    assert [set(entry) for entry in predictions] == [{"questionId", "prediction"}] * 2
    assert [entry["questionId"] for entry in predictions] == ["201", "202"]
    # The file's answers made from what the model said: right on 201, wrong on 202.
    said = {entry["questionId"]: entry["prediction"] for entry in predictions}
    truth = {"201": said["201"], "202": "zebra crossing"}
    questions.write_text(json.dumps({
        q: {"imageId": i, "question": text, "answer": truth[q]} for q, (i, text) in asked.items()
    }))  # fmt: skip
    scored = json.loads(
        _run("eval", "gqa", "--questions", questions, "--predictions", out / "vqa-results.json", "--jsonl")
    )
    assert scored["overall"] == 50.0
