"""Evaluation scores of the generative kinds: math, multiple choice, summarization and chat.

A generative student writes text, so before it can be compared with a gold answer its text has to be
read the way the kind reads the teacher's: a number for math (`potstill.kinds.numbers.extract_answer`, or a
bare number), one of the row's choices for multiple choice (`match_choice`), the text itself for
summarization and chat (ROUGE-L against the reference). Each kind's `score` here returns metrics without
the model prefix, like `potstill.metrics.classification_scores`, and its headline metric is one of them
(`student_exact_match`, `student_accuracy`, `student_rouge_l`); the `*_agreement` functions measure how
often teacher and student say the same thing, read the same way.

Unreadable predictions are `None` and always count as wrong, never as missing: a student that stops
answering must score lower, not be scored on the rows it still answers. Pure functions: no files, no
MLflow.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from potstill.kinds.closed import CHOICE_LETTERS
from potstill.kinds.numbers import _ANY_NUMBER, extract_answer, normalise_number

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

# "Answer: B", "answer is B", "The correct answer is: B": what a student may put before its choice.
_ANSWER_PREFIX = re.compile(r"(?:the\s+)?(?:correct\s+)?answer\s*(?:is\s*:?|:)\s*")
# A letter that stands alone: "(b)", "b)", "b.", "b:", "b,", or the whole answer "b". "a cat" is no
# letter answer (the article), so a bare letter followed by more words counts only after "Answer:".
_LETTER_ALONE = re.compile(r"\(([a-z])\)|([a-z])(?:[.):,]|$)")
_LETTER_WORD = re.compile(r"([a-z])(?![a-z0-9])")


def _same_length(a: Sequence[object], b: Sequence[object]) -> None:
    """Scores of misaligned rows would be silently wrong, so a length mismatch is an error."""
    if len(a) != len(b):
        raise ValueError(f"gold and predictions differ in length: {len(a)} vs {len(b)}")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _norm(text: str) -> str:
    """Whitespace and case do not change an answer: `"  New  York "` and `"new york"` are one choice."""
    return " ".join(text.split()).casefold()


# --- math --------------------------------------------------------------------------------------------


def read_number(value: str | None) -> str | None:
    """The normalised number a gold or predicted math value stands for, or None.

    Gold values come as full GSM8K solutions (`... #### 42`) or bare numbers (`42`, `$1,000`), and a
    student may write either, so both are read: the solution's final answer (`extract_answer`) first,
    else the whole value when it is a single number. A number inside other text is not read: it is an
    intermediate result, not an answer (as in `extract_answer`).
    """

    if value is None:
        return None
    answer = extract_answer(value)
    if answer is not None:
        return answer
    whole = value.strip().rstrip(".").strip()
    return normalise_number(whole) if _ANY_NUMBER.fullmatch(whole) else None


def math_scores(
    gold: Sequence[str | None], pred: Sequence[str | None], labels: Sequence[str] = ()
) -> dict[str, float]:
    """`exact_match`: share of rows whose predicted number equals the gold number (an unreadable
    prediction, or gold, is wrong); `no_answer_rate`: share of predictions with no readable number, which
    tells a student that reasons wrongly from one that no longer ends with an answer. `labels` is unused
    (math has no label set); it is there to fit `ScoreFn`."""
    _same_length(gold, pred)
    read = [read_number(p) for p in pred]
    hits = [p is not None and p == read_number(g) for g, p in zip(gold, read, strict=True)]
    return {
        "exact_match": _mean([float(h) for h in hits]),
        "no_answer_rate": _mean([float(p is None) for p in read]),
    }


def math_agreement(a: Sequence[str | None], b: Sequence[str | None]) -> float:
    """Share of rows where teacher and student reach the same number (both readable, equal after
    `read_number`, so `#### 7` and `7` agree)."""
    _same_length(a, b)
    pairs = [(read_number(x), read_number(y)) for x, y in zip(a, b, strict=True)]
    return _mean([float(x is not None and x == y) for x, y in pairs])


# --- multiple choice ---------------------------------------------------------------------------------


def _prefix_choice(text: str, normed: Sequence[tuple[str, str]]) -> str | None:
    """The longest choice `text` starts with, ending at a word boundary ("3" is not the start of "30")."""
    found = [
        (len(norm), choice)
        for norm, choice in normed
        if text.startswith(norm) and (len(text) == len(norm) or not text[len(norm)].isalnum())
    ]
    return max(found, key=lambda f: f[0])[1] if found else None


def match_choice(text: str | None, choices: Sequence[str]) -> str | None:
    """Which of a row's `choices` a generated answer names, or None when it names none.

    In order of trust: the answer is a choice's text (whitespace and case aside); it starts with a
    choice's text ("Paris, because ..."; the longest such choice wins, so "New York City" beats "New
    York"); it is a letter as `format_choices` shows them (`B`, `B.`, `(B)`, `B)`, `Answer: B`), A being
    the first choice. The same checks run again on what follows an `Answer:` prefix. A letter beyond
    the row's choices names nothing.
    """
    if text is None or not choices:
        return None
    s = _norm(text)
    normed = [(_norm(c), c) for c in choices]
    prefix = _ANSWER_PREFIX.match(s)
    rest = s[prefix.end() :] if prefix else None
    candidates = [s] if rest is None else [s, rest]
    for cand in candidates:
        for norm, choice in normed:
            if cand == norm:
                return choice
    for cand in candidates:
        found = _prefix_choice(cand, normed)
        if found is not None:
            return found
    letter = _LETTER_ALONE.match(rest if rest is not None else s)
    if letter is None and rest is not None:
        letter = _LETTER_WORD.match(rest)
    if letter is None:
        return None
    index = CHOICE_LETTERS.lower().index(next(g for g in letter.groups() if g))
    return choices[index] if index < len(choices) else None


def choice_scores(
    gold: Sequence[str | None], pred: Sequence[str | None], labels: Sequence[str] = ()
) -> dict[str, float]:
    """`accuracy`: share of rows whose predicted choice text is the gold one (whitespace and case aside;
    None is wrong); `no_choice_rate`: share of predictions that named no choice (`match_choice` gave
    None). Predictions are choice texts already; `labels` is unused (each row has its own choices)."""
    _same_length(gold, pred)
    hits = [g is not None and p is not None and _norm(g) == _norm(p) for g, p in zip(gold, pred, strict=True)]
    return {
        "accuracy": _mean([float(h) for h in hits]),
        "no_choice_rate": _mean([float(p is None) for p in pred]),
    }


def choice_agreement(a: Sequence[str | None], b: Sequence[str | None]) -> float:
    """Share of rows where teacher and student chose the same choice (both named one, equal whitespace
    and case aside)."""
    _same_length(a, b)
    return _mean(
        [float(x is not None and y is not None and _norm(x) == _norm(y)) for x, y in zip(a, b, strict=True)]
    )


# --- free text (summarization, chat) -----------------------------------------------------------------


@cache
def _rouge() -> RougeScorer:
    """One scorer for the process; imported on first use, since `rouge_score` pulls in nltk and every
    `import potstill.kinds` would pay for it."""
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(reference: str, prediction: str | None) -> float:
    """ROUGE-L F-measure of `prediction` against `reference` (LCS of stemmed lowercase words); 0 for no
    prediction. Note rouge_score keeps only [a-z0-9] tokens, so non-Latin text scores 0."""
    if prediction is None:
        return 0.0
    return _rouge().score(reference, prediction)["rougeL"].fmeasure


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def text_scores(
    gold: Sequence[str | None], pred: Sequence[str | None], labels: Sequence[str] = ()
) -> dict[str, float]:
    """Free-text scores: `rouge_l`, the mean ROUGE-L F-measure over the rows that have a reference (a
    missing prediction scores 0); `length_words`, the mean words per prediction (a missing one has 0), and
    `reference_length_words`, the same for the references, since a student that learned to write much
    shorter or longer than the references is visible here before its ROUGE says why;
    `rows_with_reference`, how many rows the ROUGE is over.

    Chat gold rows often have no reference reply; with none at all, `rouge_l` and
    `reference_length_words` are left out rather than reported as 0, which would read as a bad student.
    `labels` is unused.
    """
    _same_length(gold, pred)
    with_ref = [(g, p) for g, p in zip(gold, pred, strict=True) if isinstance(g, str) and g.strip()]
    out: dict[str, float] = {
        "length_words": _mean([float(_words(p)) for p in pred]),
        "rows_with_reference": float(len(with_ref)),
    }
    if with_ref:
        out["rouge_l"] = _mean([rouge_l(g, p) for g, p in with_ref])
        out["reference_length_words"] = _mean([float(_words(g)) for g, _ in with_ref])
    return out


def text_agreement(a: Sequence[str | None], b: Sequence[str | None]) -> float:
    """Mean ROUGE-L F-measure of the student's text (`b`) against the teacher's (`a`): how closely the
    student writes what the teacher would; 0 for a row where either wrote nothing. ROUGE-L F is
    symmetric, so which side is the reference does not matter."""
    _same_length(a, b)
    return _mean([rouge_l(x, y) if x and y else 0.0 for x, y in zip(a, b, strict=True)])
