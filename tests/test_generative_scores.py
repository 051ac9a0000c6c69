"""Scores of the generative kinds (potstill.kinds.scores), each pinned against a naive reference written
from its definition here, plus the wiring of `score` / `agree` / `headline` on the kinds."""

from __future__ import annotations

import re

import pytest

from potstill.kinds import KINDS, chat, math, multiple_choice, summarization
from potstill.kinds.scores import (
    choice_agreement,
    choice_scores,
    match_choice,
    math_agreement,
    math_scores,
    read_number,
    text_agreement,
    text_scores,
)

# --- naive references --------------------------------------------------------------------------------


def naive_rouge_l(reference: str, prediction: str) -> float:
    """Textbook ROUGE-L F1: LCS of lowercase word tokens by dynamic programming, P = LCS/|pred|,
    R = LCS/|ref|, F = 2PR/(P+R)."""
    ref = re.findall(r"[a-z0-9]+", reference.lower())
    hyp = re.findall(r"[a-z0-9]+", prediction.lower())
    table = [[0] * (len(hyp) + 1) for _ in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            if ref[i - 1] == hyp[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    lcs = table[len(ref)][len(hyp)]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


# Pairs whose words stem to distinct stems (no two different words share one), so stemming changes no
# token match and the naive unstemmed LCS is the stemmed one.
PAIRS = [
    ("the cat sat on the mat", "the cat was on the mat"),
    ("a red fox ran far away", "far away a red fox ran"),
    ("police found the car near the old bridge", "the old bridge was near"),
    ("rain fell all day in the city", "sun shone on the hills"),
    ("one two three four five", "five four three two one"),
    ("Prices rose by 5 percent in May", "in may prices rose 5 percent"),
]


def test_naive_rouge_reference_is_sane() -> None:
    assert naive_rouge_l("a b c", "a b c") == 1.0
    assert naive_rouge_l("a b c", "d e") == 0.0
    # LCS("a b c d", "a c") = 2: P = 1, R = 1/2, F = 2/3
    assert naive_rouge_l("a b c d", "a c") == pytest.approx(2 / 3)


@pytest.mark.parametrize(("reference", "prediction"), PAIRS)
def test_rouge_l_matches_textbook_lcs(reference: str, prediction: str) -> None:
    out = text_scores([reference], [prediction], [])
    assert out["rouge_l"] == pytest.approx(naive_rouge_l(reference, prediction), abs=1e-9)
    assert out["rows_with_reference"] == 1.0


def test_text_scores_mean_over_rows_with_reference() -> None:
    gold = [r for r, _ in PAIRS] + [None, "", "   "]
    pred = [p for _, p in PAIRS] + ["no reference here", "nor here", None]
    out = text_scores(gold, pred, [])
    expected = sum(naive_rouge_l(r, p) for r, p in PAIRS) / len(PAIRS)
    assert out["rouge_l"] == pytest.approx(expected, abs=1e-9)
    assert out["rows_with_reference"] == len(PAIRS)
    words = [len(p.split()) if p else 0 for p in pred]
    assert out["length_words"] == pytest.approx(sum(words) / len(pred))
    ref_words = [len(r.split()) for r, _ in PAIRS]
    assert out["reference_length_words"] == pytest.approx(sum(ref_words) / len(PAIRS))


def test_text_scores_missing_prediction_scores_zero() -> None:
    out = text_scores(["the cat sat", "the dog ran"], ["the cat sat", None], [])
    assert out["rouge_l"] == pytest.approx(0.5)
    assert out["length_words"] == pytest.approx(1.5)


def test_text_scores_without_references_omit_rouge() -> None:
    out = text_scores([None, ""], ["some reply", None], [])
    assert "rouge_l" not in out
    assert "reference_length_words" not in out
    assert out["rows_with_reference"] == 0.0
    assert out["length_words"] == pytest.approx(1.0)


def test_text_agreement() -> None:
    teacher = [r for r, _ in PAIRS] + [None, "teacher only"]
    student = [p for _, p in PAIRS] + ["student only", None]
    expected = sum(naive_rouge_l(r, p) for r, p in PAIRS) / len(teacher)
    assert text_agreement(teacher, student) == pytest.approx(expected, abs=1e-9)
    assert text_agreement(["same words"], ["same words"]) == pytest.approx(1.0)


# --- math --------------------------------------------------------------------------------------------


def naive_exact_match(gold: list[str], pred: list[str | None]) -> float:
    """Equality of the numbers written by hand for each row (None: no readable number)."""
    return sum(g is not None and g == p for g, p in zip(gold, pred, strict=True)) / len(gold)


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
        ("7", "7"),
        ("  7. ", "7"),
        ("$1,000", "1000"),
        ("1000", "1000"),
        ("72.0", "72"),
        ("1/2", "0.5"),
        ("The answer is 12", "12"),
        ("she has 7 apples", None),  # a number inside text is an intermediate result, not an answer
        ("3 4", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_read_number(value: str | None, number: str | None) -> None:
    assert read_number(value) == number


def test_math_scores() -> None:
    gold = ["She has 3 + 4 = 7 apples.\n#### 7", "$1,000", "He pays 2 * 6 = $12.\n#### 12", "5", "9"]
    pred = ["7", "1000", "#### 13", None, "the result is nine"]
    by_hand_gold = ["7", "1000", "12", "5", "9"]
    by_hand_pred = ["7", "1000", "13", None, None]
    out = math_scores(gold, pred, [])
    assert out["exact_match"] == pytest.approx(naive_exact_match(by_hand_gold, by_hand_pred))
    assert out["exact_match"] == pytest.approx(2 / 5)
    assert out["no_answer_rate"] == pytest.approx(2 / 5)


def test_math_unreadable_gold_never_matches() -> None:
    assert math_scores(["no number"], ["no number either"], [])["exact_match"] == 0.0


def test_math_agreement() -> None:
    teacher = ["... #### 7", "$1,000", None, "4"]
    student = ["7", "1000", None, "5"]
    assert math_agreement(teacher, student) == pytest.approx(2 / 4)


# --- multiple choice ---------------------------------------------------------------------------------

CHOICES = ["London", "Paris", "New York", "New York City"]


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("Paris", "Paris"),
        ("  pARIS ", "Paris"),
        ("new   york", "New York"),
        ("Paris, because it is the capital", "Paris"),
        ("New York City, obviously", "New York City"),  # the longest prefix wins
        ("New York is big", "New York"),
        ("B", "Paris"),
        ("b", "Paris"),
        ("B.", "Paris"),
        ("(B)", "Paris"),
        ("B)", "Paris"),
        ("B) Paris", "Paris"),
        ("Answer: B", "Paris"),
        ("Answer: B because it is", "Paris"),
        ("The answer is (D).", "New York City"),
        ("Answer: London", "London"),
        ("A", "London"),
        ("Parisian food", None),  # a choice must end at a word boundary
        ("E", None),  # beyond the row's choices
        ("a city in France", None),  # an article, not a letter
        ("Berlin", None),
        ("", None),
        (None, None),
    ],
)
def test_match_choice(text: str | None, choice: str | None) -> None:
    assert match_choice(text, CHOICES) == choice


def test_match_choice_numbers_need_a_boundary() -> None:
    assert match_choice("30 apples", ["3", "30"]) == "30"
    assert match_choice("3 apples", ["3", "30"]) == "3"


def test_choice_scores() -> None:
    gold = ["Paris", "London", "New York", "Paris"]
    pred = ["paris", None, "New York City", "Paris"]
    by_hand = [True, False, False, True]
    out = choice_scores(gold, pred, [])
    assert out["accuracy"] == pytest.approx(sum(by_hand) / len(by_hand))
    assert out["no_choice_rate"] == pytest.approx(1 / 4)


def test_choice_agreement() -> None:
    assert choice_agreement(["Paris", None, "London"], [" paris", None, "Paris"]) == pytest.approx(1 / 3)


# --- shared behaviour --------------------------------------------------------------------------------

PAIRWISE = [math_scores, choice_scores, text_scores]
AGREEMENTS = [math_agreement, choice_agreement, text_agreement]


@pytest.mark.parametrize("score", PAIRWISE)
def test_scores_length_mismatch_raises(score) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        score(["1", "2"], ["1"], [])


@pytest.mark.parametrize("agree", AGREEMENTS)
def test_agreement_length_mismatch_raises(agree) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        agree(["1"], ["1", "2"])


def test_generative_kinds_score_and_agree() -> None:
    expected = {
        "math": (math_scores, math_agreement, "student_exact_match"),
        "multiple_choice": (choice_scores, choice_agreement, "student_accuracy"),
        "summarization": (text_scores, text_agreement, "student_rouge_l"),
        "chat": (text_scores, text_agreement, "student_rouge_l"),
    }
    modules = {"math": math, "multiple_choice": multiple_choice, "summarization": summarization, "chat": chat}
    samples = {
        "math": (["#### 7"], ["7"]),
        "multiple_choice": (["Paris"], ["Paris"]),
        "summarization": (["the cat sat"], ["the cat sat"]),  # with a reference, so rouge_l is reported
        "chat": (["hello there"], ["hello there"]),
    }
    for name, (score, agree, headline) in expected.items():
        kind = KINDS[name]
        assert kind is modules[name].KIND
        assert kind.score is score
        assert kind.agree is agree
        assert kind.headline == headline
        gold, pred = samples[name]
        keys = kind.score(gold, pred, [])
        assert headline.removeprefix("student_") in keys
        assert keys[headline.removeprefix("student_")] == pytest.approx(1.0)
        assert kind.agree(pred, pred) == pytest.approx(1.0)
    assert KINDS["math"].parse is not None


def test_fixed_label_kinds_keep_plain_agreement() -> None:
    for name in ("classification", "nli"):
        assert KINDS[name].agree is None
        assert KINDS[name].score is not None
