"""Readers of the published VQAv2 / OK-VQA / GQA layouts, on files the tests write, and their errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fusioncam.datasets import (
    DatasetError,
    GqaQuestion,
    VqaQuestion,
    coco_image_path,
    read_gqa_predictions,
    read_gqa_questions,
    read_vqa_annotations,
    read_vqa_predictions,
    read_vqa_questions,
)


def write(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def questions_file(split: str = "val2014", questions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    questions = questions or [
        {"image_id": 42, "question": "What color is the cat?", "question_id": 420},
        {"image_id": 7, "question": "How many dogs?", "question_id": 70},
    ]
    return {
        "info": {"description": "VQA v2"},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "data_subtype": split,
        "license": {"name": "CC BY 4.0"},
        "questions": questions,
    }


def answers(*texts: str) -> list[dict[str, Any]]:
    return [{"answer": text, "answer_confidence": "yes", "answer_id": index + 1} for index, text in enumerate(texts)]


def annotation_record(question_id: int = 420, image_id: int = 42, **changes: Any) -> dict[str, Any]:
    record = {
        "question_type": "what color is the",
        "multiple_choice_answer": "black",
        "answers": answers(*["black"] * 9, "dark"),
        "image_id": image_id,
        "answer_type": "other",
        "question_id": question_id,
    }
    return record | changes


def annotations_file(records: list[dict[str, Any]] | None = None, split: str = "val2014") -> dict[str, Any]:
    records = records if records is not None else [annotation_record(), annotation_record(70, 7, answer_type="number")]
    return {"info": {}, "license": {}, "data_subtype": split, "annotations": records}


# --- VQA ---------------------------------------------------------------------------------------------------------


def test_vqa_questions_and_annotations(tmp_path: Path) -> None:
    questions = read_vqa_questions(write(tmp_path / "q.json", questions_file()))
    assert questions == [
        VqaQuestion(420, 42, "What color is the cat?", "val2014"),
        VqaQuestion(70, 7, "How many dogs?", "val2014"),
    ]
    annotations = read_vqa_annotations(write(tmp_path / "a.json", annotations_file()), questions)
    assert [a.question_id for a in annotations] == [420, 70]
    assert annotations[0].answers == ("black",) * 9 + ("dark",)
    assert annotations[0].answer_type == "other" and annotations[0].question_type == "what color is the"
    assert annotations[0].multiple_choice_answer == "black"


def test_ok_vqa_answers_with_raw_answer_and_no_multiple_choice(tmp_path: Path) -> None:
    record = annotation_record(answers=[a | {"raw_answer": a["answer"] + "s"} for a in answers(*["cat"] * 10)])
    del record["multiple_choice_answer"]
    (annotation,) = read_vqa_annotations(write(tmp_path / "a.json", annotations_file([record])))
    assert annotation.answers == ("cat",) * 10 and annotation.multiple_choice_answer is None


def test_coco_image_names(tmp_path: Path) -> None:
    question = VqaQuestion(1, 123456, "?", "val2014")
    published = tmp_path / "COCO_val2014_000000123456.jpg"
    assert question.image_path(tmp_path) == published  # neither exists: the published name, for the error
    (tmp_path / "000000123456.jpg").touch()
    assert question.image_path(tmp_path) == tmp_path / "000000123456.jpg"  # the 2017 name when only it exists
    published.touch()
    assert question.image_path(tmp_path) == published  # the published name first
    assert coco_image_path(tmp_path, 9, "test-dev2015") == tmp_path / "COCO_test2015_000000000009.jpg"


def test_vqa_predictions(tmp_path: Path) -> None:
    path = write(tmp_path / "r.json", [{"question_id": 420, "answer": "black"}, {"question_id": 70, "answer": "2"}])
    assert read_vqa_predictions(path) == {420: "black", 70: "2"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (questions_file() | {"data_subtype": None}, r"q.json: 'data_subtype' must be a string, found None"),
        ({k: v for k, v in questions_file().items() if k != "questions"}, r"q.json: 'questions' is missing"),
        (questions_file(questions=[{"question_id": 1, "question": "?"}]), r"q.json, question 0: 'image_id' is missing"),
        (
            questions_file(questions=[{"question_id": "1", "image_id": 1, "question": "?"}]),
            r"question 0: 'question_id' must be an integer, found '1'",
        ),
        (
            questions_file(questions=[{"question_id": True, "image_id": 1, "question": "?"}]),
            r"'question_id' must be an integer, found True",
        ),
        (
            questions_file(questions=[{"question_id": 1, "image_id": 1, "question": "?"}] * 2),
            r"question_id 1 appears twice",
        ),
        (["not", "an", "object"], r"q.json: expected an object, found a list"),
    ],
)
def test_malformed_vqa_questions(tmp_path: Path, content: Any, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        read_vqa_questions(write(tmp_path / "q.json", content))


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([annotation_record(answers=[])], r"annotation 0: 'answers' is empty"),
        ([annotation_record(answers=[{"answer": "cat"}])], r"annotation 0, answer 0: 'answer_id' is missing"),
        ([annotation_record(answers=answers("cat") * 2)], r"annotation 0: answer_id 1 appears twice"),
        ([annotation_record(answer_type=None)], r"annotation 0: 'answer_type' must be a string"),
        ([annotation_record(), annotation_record()], r"question_id 420 appears twice"),
    ],
)
def test_malformed_vqa_annotations(tmp_path: Path, records: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        read_vqa_annotations(write(tmp_path / "a.json", annotations_file(records)))


def test_annotations_that_do_not_belong_to_the_questions(tmp_path: Path) -> None:
    questions = read_vqa_questions(write(tmp_path / "q.json", questions_file()))
    other_split = write(tmp_path / "a.json", annotations_file(split="train2014"))
    with pytest.raises(DatasetError, match="annotations of train2014, but the questions are of val2014"):
        read_vqa_annotations(other_split, questions)
    unknown = write(tmp_path / "a.json", annotations_file([annotation_record(question_id=5)]))
    with pytest.raises(DatasetError, match="question 5 is not in the questions file"):
        read_vqa_annotations(unknown, questions)
    other_image = write(tmp_path / "a.json", annotations_file([annotation_record(image_id=43)]))
    with pytest.raises(DatasetError, match="question 420 is about image 43 here and 42 in the questions file"):
        read_vqa_annotations(other_image, questions)


def test_wrong_or_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"VQA annotations file not found: .*missing\.json"):
        read_vqa_annotations(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"questions": [', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken\.json: not a JSON file"):
        read_vqa_questions(tmp_path / "broken.json")
    with pytest.raises(DatasetError, match="holds questions, not annotations"):
        read_vqa_annotations(write(tmp_path / "q.json", questions_file()))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"420": "black"}, r"r.json: a results file is a list"),
        ([{"question_id": 420}], r"r.json, result 0: 'answer' is missing"),
        ([{"question_id": 420, "answer": 2}], r"result 0: 'answer' must be a string, found 2"),
        ([{"question_id": 420, "answer": "a"}, {"question_id": 420, "answer": "b"}], r"result 1: a second answer"),
    ],
)
def test_malformed_vqa_predictions(tmp_path: Path, content: Any, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        read_vqa_predictions(write(tmp_path / "r.json", content))


# --- GQA ---------------------------------------------------------------------------------------------------------

GQA_QUESTIONS = {
    "201307251": {
        "semantic": [],
        "entailed": [],
        "equivalent": ["201307251"],
        "question": "Is it a boy or a girl?",
        "imageId": "n161313",
        "isBalanced": True,
        "groups": {"global": None, "local": "10c-person"},
        "answer": "girl",
        "semanticStr": "",
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "types": {"detailed": "chooseAttr", "semantic": "attr", "structural": "choose"},
        "fullAnswer": "It is a girl.",
    },
    "20968656": {"question": "What is on the table?", "imageId": "2354786", "answer": "plate"},
}


def test_gqa_questions(tmp_path: Path) -> None:
    questions = read_gqa_questions(write(tmp_path / "testdev_balanced_questions.json", GQA_QUESTIONS))
    assert questions == [
        GqaQuestion("201307251", "n161313", "Is it a boy or a girl?", "girl", "choose"),
        GqaQuestion("20968656", "2354786", "What is on the table?", "plate", None),
    ]
    assert questions[0].image_path(tmp_path) == tmp_path / "n161313.jpg"


def test_gqa_test_questions_have_no_answer(tmp_path: Path) -> None:
    (question,) = read_gqa_questions(write(tmp_path / "q.json", {"1": {"imageId": "n1", "question": "?"}}))
    assert question.answer is None


def test_gqa_predictions_in_either_format(tmp_path: Path) -> None:
    official = write(tmp_path / "p.json", [{"questionId": "201307251", "prediction": "girl"}])
    assert read_gqa_predictions(official) == {"201307251": "girl"}
    vqa_style = write(tmp_path / "p.json", [{"question_id": 20968656, "answer": "plate"}])
    assert read_gqa_predictions(vqa_style) == {"20968656": "plate"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.json", [], r"q.json: a GQA question file is an object"),
        ("q.json", {"1": {"question": "?"}}, r"q.json, question 1: 'imageId' is missing"),
        ("q.json", {"1": {"imageId": 5, "question": "?"}}, r"question 1: 'imageId' must be a string, found 5"),
        (
            "q.json",
            {"1": {"imageId": "n1", "question": "?", "types": {}}},
            r"question 1, types: 'structural' is missing",
        ),
        ("p.json", {"1": "yes"}, r"p.json: a predictions file is a list"),
        ("p.json", [{"id": "1", "answer": "yes"}], r'p.json, prediction 0: expected {"questionId", "prediction"}'),
        ("p.json", [{"questionId": 1.5, "prediction": "yes"}], r"'questionId' must be a string or an integer"),
        ("p.json", [{"questionId": "1", "prediction": "a"}] * 2, r"prediction 1: a second prediction for question 1"),
    ],
)
def test_malformed_gqa_files(tmp_path: Path, name: str, content: Any, message: str) -> None:
    read = read_gqa_questions if name == "q.json" else read_gqa_predictions
    with pytest.raises(DatasetError, match=message):
        read(write(tmp_path / name, content))
