"""Math: chain-of-thought generation, answer extraction, self-consistency over n samples.

The teacher writes its reasoning and a final answer (GSM8K's `#### 42`, or "The answer is 42"); we read
the number, normalise it (`$1,000.00` and `1000` are the same answer), and take the majority over
`spec.samples` samples. The agreement rate (majority votes / all samples, unreadable ones included) is the
confidence: a teacher that reaches the same number on most reasoning paths is usually right, and one
that cannot produce a number at all is unsure by definition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from potstill.kinds.base import Kind
from potstill.kinds.common import KindSpec, Labeled, ok, parse_failure, render
from potstill.kinds.numbers import extract_answer
from potstill.kinds.scores import math_agreement, math_scores
from potstill.labeling.teacher.base import SamplingSpec, TeacherBackend
from potstill.prompts import PromptError, PromptTemplate


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, int, float]:
    """(majority answer, its votes, agreement = votes / all samples). Unreadable samples (None) count in
    the denominator but never win; ties go to the answer seen first, so the vote is deterministic."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None, 0, 0.0
    best = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == best)
    return winner, best, best / len(answers)


def sampling(spec: KindSpec) -> SamplingSpec:
    """One sample is greedy; several are sampled at `spec.temperature` (self-consistency needs diversity)."""
    return SamplingSpec(
        max_new_tokens=spec.max_new_tokens,
        n=spec.samples,
        temperature=spec.temperature if spec.samples > 1 else 0.0,
        top_logprobs=spec.top_logprobs,
        stop=spec.stop,
        seed=spec.seed,
    )


def label_math(
    backend: TeacherBackend, rows: Sequence[dict[str, Any]], template: PromptTemplate, spec: KindSpec
) -> list[Labeled]:
    """Record fields: `answer` (and `label`, the same string, what the student learns), `confidence`
    (agreement), `votes` {answer: count}, `samples`, `rationale` (the first majority sample's text)."""
    prompts = [render(template, r) for r in rows]
    todo = [i for i, p in enumerate(prompts) if not isinstance(p, PromptError)]
    generations = backend.generate([prompts[i] for i in todo], sampling(spec)) if todo else []
    by_row = dict(zip(todo, generations, strict=True))
    out = []
    for i, row in enumerate(rows):
        if i not in by_row:
            out.append(parse_failure(row, f"prompt: {prompts[i]}", answer=None, rationale=None))
            continue
        gens = by_row[i]
        answers = [extract_answer(g.text) for g in gens]
        answer, _, agreement = majority_vote(answers)
        votes = dict(Counter(a for a in answers if a is not None))
        extra = {"votes": votes, "samples": len(gens), "unparsed_samples": answers.count(None)}
        if answer is None:
            reason = f"no final answer (#### N / 'the answer is N') in {len(gens)} sample(s)"
            rationale = gens[0].text if gens else None
            out.append(parse_failure(row, reason, answer=None, rationale=rationale, **extra))
            continue
        chosen = gens[answers.index(answer)]
        record = {**row, "label": answer, "answer": answer, "confidence": agreement, **extra}
        out.append(ok({**record, "rationale": chosen.text.strip()}, chosen.tokens))
    return out


KIND = Kind(
    name="math",
    fields=("question",),
    label=label_math,
    closed=False,
    fixed_labels=False,
    teacher_prompt="Solve each problem step by step, then give the final answer as a number after ####.\n\n"
    "Question: A baker makes 24 muffins in the morning and half as many in the afternoon. How many "
    "muffins does she make in total?\nAnswer: In the afternoon she makes 24 / 2 = 12 muffins.\n"
    "In total she makes 24 + 12 = 36 muffins.\n#### 36\n\n"
    "Question: Tom has $50. He buys 3 books that cost $12 each. How much money does he have left?\n"
    "Answer: The books cost 3 * 12 = $36.\nHe has 50 - 36 = $14 left.\n#### 14\n\n"
    "Question: {question}\nAnswer:",
    student_prompt="Question: {question}\nAnswer:",
    headline="student_exact_match",
    score=math_scores,
    agree=math_agreement,
    parse=extract_answer,
    read=lambda text, row: extract_answer(text),
    default_stop=("\n\nQuestion:",),
    description="word problems: chain-of-thought teacher, self-consistency, a numeric final answer",
)
