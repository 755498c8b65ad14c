"""VQAv2 and OK-VQA in their published layout (visualqa.org, okvqa.allenai.org).

Each split is two JSON files:
- questions: `{"info", "task_type", "data_type", "data_subtype", "license", "questions": [{"question_id",
  "image_id", "question"}]}`, where `data_subtype` ("val2014") names the COCO split the images come from;
- annotations: `{..., "annotations": [{"question_id", "image_id", "question_type", "answer_type",
  "multiple_choice_answer", "answers": [{"answer_id", "answer", "answer_confidence"}, …]}]}` with ten human
  answers per question (OK-VQA adds a `raw_answer` to each, which is not used).
A results file is `[{"question_id": int, "answer": str}, …]`, the format the evaluation server takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusioncam.datasets.json_fields import DatasetError, load_json, optional, require

# The test-dev questions are a subset of the test images, which are filed under test2015.
_IMAGE_SPLITS = {"test-dev2015": "test2015"}


@dataclass(frozen=True)
class VqaQuestion:
    """One question of a questions file; `split` is the file's `data_subtype`, which names its COCO images."""

    question_id: int
    image_id: int
    question: str
    split: str

    def image_path(self, root: Path) -> Path:
        """Where this question's image lies under `root` (see `coco_image_path`)."""
        return coco_image_path(root, self.image_id, self.split)


@dataclass(frozen=True)
class VqaAnnotation:
    """The human answers to one question, and the types the accuracy is broken down by.

    `answers` keeps the annotators' order; the reader has checked that their `answer_id`s differ, which is what
    makes "leave one annotator out" in the official script (it removes the answer *records equal* to the one left
    out) the same as leaving out one position."""

    question_id: int
    image_id: int
    question_type: str
    answer_type: str
    answers: tuple[str, ...]
    multiple_choice_answer: str | None = None


def coco_image_path(root: Path, image_id: int, split: str) -> Path:
    """`root/COCO_<split>_<12-digit id>.jpg` as COCO 2014/2015 names its images; the 2017 name `<12-digit id>.jpg`
    when only that file exists (COCO 2017 holds the same images renamed). When neither exists the 2014 name is
    returned, so that the error that follows names the file the published layout expects."""
    published = root / f"COCO_{_IMAGE_SPLITS.get(split, split)}_{image_id:012d}.jpg"
    renamed = root / f"{image_id:012d}.jpg"
    return renamed if not published.is_file() and renamed.is_file() else published


def read_vqa_questions(path: str | Path) -> list[VqaQuestion]:
    """The questions of a VQAv2/OK-VQA questions file, in file order."""
    path = Path(path)
    data = load_json(path, "VQA questions")
    split = require(data, "data_subtype", str, str(path))
    questions = []
    for index, record in enumerate(require(data, "questions", list, str(path))):
        where = f"{path}, question {index}"
        questions.append(
            VqaQuestion(
                question_id=require(record, "question_id", int, where),
                image_id=require(record, "image_id", int, where),
                question=require(record, "question", str, where),
                split=split,
            )
        )
    _check_unique([question.question_id for question in questions], f"{path}: question_id")
    return questions


def read_vqa_annotations(path: str | Path, questions: Sequence[VqaQuestion] | None = None) -> list[VqaAnnotation]:
    """The annotations of a VQAv2/OK-VQA annotations file, in file order (the order the official script scores in).

    With `questions` (the split's questions file), each annotation must belong to one of them and show the same
    image: a mismatch means the two files are of different splits or releases."""
    path = Path(path)
    data = load_json(path, "VQA annotations")
    if isinstance(data, dict) and "annotations" not in data and "questions" in data:
        raise DatasetError(f"{path}: holds questions, not annotations (no 'annotations' list; test splits have none)")
    annotations = [
        _annotation(record, f"{path}, annotation {index}")
        for index, record in enumerate(require(data, "annotations", list, str(path)))
    ]
    _check_unique([annotation.question_id for annotation in annotations], f"{path}: question_id")
    if questions is not None:
        _check_same_split(path, data, annotations, questions)
    return annotations


def read_vqa_predictions(path: str | Path) -> dict[int, str]:
    """Answer by question id of a results file `[{"question_id": int, "answer": str}, …]`."""
    path = Path(path)
    data = load_json(path, "VQA results")
    if not isinstance(data, list):
        raise DatasetError(f'{path}: a results file is a list of {{"question_id", "answer"}} objects')
    predictions: dict[int, str] = {}
    for index, record in enumerate(data):
        where = f"{path}, result {index}"
        question_id = require(record, "question_id", int, where)
        if question_id in predictions:
            raise DatasetError(f"{where}: a second answer to question {question_id}")
        predictions[question_id] = require(record, "answer", str, where)
    return predictions


def _annotation(record: Any, where: str) -> VqaAnnotation:
    answers = [
        _human_answer(answer, f"{where}, answer {index}")
        for index, answer in enumerate(require(record, "answers", list, where))
    ]
    if not answers:
        raise DatasetError(f"{where}: 'answers' is empty")
    _check_unique([answer_id for answer_id, _ in answers], f"{where}: answer_id")
    return VqaAnnotation(
        question_id=require(record, "question_id", int, where),
        image_id=require(record, "image_id", int, where),
        question_type=require(record, "question_type", str, where),
        answer_type=require(record, "answer_type", str, where),
        answers=tuple(answer for _, answer in answers),
        multiple_choice_answer=optional(record, "multiple_choice_answer", str, where),
    )


def _human_answer(record: Any, where: str) -> tuple[int, str]:
    return require(record, "answer_id", int, where), require(record, "answer", str, where)


def _check_same_split(
    path: Path, data: dict[str, Any], annotations: Sequence[VqaAnnotation], questions: Sequence[VqaQuestion]
) -> None:
    split = optional(data, "data_subtype", str, str(path))
    question_splits = {question.split for question in questions}
    if split is not None and question_splits and split not in question_splits:
        raise DatasetError(f"{path}: annotations of {split}, but the questions are of {', '.join(question_splits)}")
    images = {question.question_id: question.image_id for question in questions}
    for annotation in annotations:
        if annotation.question_id not in images:
            raise DatasetError(f"{path}: question {annotation.question_id} is not in the questions file")
        if images[annotation.question_id] != annotation.image_id:
            raise DatasetError(
                f"{path}: question {annotation.question_id} is about image {annotation.image_id} here and "
                f"{images[annotation.question_id]} in the questions file"
            )


def _check_unique(values: Sequence[int], where: str) -> None:
    seen: set[int] = set()
    for value in values:
        if value in seen:
            raise DatasetError(f"{where} {value} appears twice")
        seen.add(value)
