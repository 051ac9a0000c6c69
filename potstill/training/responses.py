"""What a generative student learns to write for a labeled row, defined once for every method.

Training (every method's completion), the offline signal alignment and the saved student all read the
response from here, so a method cannot teach one form of the answer and inference expect another.

- closed kinds (classification, NLI, multiple choice): ` <label>` (the label word or the chosen option's
  text), the same completion the classifier scores;
- math, `student.response: full`: the teacher's chain of thought, ending at the line with its `#### N`;
  `answer`: ` #### N` alone. A row whose label is not what its chain of thought concludes (a reviewer
  corrected the answer) is never taught the teacher's reasoning: it trains on ` #### <corrected>`;
- summarization and chat: the teacher's text (or the reviewer's), ` <text>`.
"""

from __future__ import annotations

from typing import Any, Literal

from potstill.kinds.numbers import extract_answer
from potstill.prompts import label_completion

Response = Literal["full", "answer"]
RESPONSES: tuple[str, ...] = ("full", "answer")


def answer_only(label: str) -> str:
    """The short form of a math answer: what the `answer` response and step_by_step's label task teach."""
    return f" #### {label}"


def chain_of_thought(rationale: str) -> str:
    """The teacher's solution up to and including its `####` line (anything it wrote after is noise)."""
    lines = rationale.strip().splitlines()
    for i, line in enumerate(lines):
        if "####" in line:
            return "\n".join(lines[: i + 1]).strip()
    return rationale.strip()


def completion_text(row: dict[str, Any], kind: str, response: Response = "full") -> str:
    """The text (with its leading space) the student is trained to produce after the student prompt."""
    label = row["label"]
    if label is None:
        raise ValueError(f"row {row.get('id')!r} has no label to learn")
    label = str(label)
    if kind != "math":
        return label_completion(label)
    rationale = row.get("rationale")
    if response == "answer" or not isinstance(rationale, str) or not rationale.strip():
        return answer_only(label)
    solution = chain_of_thought(rationale)
    if extract_answer(solution) != extract_answer(answer_only(label)):
        return answer_only(label)  # the label was corrected: the teacher's reasoning argues for another
    return " " + solution
