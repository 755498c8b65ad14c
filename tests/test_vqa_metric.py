"""VQA and GQA accuracy against cases worked out by hand from the rules of the VQA evaluation script (vqaEval.py).

Every expected value below is derived in the test from those rules, never taken from running the code.
"""

from __future__ import annotations

import pytest

from fusioncam.datasets import GqaQuestion, VqaAnnotation
from fusioncam.vqa_accuracy import (
    gqa_correct,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    score_gqa,
    score_vqa,
    vqa_accuracy,
)

# --- punctuation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a-b", "a b"),  # a mark touching no space becomes a space
        ("red,blue", "red blue"),
        ("red, blue", "red blue"),  # ", " is in the text: the comma is deleted, the space was there already
        ("a/b /c", "ab c"),  # " /" occurs once, so *every* "/" is deleted, the one inside "a/b" too
        ("a-b c!", "a b c "),  # each mark decided on its own: neither touches a space, both become spaces
        ("1,000", "1000"),  # a digit-comma-digit run: marks are deleted, so the comma goes (it is not kept)
        ("1,000 (approx)", "1000 approx"),  # ... and every other mark in that text is deleted too
        ("don't: 1:30", "don't: 1:30"),  # apostrophes and colons are not punctuation to the script
        ('"yes"?', " yes  "),  # three marks, none touching a space: three spaces
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("3.", "3"),  # a period after a digit goes (the look-behind meant to keep it is mistyped)
        ("u.s.a.", "usa"),
        ("1.5.", "1.5"),
        ("." * 40, "." * 8),  # at most 32 periods are deleted
    ],
)
def test_punctuation(text: str, expected: str) -> None:
    assert process_punctuation(text) == expected


# --- numbers, articles, contractions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two Dogs", "2 dogs"),  # lower-cased, then number words become digits
        ("none", "0"),
        ("zero one two three four five six seven eight nine ten", "0 1 2 3 4 5 6 7 8 9 10"),
        ("eleven", "eleven"),  # only none and zero..ten
        ("the dog", "dog"),
        ("an apple a day", "apple day"),
        ("  a   big\tdog ", "big dog"),  # split on any whitespace, joined with one space
        ("dont", "don't"),  # a contraction missing its apostrophe gets it back
        ("couldnt've", "couldn't've"),  # missing one of two apostrophes: either one
        ("couldn'tve", "couldn't've"),
        ("couldntve", "couldntve"),  # missing both: not in the table
        ("hes", "he's"),
        ("shes", "shes"),  # the table has "she's" only as itself, never from "shes"
        ("lets", "lets"),  # likewise "let's"
        ("Im", "im"),  # the table's key is "Im", which a lower-cased word never equals
        ("somebody'd", "somebodyd"),  # the table's one entry written the wrong way round
        ("twas", "'twas"),
    ],
)
def test_digits_articles_contractions(text: str, expected: str) -> None:
    assert process_digit_article(text) == expected


def test_a_prediction_is_cleaned_in_the_scripts_order() -> None:
    # newline → space and strip; "." not before a digit deleted; "Two" → "2"; "the" dropped.
    assert normalize_answer("  The Two.\n") == "2"
    # "none" is a number word: it becomes "0" and matches a "0" answer.
    assert normalize_answer("None") == "0"


# --- accuracy of one question ------------------------------------------------------------------------------------


def ten(matching: int) -> list[str]:
    """Ten human answers, `matching` of them "cat" (the rest "dog": answers not all equal)."""
    return ["cat"] * matching + ["dog"] * (10 - matching)


@pytest.mark.parametrize(
    ("matching", "expected", "percent"),
    [
        # Leaving out one of the m matching answers leaves m-1 matches, leaving out another answer leaves m; each
        # of the ten subsets scores min(1, matches/3), the question the mean over them:
        (0, 0.0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10, 30.0),
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10, 60.0),
        (3, (3 * (2 / 3) + 7 * 1) / 10, 90.0),
        (4, (4 * 1 + 6 * 1) / 10, 100.0),  # three matches remain whichever answer is left out
        (10, 1.0, 100.0),
    ],
)
def test_leave_one_annotator_out(matching: int, expected: float, percent: float) -> None:
    accuracy = vqa_accuracy("cat", ten(matching))
    assert accuracy == pytest.approx(expected)
    assert round(100 * accuracy, 2) == percent


def test_fewer_than_ten_answers() -> None:
    # Three answers, one matching: left out it leaves 0 matches, left out either other leaves 1 → (0 + 2/3) / 3.
    assert vqa_accuracy("cat", ["cat", "dog", "cow"]) == pytest.approx(2 / 9)


def test_human_answers_get_punctuation_only_when_they_disagree() -> None:
    # Disagreeing answers are punctuation-cleaned: three "red." become "red" and match the prediction "red".
    assert vqa_accuracy("red", ["red."] * 3 + ["blue"] * 7) == pytest.approx(0.9)
    # Ten equal answers are left as they are: the cleaned prediction "red" never equals "red.".
    assert vqa_accuracy("red.", ["red."] * 10) == 0.0
    # Only punctuation: the answers' number words stay words while the prediction's become digits. "two" → "2"
    # matches the one "2" answer only.
    assert vqa_accuracy("two", ["2"] + ["two"] * 9) == pytest.approx(0.3)
    # Ten equal "two": the prediction "two" is cleaned to "2" and matches none of them.
    assert vqa_accuracy("two", ["two"] * 10) == 0.0
    # Case: the prediction is always lower-cased, so "Yes" matches ten "yes".
    assert vqa_accuracy("Yes", ["yes"] * 10) == 1.0
    # Human answers are not stripped: ten "yes " never equal the stripped prediction.
    assert vqa_accuracy("yes", ["yes "] * 10) == 0.0


def test_the_2021_script_cleans_both_sides_only_when_the_answers_disagree() -> None:
    # Disagreeing answers get numbers, articles and contractions too: all ten become "2", the prediction as well.
    assert vqa_accuracy("two", ["2"] + ["two"] * 9, script="2021") == 1.0
    # Ten equal answers: the prediction is compared as typed (only stripped), so "Yes" misses ten "yes"...
    assert vqa_accuracy("Yes", ["yes"] * 10, script="2021") == 0.0
    # ...and "two" matches ten "two", "red." ten "red.".
    assert vqa_accuracy("two", ["two"] * 10, script="2021") == 1.0
    assert vqa_accuracy(" red.\n", ["red."] * 10, script="2021") == 1.0
    # Human answers are stripped first: ten "yes " are ten "yes".
    assert vqa_accuracy("yes", ["yes "] * 10, script="2021") == 1.0


# --- a results file's figures ------------------------------------------------------------------------------------


def annotation(
    question_id: int, answers: list[str], answer_type: str = "other", question_type: str = "what is"
) -> VqaAnnotation:
    return VqaAnnotation(question_id, 100 + question_id, question_type, answer_type, tuple(answers))


def test_figures_per_type_in_rounded_percent() -> None:
    annotations = [
        annotation(1, ten(3), "other"),  # "cat": 0.9
        annotation(2, ["yes"] * 10, "yes/no"),  # "no": 0
        annotation(3, ["yes"] * 10, "yes/no", "is the"),  # "yes": 1
        annotation(4, ["2"] * 10, "number", "how many"),  # "2": 1
        annotation(5, ["dog"] * 9 + ["cat"], "other"),  # "cat": 0.3 (one match)
    ]
    scores = score_vqa(annotations, {1: "cat", 2: "no", 3: "Yes", 4: "2", 5: "cat"})
    assert scores.per_question == {1: 90.0, 2: 0.0, 3: 100.0, 4: 100.0, 5: 30.0}
    # overall: 100 × (0.9 + 0 + 1 + 1 + 0.3) / 5 = 64
    assert scores.overall == 64.0
    # other: (0.9 + 0.3) / 2 = 60; yes/no: (0 + 1) / 2 = 50; number: 100
    assert scores.per_answer_type == {"other": 60.0, "yes/no": 50.0, "number": 100.0}
    assert scores.answer_type_counts == {"other": 2, "yes/no": 2, "number": 1}
    assert scores.per_question_type == {"what is": 40.0, "is the": 100.0, "how many": 100.0}
    assert scores.unanswered == []


def test_overall_is_the_rounded_mean_of_unrounded_question_scores() -> None:
    # Question 1: three answers, one match → 2/9 = 22.222…%; question 2: three equal answers, all matching →
    # each left out leaves 2 → 2/3 = 66.666…%. Shown rounded: 22.22 and 66.67.
    scores = score_vqa([annotation(1, ["cat", "dog", "cow"]), annotation(2, ["cat"] * 3)], {1: "cat", 2: "cat"})
    assert scores.per_question == {1: 22.22, 2: 66.67}
    # The mean of the unrounded scores, 4/9 = 44.444…%, rounds to 44.44; averaging the rounded figures would give
    # 44.445 and a different last digit.
    assert scores.overall == 44.44
    # Thirds: 100 × (1 + 0 + 0) / 3 = 33.333… → 33.33; 100 × 2 / 3 = 66.666… → 66.67.
    assert score_vqa([annotation(q, ["cat"] * 10) for q in (1, 2, 3)], {1: "cat", 2: "x", 3: "y"}).overall == 33.33
    assert score_vqa([annotation(q, ["cat"] * 10) for q in (1, 2, 3)], {1: "cat", 2: "cat", 3: "y"}).overall == 66.67


def test_unanswered_questions_are_left_out_and_listed() -> None:
    scores = score_vqa([annotation(1, ["cat"] * 10), annotation(2, ["dog"] * 10)], {2: "dog"})
    assert scores.overall == 100.0 and scores.per_question == {2: 100.0}
    assert scores.unanswered == [1]


def test_a_prediction_for_a_question_not_annotated_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 predictions are for questions not in the annotations: 7"):
        score_vqa([annotation(1, ["cat"] * 10)], {1: "cat", 7: "dog"})
    with pytest.raises(ValueError, match="no annotated question has a prediction"):
        score_vqa([annotation(1, ["cat"] * 10)], {})


# --- GQA ---------------------------------------------------------------------------------------------------------


def test_gqa_exact_match_after_cleaning_the_prediction() -> None:
    assert gqa_correct("The Dog.", "dog")  # lower-cased, period and article gone
    assert gqa_correct("two", "2")
    assert not gqa_correct("dogs", "dog")
    assert not gqa_correct("yes", "Yes")  # the answer is compared as GQA writes it


def gqa(question_id: str, answer: str, structural: str | None) -> GqaQuestion:
    return GqaQuestion(question_id, "n1", "?", answer, structural)


def test_gqa_figures() -> None:
    questions = [
        gqa("1", "yes", "verify"),
        gqa("2", "dog", "query"),
        gqa("3", "left", "choose"),
        gqa("4", "cat", "query"),
        gqa("5", "no", None),  # untyped: counts overall only
    ]
    scores = score_gqa(questions, {"1": "yes", "2": "a dog", "3": "right", "4": "dog", "5": "no"})
    assert scores.per_question == {"1": 100.0, "2": 100.0, "3": 0.0, "4": 0.0, "5": 100.0}
    assert scores.overall == pytest.approx(60.0)  # 3 of 5
    # open = the query questions (one of two right); binary = every other type (verify right, choose wrong)
    assert scores.per_kind == {"binary": 50.0, "open": 50.0}
    assert scores.per_structural_type == {"verify": 100.0, "query": 50.0, "choose": 0.0}
    assert scores.kind_counts == {"binary": 2, "open": 2}


def test_gqa_needs_answers_and_known_questions() -> None:
    with pytest.raises(ValueError, match="question 1 has no answer"):
        score_gqa([GqaQuestion("1", "n1", "?", None, None)], {"1": "yes"})
    with pytest.raises(ValueError, match="not in the questions: 9"):
        score_gqa([gqa("1", "yes", "verify")], {"9": "yes"})
