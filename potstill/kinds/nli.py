"""nli: premise/hypothesis pairs labeled entailment / neutral / contradiction (or the task's own set)."""

from __future__ import annotations

from potstill.kinds.base import Kind
from potstill.kinds.closed import NLI_LABELS, label_nli
from potstill.metrics import classification_scores

KIND = Kind(
    name="nli",
    fields=("premise", "hypothesis"),
    label=label_nli,
    closed=True,
    fixed_labels=True,
    score=classification_scores,
    default_labels=NLI_LABELS,
    teacher_prompt="Decide whether the hypothesis follows from the premise. Answer entailment if it must be "
    "true, contradiction if it cannot be true, and neutral otherwise.\n\n"
    "Premise: A woman in a red coat is walking her dog along the beach.\n"
    "Hypothesis: A woman is outside with an animal.\nAnswer: entailment\n\n"
    "Premise: Two children are building a sandcastle near the water.\n"
    "Hypothesis: The children are asleep in their beds.\nAnswer: contradiction\n\n"
    "Premise: A man is playing a guitar on a street corner.\n"
    "Hypothesis: The man is playing for money.\nAnswer: neutral\n\n"
    "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:",
    student_prompt="Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:",
    rationale_prompt="Explain in one short sentence why the answer is right.\n\n"
    "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer: {label}\nExplanation:",
    description="premise/hypothesis pairs: entailment, neutral or contradiction",
)
