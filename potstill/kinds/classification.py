"""classification: a text and a fixed label set the task declares; the teacher scores every label."""

from __future__ import annotations

from potstill.kinds.base import Kind
from potstill.kinds.closed import label_classification
from potstill.metrics import classification_scores

KIND = Kind(
    name="classification",
    fields=("text",),
    label=label_classification,
    closed=True,
    fixed_labels=True,
    score=classification_scores,
    teacher_prompt="Classify the text as one of: {labels}.\n\nText: {text}\nLabel:",
    student_prompt="Text: {text}\nLabel:",
    rationale_prompt="Explain in one short sentence why the text has its label.\n\n"
    "Text: {text}\nLabel: {label}\nExplanation:",
    description="one label of a fixed set per text (sentiment, topic, intent, ...)",
)
