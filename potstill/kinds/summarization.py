"""summarization: a text in, the teacher's summary out (confidence from its token log-probabilities)."""

from __future__ import annotations

from potstill.kinds.base import Kind
from potstill.kinds.scores import text_agreement, text_scores
from potstill.kinds.text import label_text

KIND = Kind(
    name="summarization",
    fields=("text",),
    label=label_text,
    closed=False,
    fixed_labels=False,
    teacher_prompt="Summarize the text in one sentence.\n\nText: {text}\nSummary:",
    student_prompt="Text: {text}\nSummary:",
    headline="student_rouge_l",
    score=text_scores,
    agree=text_agreement,
    description="free-text summaries of a text",
)
