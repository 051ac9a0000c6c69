"""Rationales: a short teacher explanation of each label, the second target of "distilling step-by-step".

After a row is labeled, the teacher is asked once more, greedily, with a rationale prompt that shows the
row and the label it chose (`{label}` in the template, e.g. `...Answer: {label}\\nExplanation:`), and the
first line it writes is kept as `rationale`. The student learns it as a second task; at inference only
the label task is used, so a bad rationale costs training signal, never a wrong answer format.

Rows that already carry a human explanation (e-SNLI's `explanation`) can use it instead
(`RationaleSpec.field`): no generation for them, `rationale_source: "data"`. A human explanation explains
the gold label, which the teacher's label may not match; rows whose label differs from their
`field_label` (when the row has one) fall back to the teacher. Rationales never make a row a parse
error: the label stays usable, and `rationale` is None when nothing readable came back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from potstill.kinds.common import Labeled, render
from potstill.labeling.teacher.base import SamplingSpec, TeacherBackend
from potstill.prompts import PromptError, PromptTemplate

STOP = ("\n",)


@dataclass(frozen=True)
class RationaleSpec:
    """How to get a rationale per labeled row: the prompt (row fields + `{label}`), the longest
    explanation in tokens, and an optional row field holding a human explanation to use instead."""

    template: PromptTemplate
    max_new_tokens: int = 48
    field: str | None = None
    field_label: str = "gold_label"  # a row's gold label: its human explanation is used only when it agrees

    def digest_payload(self) -> dict[str, Any]:
        """Everything that changes the rationales, for run-folder and cache keys."""
        return {
            "rationale_prompt": self.template.digest,
            "rationale_max_new_tokens": self.max_new_tokens,
            "rationale_field": self.field,
            "rationale_field_label": self.field_label,
        }


def _from_row(record: dict[str, Any], spec: RationaleSpec) -> str | None:
    """The row's own explanation, when configured, non-empty, and about the label the teacher gave."""
    if spec.field is None:
        return None
    text = record.get(spec.field)
    if not isinstance(text, str) or not text.strip():
        return None
    gold = record.get(spec.field_label)
    if gold is not None and str(gold) != str(record.get("label")):
        return None
    return " ".join(text.split())


def add_rationales(backend: TeacherBackend, items: Sequence[Labeled], spec: RationaleSpec) -> list[Labeled]:
    """Fill `rationale` and `rationale_source` ("data" | "teacher" | None) of every usable labeled row, in
    place and in one batched greedy `generate`; rows that already have a rationale (math's chain of
    thought) or no label are left as they are."""
    todo: list[tuple[Labeled, str]] = []
    for item in items:
        rec = item.record
        if rec.get("parse_error") or rec.get("label") is None or rec.get("rationale"):
            continue
        own = _from_row(rec, spec)
        if own is not None:
            rec.update(rationale=own, rationale_source="data")
            continue
        prompt = render(spec.template, rec)
        if isinstance(prompt, PromptError):
            rec.update(rationale=None, rationale_source=None, rationale_error=f"prompt: {prompt}")
            continue
        todo.append((item, prompt))
    if todo:
        sampling = SamplingSpec(max_new_tokens=spec.max_new_tokens, temperature=0.0, stop=STOP)
        generations = backend.generate([p for _, p in todo], sampling)
        for (item, _), gens in zip(todo, generations, strict=True):
            text = " ".join(gens[0].text.split("\n", 1)[0].split()) if gens else ""
            item.record.update(rationale=text or None, rationale_source="teacher" if text else None)
    return list(items)
