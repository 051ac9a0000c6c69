"""Task kinds: how a row and a teacher prompt become a labeled record, for every kind a dataset can have.

Closed kinds (classification, NLI, multiple choice) score options with `TeacherBackend.score`; open kinds
(math, summarization, chat) generate with `TeacherBackend.generate`. Every record carries `label` (what
the student learns), `confidence` in [0, 1], and `parse_error` / `parse_error_reason`; closed kinds add
`distribution`, math adds `answer`, `votes` and `rationale`, free text adds `output` and log-probability
statistics. With a `RationaleSpec`, every labeled row also gets a short teacher `rationale`
(`potstill.kinds.rationale`). Pure logic plus backend calls: no Prefect, no MLflow, no files (see
`potstill.shards`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from potstill.kinds.closed import (
    NLI_LABELS,
    choice_options,
    format_choices,
    label_classification,
    label_multiple_choice,
    label_nli,
)
from potstill.kinds.common import KindSpec, Labeled, normalise, routing_confidence
from potstill.kinds.math import extract_answer, label_math, majority_vote, normalise_number
from potstill.kinds.rationale import RationaleSpec, add_rationales
from potstill.kinds.text import label_text, text_confidence
from potstill.prompts import PromptTemplate
from potstill.teacher.base import TeacherBackend

KindFn = Callable[[TeacherBackend, Sequence[dict[str, Any]], PromptTemplate, KindSpec], list[Labeled]]

KINDS: dict[str, KindFn] = {
    "classification": label_classification,
    "nli": label_nli,
    "multiple_choice": label_multiple_choice,
    "math": label_math,
    "summarization": label_text,
    "chat": label_text,
}
GENERATIVE_KINDS = frozenset({"math", "summarization", "chat"})


def label_rows(
    backend: TeacherBackend,
    rows: Sequence[dict[str, Any]],
    template: PromptTemplate,
    spec: KindSpec,
    rationale: RationaleSpec | None = None,
) -> list[Labeled]:
    """Label `rows` (in order, one result per row, parse failures included) with the kind's method;
    with `rationale`, each labeled row also gets the teacher's explanation of its label."""
    if spec.kind not in KINDS:
        raise ValueError(f"unknown kind {spec.kind!r}; known: {sorted(KINDS)}")
    out = KINDS[spec.kind](backend, rows, template, spec)
    if len(out) != len(rows):  # a kind that loses a row is a bug, never a data problem
        raise AssertionError(f"{spec.kind} returned {len(out)} records for {len(rows)} rows")
    for item in out:
        item.record["kind"] = spec.kind
    if rationale is not None:
        add_rationales(backend, out, rationale)
    return out


__all__ = [
    "GENERATIVE_KINDS",
    "KINDS",
    "NLI_LABELS",
    "KindSpec",
    "Labeled",
    "RationaleSpec",
    "add_rationales",
    "choice_options",
    "extract_answer",
    "format_choices",
    "label_rows",
    "majority_vote",
    "normalise",
    "normalise_number",
    "routing_confidence",
    "text_confidence",
]
