"""GQA's question files as published (cs.stanford.edu/people/dorarad/gqa), e.g. `testdev_balanced_questions.json`.

A question file is one object keyed by question id: `{"<qid>": {"imageId", "question", "answer", "fullAnswer",
"types": {"structural", "semantic", "detailed"}, "isBalanced", …}}`; images are `<imageId>.jpg` in one folder.
The test and challenge files carry no answers. A predictions file is GQA's `[{"questionId": str, "prediction": str}]`;
the VQA-style `[{"question_id", "answer"}]` is read as well, so one runner's output serves both benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusioncam.datasets.json_fields import DatasetError, load_json, optional, require


@dataclass(frozen=True)
class GqaQuestion:
    """One question; `answer` is None in the test and challenge files, `structural_type` when the file types its
    questions (verify, query, choose, logical, compare: GQA reports accuracy per type, and "query" as open)."""

    question_id: str
    image_id: str
    question: str
    answer: str | None
    structural_type: str | None

    def image_path(self, root: Path) -> Path:
        return root / f"{self.image_id}.jpg"


def read_gqa_questions(path: str | Path) -> list[GqaQuestion]:
    """The questions of a GQA question file, in file order."""
    path = Path(path)
    data = load_json(path, "GQA questions")
    if not isinstance(data, dict):
        raise DatasetError(f'{path}: a GQA question file is an object {{"<question id>": {{"imageId", "question"}}}}')
    return [_question(question_id, record, f"{path}, question {question_id}") for question_id, record in data.items()]


def read_gqa_predictions(path: str | Path) -> dict[str, str]:
    """Prediction by question id of `[{"questionId", "prediction"}]` or `[{"question_id", "answer"}]` records.

    Ids are compared as strings, as GQA's files key them; an integer id (from the VQA-style layout) is read as its
    decimal string."""
    path = Path(path)
    data = load_json(path, "GQA predictions")
    if not isinstance(data, list):
        raise DatasetError(f'{path}: a predictions file is a list of {{"questionId", "prediction"}} objects')
    predictions: dict[str, str] = {}
    for index, record in enumerate(data):
        where = f"{path}, prediction {index}"
        question_id, answer = _prediction(record, where)
        if question_id in predictions:
            raise DatasetError(f"{where}: a second prediction for question {question_id}")
        predictions[question_id] = answer
    return predictions


def _question(question_id: str, record: Any, where: str) -> GqaQuestion:
    types = optional(record, "types", dict, where)
    return GqaQuestion(
        question_id=question_id,
        image_id=require(record, "imageId", str, where),
        question=require(record, "question", str, where),
        answer=optional(record, "answer", str, where),
        structural_type=require(types, "structural", str, f"{where}, types") if types is not None else None,
    )


def _prediction(record: Any, where: str) -> tuple[str, str]:
    if isinstance(record, dict) and "questionId" in record:
        return _question_id(record, "questionId", where), require(record, "prediction", str, where)
    if isinstance(record, dict) and "question_id" in record:
        return _question_id(record, "question_id", where), require(record, "answer", str, where)
    raise DatasetError(f'{where}: expected {{"questionId", "prediction"}} or {{"question_id", "answer"}}')


def _question_id(record: dict[str, Any], key: str, where: str) -> str:
    value = record[key]
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DatasetError(f"{where}: '{key}' must be a string or an integer, found {value!r}")
