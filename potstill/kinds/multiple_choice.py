"""multiple_choice: a question and the row's own list of choices; the teacher scores each choice."""

from __future__ import annotations

from potstill.kinds.base import Kind
from potstill.kinds.closed import label_multiple_choice

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
    description="a question with its own choices per row; the answer is the chosen choice's text",
)
