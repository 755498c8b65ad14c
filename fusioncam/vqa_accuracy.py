"""VQA accuracy and GQA accuracy exactly as the published evaluation code computes them (no torch, no models).

VQA accuracy is that of the VQA evaluation script (`vqaEval.py`, github.com/GT-Vision-Lab/VQA), which exists in
two versions that score the same answers differently:
- "2016" (the default): the script from 2016 until March 2021, which LAVIS ships and with which BLIP and PNP-VQA
  figures were measured. The prediction is always cleaned (punctuation, then numbers, articles and contractions);
  the human answers get only the punctuation step, and only when they are not all the same.
- "2021": the script since its March 2021 change. The human answers lose newlines, tabs and surrounding spaces;
  then, only when they are not all the same, prediction and human answers both get both cleaning steps. When all
  ten agree, the prediction is compared as typed ("Yes" misses ten "yes").
Either way a question scores, for each human answer left out in turn, min(1, matches among the others / 3), and
the mean of those; figures are means in percent rounded to two decimals.

The cleaning reproduces the script's quirks, since published numbers depend on them: a punctuation mark is deleted
(not replaced by a space) everywhere when it touches a space anywhere in the text, and every mark is deleted when
the text holds a digit-comma-digit run ("1,000" → "1000"); periods go unless a digit follows ("3.5" stays, "3."
and "u.s." lose theirs), at most 32 of them (the script passes a flag where the count goes); of the contractions it
restores, the capitalised ones can never match lower-cased words ("im" stays "im"), and "somebody'd" turns into
"somebodyd".

GQA accuracy is exact match, with the prediction cleaned as above, as LAVIS scores generated answers; GQA's own
script compares raw strings and reports the same accuracy per structural type and for binary and open questions
("query" questions are open).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from fusioncam.datasets import GqaQuestion, VqaAnnotation

Script = Literal["2016", "2021"]
K = TypeVar("K", bound=Hashable)

# Marks the script handles; apostrophes, colons and periods are not among them (periods have their own rule).
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The script's pattern opens with a look-*ahead* for "<=" and a digit (a mistyped look-behind) that always holds
# before a period: what remains is "a period not followed by a digit".
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32  # the script passes re.UNICODE (32) where `sub` takes its count
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# The contractions the script restores, each from any spelling that lacks exactly one of its apostrophes
# ("dont" → "don't"; "couldnt've" and "couldn'tve" → "couldn't've").
_RESTORED = """
    'ow's'at 'twas ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
    haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am might've mightn't mightn't've must've
    mustn't needn't not've o'clock oughtn't shan't she'd've should've shouldn't shouldn't've somebody'd've
    somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll
    that's there'd there'd've there're there's they'd they'd've they'll they're they've wasn't we'd've we've weren't
    what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're
    why's won't would've wouldn't wouldn't've y'all y'all'd've y'all'll you'd you'd've you'll you're you've
"""


def _contractions() -> dict[str, str]:
    table = {
        word[:index] + word[index + 1 :]: word
        for word in _RESTORED.split()
        for index, char in enumerate(word)
        if char == "'"
    }
    table["somebody'd"] = "somebodyd"  # the one entry of the script's table written the wrong way round
    return table


_CONTRACTIONS = _contractions()


def process_punctuation(text: str) -> str:
    """The script's punctuation step: each mark deleted or replaced by a space, then periods (see the module)."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    cleaned = text
    for mark in _PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text  # in the text as given, not as cleaned so far
        cleaned = cleaned.replace(mark, "" if delete_all or touches_space else " ")
    return _PERIOD.sub("", cleaned, count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """The script's word step: lower-case, number words to digits, no articles, contractions restored, one space
    between words."""
    words = (_NUMBERS.get(word, word) for word in text.lower().split())
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """A prediction as the 2016 script compares it (and as LAVIS cleans GQA answers)."""
    return _clean(_one_line(text))


def vqa_accuracy(prediction: str, answers: Sequence[str], script: Script = "2016") -> float:
    """The accuracy in [0, 1] of one prediction against the human answers (ten in VQAv2 and OK-VQA).

    With ten answers of which m match: 0, 0.3, 0.6, 0.9 for m = 0..3 and 1 from 4 on."""
    if not answers:
        raise ValueError("no human answers to score against")
    prediction, answers = _compared_forms(prediction, answers, script)
    matches = [answer == prediction for answer in answers]
    total = sum(matches)
    # Leaving out answer i leaves total - matches[i] matching answers among the others.
    scores = [min(1, (total - left_out) / 3) for left_out in matches]
    return sum(scores) / len(scores)


def _compared_forms(prediction: str, answers: Sequence[str], script: Script) -> tuple[str, list[str]]:
    """Prediction and human answers in the forms the given version of the script compares."""
    if script == "2016":
        agree = len(set(answers)) == 1
        return normalize_answer(prediction), list(answers) if agree else [process_punctuation(a) for a in answers]
    prediction, answers = _one_line(prediction), [_one_line(answer) for answer in answers]
    if len(set(answers)) == 1:
        return prediction, answers
    return _clean(prediction), [_clean(answer) for answer in answers]


def _clean(text: str) -> str:
    return process_digit_article(process_punctuation(text))


def _one_line(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


@dataclass(frozen=True)
class VqaScores:
    """VQA accuracy in percent, rounded to two decimals as the script reports it; per-question figures too.

    Means are of the unrounded per-question accuracies. `unanswered` are the annotated questions with no
    prediction, which are left out of every figure."""

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    per_question: dict[int, float]
    answer_type_counts: dict[str, int]
    unanswered: list[int]

    def to_dict(self) -> dict[str, object]:
        return {
            "overall": self.overall,
            "per_answer_type": self.per_answer_type,
            "per_question_type": self.per_question_type,
            "per_question": {str(question_id): score for question_id, score in self.per_question.items()},
            "questions": len(self.per_question),
            "unanswered": len(self.unanswered),
        }


def score_vqa(
    annotations: Sequence[VqaAnnotation], predictions: Mapping[int, str], script: Script = "2016"
) -> VqaScores:
    """Score the predictions (answer by question id) of the annotated questions they answer.

    The official script refuses a results file that does not answer every annotated question; this scores the
    answered ones (as its `evaluate(quesIds)` would) and lists the others in `unanswered`. A prediction for a
    question that is not annotated is an error, as there."""
    _check_known(predictions, {annotation.question_id for annotation in annotations}, "annotations")
    scored = [annotation for annotation in annotations if annotation.question_id in predictions]
    if not scored:
        raise ValueError("no annotated question has a prediction")
    accuracy = {a.question_id: vqa_accuracy(predictions[a.question_id], a.answers, script) for a in scored}
    per_answer_type = _groups((a.answer_type, accuracy[a.question_id]) for a in scored)
    per_question_type = _groups((a.question_type, accuracy[a.question_id]) for a in scored)
    return VqaScores(
        overall=_vqa_percent(list(accuracy.values())),
        per_answer_type={name: _vqa_percent(values) for name, values in per_answer_type.items()},
        per_question_type={name: _vqa_percent(values) for name, values in per_question_type.items()},
        per_question={question_id: round(100 * value, 2) for question_id, value in accuracy.items()},
        answer_type_counts={name: len(values) for name, values in per_answer_type.items()},
        unanswered=[a.question_id for a in annotations if a.question_id not in predictions],
    )


@dataclass(frozen=True)
class GqaScores:
    """GQA accuracy in percent (not rounded, as LAVIS and GQA's script compute it): overall, and per structural
    type and per kind (binary or open) for files that type their questions."""

    overall: float
    per_structural_type: dict[str, float]
    per_kind: dict[str, float]
    per_question: dict[str, float]
    structural_type_counts: dict[str, int]
    kind_counts: dict[str, int]
    unanswered: list[str]

    def to_dict(self) -> dict[str, object]:
        return {
            "overall": self.overall,
            "per_kind": self.per_kind,
            "per_structural_type": self.per_structural_type,
            "per_question": self.per_question,
            "questions": len(self.per_question),
            "unanswered": len(self.unanswered),
        }


def gqa_correct(prediction: str, answer: str) -> bool:
    """Exact match of the cleaned prediction with GQA's answer as written."""
    return normalize_answer(prediction) == answer


def score_gqa(questions: Sequence[GqaQuestion], predictions: Mapping[str, str]) -> GqaScores:
    """Score the predictions (answer by question id) of the questions they answer; unanswered and unknown
    questions are handled as in `score_vqa`."""
    _check_known(predictions, {question.question_id for question in questions}, "questions")
    scored = [question for question in questions if question.question_id in predictions]
    if not scored:
        raise ValueError("no question has a prediction")
    correct = {q.question_id: float(gqa_correct(predictions[q.question_id], _answer(q))) for q in scored}
    typed = [(q.structural_type, correct[q.question_id]) for q in scored if q.structural_type is not None]
    per_type = _groups(typed)
    per_kind = _groups(("open" if name == "query" else "binary", value) for name, value in typed)
    return GqaScores(
        overall=_gqa_percent(list(correct.values())),
        per_structural_type={name: _gqa_percent(values) for name, values in per_type.items()},
        per_kind={name: _gqa_percent(values) for name, values in per_kind.items()},
        per_question={question_id: 100 * value for question_id, value in correct.items()},
        structural_type_counts={name: len(values) for name, values in per_type.items()},
        kind_counts={name: len(values) for name, values in per_kind.items()},
        unanswered=[question.question_id for question in questions if question.question_id not in predictions],
    )


def _answer(question: GqaQuestion) -> str:
    if question.answer is None:
        raise ValueError(f"question {question.question_id} has no answer (test and challenge files carry none)")
    return question.answer


def _check_known(predictions: Mapping[K, str], known: set[K], source: str) -> None:
    unknown = [question_id for question_id in predictions if question_id not in known]
    if unknown:
        shown = ", ".join(str(question_id) for question_id in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(f"{len(unknown)} predictions are for questions not in the {source}: {shown}{more}")


def _groups(pairs: Iterable[tuple[str, float]]) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = {}
    for name, value in pairs:
        groups.setdefault(name, []).append(value)
    return groups


def _vqa_percent(values: Sequence[float]) -> float:
    """The VQA script's figure: 100 × sum / count, in that order, rounded to two decimals."""
    return round(100 * sum(values) / len(values), 2)


def _gqa_percent(values: Sequence[float]) -> float:
    """GQA's (and LAVIS's) figure: sum / count × 100, in that order, unrounded."""
    return sum(values) / len(values) * 100
