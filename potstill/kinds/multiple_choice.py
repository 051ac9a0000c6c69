"""multiple_choice: a question and the row's own list of choices; the teacher scores each choice."""

from __future__ import annotations

from typing import Any

from potstill.kinds.base import Kind
from potstill.kinds.closed import choice_options, format_choices, label_multiple_choice
from potstill.kinds.scores import choice_agreement, choice_scores, match_choice


def with_choices_text(row: dict[str, Any]) -> dict[str, Any]:
    """The row with `choices_text` (`A. first B. second ...`), what the default prompts show; a row whose
    choices are unusable is left as it is (labeling reports it as a parse error)."""
    options = choice_options(row)
    if isinstance(options, str):
        return row
    return {**row, "choices_text": format_choices(options)}


def read_choice(text: str, row: dict[str, Any]) -> str | None:
    """The option of the row a generated answer names (by its text or its letter), else None."""
    options = choice_options(row)
    return None if isinstance(options, str) else match_choice(text, options)


KIND = Kind(
    name="multiple_choice",
    fields=("text", "choices"),
    list_fields=("choices",),
    label=label_multiple_choice,
    closed=True,
    fixed_labels=False,
    teacher_prompt="Answer the question with one of the choices.\n\n"
    "Question: {text}\nChoices: {choices_text}\nAnswer:",
    student_prompt="Question: {text}\nChoices: {choices_text}\nAnswer:",
    headline="student_accuracy",
    score=choice_scores,
    agree=choice_agreement,
    derive=with_choices_text,
    derived_fields=("choices_text",),
    read=read_choice,
    description="a question with its own choices per row; the answer is the chosen choice's text",
)
