"""`fusioncam eval vqa` and `eval gqa` end to end on small files in the published layouts (no model runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fusioncam.cli import app


def run(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def write(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def human(*texts: str) -> list[dict[str, Any]]:
    return [{"answer": text, "answer_confidence": "yes", "answer_id": index + 1} for index, text in enumerate(texts)]


@pytest.fixture
def vqa_files(tmp_path: Path) -> dict[str, Path]:
    """Three annotated questions: "other" (3 of 10 say "cat"), "yes/no" (all "yes"), "number" (all "2")."""
    questions = [{"question_id": q, "image_id": 10 + q, "question": "?"} for q in (1, 2, 3)]
    question_file = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}}
    annotations = [
        {"question_id": 1, "answers": human(*["cat"] * 3, *["dog"] * 7), "answer_type": "other"},
        {"question_id": 2, "answers": human(*["yes"] * 10), "answer_type": "yes/no"},
        {"question_id": 3, "answers": human(*["2"] * 10), "answer_type": "number"},
    ]
    for record in annotations:
        record |= {"image_id": 10 + record["question_id"], "question_type": "what", "multiple_choice_answer": "x"}
    return {
        "questions": write(tmp_path / "q.json", question_file | {"data_subtype": "val2014", "questions": questions}),
        "annotations": write(tmp_path / "a.json", {"data_subtype": "val2014", "annotations": annotations}),
    }


def test_eval_vqa_prints_a_table_and_writes_the_report(vqa_files: dict[str, Path], tmp_path: Path) -> None:
    # "Cat." → "cat": 3 matches → 90; "no" → 0; "two" → "2" → 100.
    answers = [
        {"question_id": 1, "answer": "Cat."},
        {"question_id": 2, "answer": "no"},
        {"question_id": 3, "answer": "two"},
    ]
    predictions = write(tmp_path / "results.json", answers)
    report = tmp_path / "report.json"
    result = run("eval", "vqa", "--questions", vqa_files["questions"], "--annotations", vqa_files["annotations"],
                 "--predictions", predictions, "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # Piped: tab-separated, answer types sorted, overall last; overall = (90 + 0 + 100) / 3 = 63.33.
    assert result.stdout.splitlines() == [
        "answer type\tquestions\taccuracy",
        "number\t1\t100.00",
        "other\t1\t90.00",
        "yes/no\t1\t0.00",
        "overall\t3\t63.33",
    ]
    written = json.loads(report.read_text())
    assert written["overall"] == 63.33
    assert written["per_answer_type"] == {"other": 90.0, "yes/no": 0.0, "number": 100.0}
    assert written["per_question"] == {"1": 90.0, "2": 0.0, "3": 100.0}
    assert written["unanswered"] == 0


def test_eval_vqa_jsonl_and_the_2021_script(vqa_files: dict[str, Path], tmp_path: Path) -> None:
    # Ten equal "2": the 2021 script compares "two" as typed (0), the 2016 one cleans it to "2" (100).
    predictions = write(tmp_path / "r.json", [{"question_id": 3, "answer": "two"}])
    args = ["eval", "vqa", "--annotations", vqa_files["annotations"], "--predictions", predictions, "--jsonl"]
    for script, expected in (("2016", 100.0), ("2021", 0.0)):
        result = run(*args, "--script", script)
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["overall"] == expected and summary["script"] == script
        assert summary["questions"] == 1 and summary["unanswered"] == 2 and "per_question" not in summary
        assert "2 of 3 questions in" in result.stderr and "the figures are over the 1 that have one" in result.stderr


def test_eval_vqa_rejects_answers_to_unknown_questions(vqa_files: dict[str, Path], tmp_path: Path) -> None:
    predictions = write(tmp_path / "r.json", [{"question_id": 99, "answer": "cat"}])
    result = run("eval", "vqa", "--annotations", vqa_files["annotations"], "--predictions", predictions)
    assert result.exit_code == 2
    assert "1 predictions are for questions not in the annotations: 99" in result.stderr


def test_eval_vqa_names_the_malformed_file(vqa_files: dict[str, Path], tmp_path: Path) -> None:
    predictions = write(tmp_path / "r.json", [{"question_id": 1}])
    result = run("eval", "vqa", "--annotations", vqa_files["annotations"], "--predictions", predictions)
    assert result.exit_code == 2
    assert "r.json, result 0: 'answer' is missing" in result.stderr
    swapped = run("eval", "vqa", "--annotations", vqa_files["questions"], "--predictions", predictions)
    assert swapped.exit_code == 2 and "holds questions, not annotations" in swapped.stderr


def test_eval_vqa_report_folder_must_exist(vqa_files: dict[str, Path], tmp_path: Path) -> None:
    predictions = write(tmp_path / "r.json", [{"question_id": 1, "answer": "cat"}])
    report = tmp_path / "nowhere" / "report.json"
    result = run("eval", "vqa", "--annotations", vqa_files["annotations"], "--predictions", predictions,
                 "--report", report)  # fmt: skip
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_eval_gqa_in_both_prediction_formats(tmp_path: Path) -> None:
    questions = write(tmp_path / "testdev_balanced_questions.json", {
        "1": {"imageId": "n1", "question": "Is it a girl?", "answer": "yes", "types": {"structural": "verify"}},
        "2": {"imageId": "n2", "question": "What is it?", "answer": "plate", "types": {"structural": "query"}},
        "3": {"imageId": "n3", "question": "What color?", "answer": "red", "types": {"structural": "query"}},
    })  # fmt: skip
    # "Yes" → "yes" right; "a plate" → "plate" right; "blue" wrong: overall 2/3, open 1/2, binary 1/1.
    official = [{"questionId": "1", "prediction": "Yes"}, {"questionId": "2", "prediction": "a plate"},
                {"questionId": "3", "prediction": "blue"}]  # fmt: skip
    vqa_style = [{"question_id": 1, "answer": "Yes"}, {"question_id": 2, "answer": "a plate"},
                 {"question_id": 3, "answer": "blue"}]  # fmt: skip
    for name, records in (("official.json", official), ("vqa_style.json", vqa_style)):
        report = tmp_path / f"report-{name}"
        result = run("eval", "gqa", "--questions", questions, "--predictions", write(tmp_path / name, records),
                     "--report", report)  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert result.stdout.splitlines() == [
            "questions\tcount\taccuracy",
            "binary\t1\t100.00",
            "open\t2\t50.00",
            "type query\t2\t50.00",
            "type verify\t1\t100.00",
            "overall\t3\t66.67",
        ]
        written = json.loads(report.read_text())
        assert written["overall"] == pytest.approx(200 / 3)
        assert written["per_question"] == {"1": 100.0, "2": 100.0, "3": 0.0}
    # Both files side by side (the same answers, so the same figures), and a third run answering "red" right.
    fixed = write(tmp_path / "fixed.json", [*official[:2], {"questionId": "3", "prediction": "red"}])
    chart = tmp_path / "gqa.png"
    result = run("eval", "gqa", "--questions", questions, "--predictions", f"a={tmp_path / 'official.json'}",
                 "--predictions", f"b={fixed}", "--chart", chart)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "run\tquestions\toverall\tbinary\topen",
        "a\t3\t66.67\t100.00\t50.00",
        "b\t3\t100.00\t100.00\t100.00",
    ]
    assert chart.stat().st_size > 0


def test_eval_gqa_needs_answers(tmp_path: Path) -> None:
    questions = write(tmp_path / "test_balanced_questions.json", {"1": {"imageId": "n1", "question": "?"}})
    predictions = write(tmp_path / "p.json", [{"questionId": "1", "prediction": "yes"}])
    result = run("eval", "gqa", "--questions", questions, "--predictions", predictions)
    assert result.exit_code == 2 and "question 1 has no answer" in result.stderr


def test_scoring_imports_no_torch(vqa_files: dict[str, Path], tmp_path: Path) -> None:
    """Scoring a results file must work, and start at once, where no model could run."""
    predictions = write(tmp_path / "r.json", [{"question_id": 1, "answer": "cat"}])
    args = ["eval", "vqa", "--annotations", str(vqa_files["annotations"]), "--predictions", str(predictions)]
    probe = (
        "import sys\n"
        "from fusioncam.cli import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'cv2', 'numpy'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "HEAVY []" in result.stdout


def test_eval_vqa_compares_named_runs_side_by_side(vqa_files: dict[str, Path], tmp_path: Path) -> None:
    """Run "a" answers cat / yes / 2, run "b" dog / no / 2. Question 1 (3 of 10 humans say cat, 7 say dog): cat
    scores the mean over the ten leave-one-out subsets of min(matches / 3, 1) = (3 · 2/3 + 7 · 1) / 10 = 90 %, dog
    100 %; question 2 (all yes): 100 and 0; question 3 (all 2): 100 and 100."""
    a = write(tmp_path / "run-a.json", [{"question_id": q, "answer": t} for q, t in [(1, "cat"), (2, "yes"), (3, "2")]])
    b = write(tmp_path / "run-b.json", [{"question_id": q, "answer": t} for q, t in [(1, "dog"), (2, "no"), (3, "2")]])
    report, chart = tmp_path / "report.json", tmp_path / "chart.png"
    result = run("eval", "vqa", "--annotations", vqa_files["annotations"], "--predictions", f"a={a}",
                 "--predictions", f"b={b}", "--report", report, "--chart", chart)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    header, *rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert header == ["run", "questions", "overall", "number", "other", "yes/no"]
    assert rows == [["a", "3", "96.67", "100.00", "90.00", "100.00"], ["b", "3", "66.67", "100.00", "100.00", "0.00"]]
    runs = json.loads(report.read_text())["runs"]
    assert (runs["a"]["overall"], runs["b"]["overall"]) == (96.67, 66.67)
    assert chart.stat().st_size > 0
    twice = run("eval", "vqa", "--annotations", vqa_files["annotations"], "--predictions", a, "--predictions", a)
    assert twice.exit_code == 2 and "NAME=FILE" in twice.stderr
