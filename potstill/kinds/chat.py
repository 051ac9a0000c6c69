"""chat: an instruction or message in, the teacher's reply out (confidence from its log-probabilities)."""

from __future__ import annotations

from potstill.kinds.base import Kind
from potstill.kinds.scores import text_agreement, text_scores
from potstill.kinds.text import label_text

KIND = Kind(
    name="chat",
    fields=("text",),
    label=label_text,
    closed=False,
    fixed_labels=False,
    teacher_prompt="User: {text}\nAssistant:",
    student_prompt="User: {text}\nAssistant:",
    headline="student_rouge_l",
    judge_by_teacher=True,
    score=text_scores,
    agree=text_agreement,
    description="free-text replies to a message or instruction",
)
