"""Task kinds: how a row and a teacher prompt become a labeled record, for every kind a dataset can have.

Closed kinds (classification, NLI, multiple choice) score options with `TeacherBackend.score`; open kinds
(math, summarization, chat) generate with `TeacherBackend.generate`. Every record carries `label` (what
the student learns), `confidence` in [0, 1], and `parse_error` / `parse_error_reason`; closed kinds add
`distribution`, math adds `answer`, `votes` and `rationale`, free text adds `output` and log-probability
statistics. With a `RationaleSpec`, every labeled row also gets a short teacher `rationale`
(`potstill.kinds.rationale`). Pure logic plus backend calls: no Prefect, no MLflow, no files (see
`potstill.labeling.shards`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from potstill.errors import UserError
from potstill.kinds import chat, classification, math, multiple_choice, nli, summarization
from potstill.kinds.base import Kind, LabelFn, ScoreFn
from potstill.kinds.closed import NLI_LABELS, choice_options, format_choices
from potstill.kinds.common import KindSpec, Labeled, normalise, routing_confidence
from potstill.kinds.math import majority_vote
from potstill.kinds.numbers import extract_answer, normalise_number
from potstill.kinds.rationale import RationaleSpec, add_rationales
from potstill.kinds.text import text_confidence
from potstill.labeling.teacher.base import TeacherBackend
from potstill.prompts import PromptTemplate

# The one list of kinds: a name, its object. Adding a kind is a module with a KIND and a line here.
KINDS: dict[str, Kind] = {
    m.KIND.name: m.KIND for m in (classification, nli, multiple_choice, math, summarization, chat)
}
GENERATIVE_KINDS = frozenset(name for name, k in KINDS.items() if k.generative)


class UnknownKindError(UserError, ValueError):
    """A kind name that no module in `potstill.kinds` defines."""


def get_kind(name: str) -> Kind:
    """The kind object of `name`, or an error listing the known kinds."""
    if name not in KINDS:
        raise UnknownKindError(f"unknown kind {name!r}; known kinds: {', '.join(KINDS)}")
    return KINDS[name]


def prompt_row(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """`row` with the fields a prompt of the kind may use beyond the row's own (multiple choice's
    `choices_text`): labeling, training and the generative student render the same thing."""
    derive = get_kind(kind).derive
    return derive(row) if derive is not None else row


def read_answer(kind: str, text: str, row: dict[str, Any]) -> str | None:
    """What a generated text answers, as the kind reads it (math's number, the chosen option of a
    multiple-choice row); free text is its own answer. None: nothing readable."""
    read = get_kind(kind).read
    if read is not None:
        return read(text, row)
    return text.strip() or None


def label_rows(
    backend: TeacherBackend,
    rows: Sequence[dict[str, Any]],
    template: PromptTemplate,
    spec: KindSpec,
    rationale: RationaleSpec | None = None,
) -> list[Labeled]:
    """Label `rows` (in order, one result per row, parse failures included) with the kind's method;
    with `rationale`, each labeled row also gets the teacher's explanation of its label."""
    out = get_kind(spec.kind).label(backend, rows, template, spec)
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
    "Kind",
    "KindSpec",
    "LabelFn",
    "Labeled",
    "RationaleSpec",
    "ScoreFn",
    "UnknownKindError",
    "add_rationales",
    "choice_options",
    "extract_answer",
    "format_choices",
    "get_kind",
    "label_rows",
    "majority_vote",
    "normalise",
    "normalise_number",
    "prompt_row",
    "read_answer",
    "routing_confidence",
    "text_confidence",
]
