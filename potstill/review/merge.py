"""Merging human review into teacher labels: pure functions, no network, no Prefect, no MLflow.

Input is what the review client pulled (`HumanAnnotation`: finished, not skipped), output is typed:
one `ResolvedRow` per reviewed row, the rows with human labels applied, and `ReviewStats`.

Rules, in order:
- Each finished annotation is one vote: its answer, or "reject" when the reviewer chose reject.
  Annotations without an answer and without a reject (an empty submit) do not vote.
- The most-voted option wins. A tie at the top is a disagreement that the tie rule settles:
  `hold` (default) holds the row back from training until someone breaks the tie; `teacher` takes the
  teacher's label when it is among the tied answers (else holds); `latest` takes the answer of the most
  recently updated annotation among the tied ones.
- Any row whose annotators did not all agree is flagged `disagreement`, even when a majority settled it.
- A winning "reject" excludes the row; the reviewers' reasons are kept.
- A human label overrides the teacher's; the teacher's label stays on the row as `teacher_label`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

REJECT = "reject"
TieRule = Literal["hold", "teacher", "latest"]
Status = Literal["agreed", "corrected", "rejected", "held_back"]


@dataclass(frozen=True)
class HumanAnnotation:
    """One finished review answer for one row, as pulled from Label Studio."""

    row_id: str
    annotator: str
    answer: str | None  # the label (or text for generative kinds); None: no answer given
    rejected: bool = False
    reason: str | None = None
    rationale: str | None = None
    lead_time: float | None = None  # seconds spent, as Label Studio measured it
    teacher_label: str | None = None
    confidence: float | None = None
    audit: bool = False
    dataset_version: str | None = None
    annotation_id: int | None = None
    task_id: int | None = None
    updated_at: str | None = None  # ISO time; orders answers for the `latest` tie rule


@dataclass(frozen=True)
class ResolvedRow:
    """The verdict for one reviewed row."""

    row_id: str
    status: Status
    label: str | None  # the label to train on; None when rejected or held back
    teacher_label: str | None
    votes: dict[str, int]
    annotators: int
    disagreement: bool  # annotators did not all give the same answer
    audit: bool = False
    reasons: tuple[str, ...] = ()  # reject reasons, or why the row is held back
    rationale: str | None = None
    rule: str = "majority"  # majority | unanimous | tie:teacher | tie:latest | tie:hold


@dataclass(frozen=True)
class ReviewStats:
    reviewed: int  # rows with at least one voting annotation
    agreed: int  # human label == teacher label
    corrected: int  # human label != teacher label
    rejected: int
    held_back: int  # ties the tie rule did not settle
    disagreements: int  # rows whose annotators did not all agree
    annotations: int  # voting annotations counted
    audit_reviewed: int  # audit rows with a human label (rejected audit rows are not counted)
    audit_teacher_correct: int
    teacher_precision_audit: float | None  # audit_teacher_correct / audit_reviewed; None with no audit
    total_lead_time_s: float
    mean_lead_time_s: float | None  # per annotation that reported a lead time

    def as_metrics(self, prefix: str = "review_") -> dict[str, float]:
        """Flat numeric metrics (None left out), ready for a metrics logger."""
        return {f"{prefix}{k}": float(v) for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class MergeResult:
    rows: list[dict[str, Any]]  # input rows, human labels applied, rejected and held-back rows removed
    resolved: dict[str, ResolvedRow]
    rejected: dict[str, tuple[str, ...]]  # row id -> reasons
    held_back: list[str]
    pending: list[str]  # input rows nobody has reviewed yet
    stats: ReviewStats = field(repr=False)


def _norm(answer: str | None) -> str | None:
    """Answers compare after trimming and collapsing whitespace (free-text kinds differ in spacing)."""
    if answer is None:
        return None
    text = " ".join(str(answer).split())
    return text or None


def _vote(a: HumanAnnotation) -> str | None:
    return REJECT if a.rejected else _norm(a.answer)


def resolve_row(
    annotations: Sequence[HumanAnnotation], teacher_label: str | None = None, tie_rule: TieRule = "hold"
) -> ResolvedRow | None:
    """Resolve one row's annotations (all with the same row id); None when none of them votes."""
    voting = [a for a in annotations if _vote(a) is not None]
    if not voting:
        return None
    row_id = voting[0].row_id
    if teacher_label is None:
        teacher_label = next((a.teacher_label for a in voting if a.teacher_label is not None), None)
    audit = any(a.audit for a in voting)
    votes = Counter(_vote(a) for a in voting)
    ranked = votes.most_common()
    top = ranked[0][1]
    tied = sorted(v for v, n in ranked if n == top)
    disagreement = len(votes) > 1
    rule = "unanimous" if not disagreement else "majority"
    winner: str | None = tied[0] if len(tied) == 1 else None
    if winner is None:
        if tie_rule == "teacher" and _norm(teacher_label) in tied:
            winner, rule = _norm(teacher_label), "tie:teacher"
        elif tie_rule == "latest":
            latest = max(
                (a for a in voting if _vote(a) in tied),
                key=lambda a: (a.updated_at or "", a.annotation_id or 0),
            )
            winner, rule = _vote(latest), "tie:latest"
        else:
            rule = "tie:hold"
    common = {
        "row_id": row_id,
        "teacher_label": teacher_label,
        "votes": dict(votes),
        "annotators": len({a.annotator for a in voting}),
        "disagreement": disagreement,
        "audit": audit,
        "rule": rule,
    }
    if winner is None:
        why = f"tie between {', '.join(repr(t) for t in tied)} ({top} votes each)"
        return ResolvedRow(status="held_back", label=None, reasons=(why,), **common)
    if winner == REJECT:
        reasons = tuple(
            dict.fromkeys(a.reason.strip() for a in voting if a.rejected and a.reason and a.reason.strip())
        )
        return ResolvedRow(
            status="rejected", label=None, reasons=reasons or ("rejected without a reason",), **common
        )
    # Keep the reviewers' own spelling of the winning answer (first voter's), not the normalised key.
    label = next(a.answer for a in voting if _vote(a) == winner)
    rationale = next((a.rationale for a in voting if _vote(a) == winner and a.rationale), None)
    status: Status = "agreed" if winner == _norm(teacher_label) else "corrected"
    return ResolvedRow(status=status, label=label, rationale=rationale, **common)


def resolve_annotations(
    annotations: Iterable[HumanAnnotation],
    teacher_labels: Mapping[str, str | None] | None = None,
    tie_rule: TieRule = "hold",
) -> dict[str, ResolvedRow]:
    """Resolve every row that has annotations; teacher labels default to those carried by the tasks."""
    by_row: dict[str, list[HumanAnnotation]] = {}
    for a in annotations:
        by_row.setdefault(a.row_id, []).append(a)
    out: dict[str, ResolvedRow] = {}
    for row_id, anns in by_row.items():
        teacher = (teacher_labels or {}).get(row_id)
        resolved = resolve_row(anns, teacher, tie_rule)
        if resolved is not None:
            out[row_id] = resolved
    return out


def review_stats(resolved: Mapping[str, ResolvedRow], annotations: Iterable[HumanAnnotation]) -> ReviewStats:
    """Counts over resolved rows, and time spent over the annotations that voted on them."""
    rows = list(resolved.values())
    counted = [a for a in annotations if a.row_id in resolved and _vote(a) is not None]
    times = [a.lead_time for a in counted if a.lead_time is not None]
    audit_rows = [r for r in rows if r.audit and r.status in ("agreed", "corrected")]
    audit_ok = sum(r.status == "agreed" for r in audit_rows)
    return ReviewStats(
        reviewed=len(rows),
        agreed=sum(r.status == "agreed" for r in rows),
        corrected=sum(r.status == "corrected" for r in rows),
        rejected=sum(r.status == "rejected" for r in rows),
        held_back=sum(r.status == "held_back" for r in rows),
        disagreements=sum(r.disagreement for r in rows),
        annotations=len(counted),
        audit_reviewed=len(audit_rows),
        audit_teacher_correct=audit_ok,
        teacher_precision_audit=audit_ok / len(audit_rows) if audit_rows else None,
        total_lead_time_s=float(sum(times)),
        mean_lead_time_s=sum(times) / len(times) if times else None,
    )


def merge_reviews(
    rows: Sequence[Mapping[str, Any]],
    annotations: Iterable[HumanAnnotation],
    *,
    tie_rule: TieRule = "hold",
    include_pending: bool = True,
    dataset_version: str | None = None,
    label_key: str = "label",
) -> MergeResult:
    """Apply human review to teacher rows (each with `id` and `label_key`).

    Reviewed rows get the human label (`label_source: "human"`, the teacher's kept in `teacher_label`,
    the reviewers' rationale in `rationale` when given); rejected and held-back rows are removed; rows
    nobody reviewed stay as the teacher labeled them (`label_source: "teacher"`) when `include_pending`,
    else they are left out (use False to take only finished reviews from the review queue).
    `dataset_version`: when given, annotations made on tasks of another dataset version are ignored.
    Statistics cover every reviewed row among `rows`.
    """
    ids = {str(r["id"]) for r in rows}
    anns = [
        a
        for a in annotations
        if a.row_id in ids and (dataset_version is None or a.dataset_version in (None, dataset_version))
    ]
    teacher = {str(r["id"]): r.get(label_key) for r in rows}
    resolved = resolve_annotations(anns, teacher, tie_rule)
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for r in rows:
        rid = str(r["id"])
        res = resolved.get(rid)
        if res is None:
            pending.append(rid)
            if include_pending:
                out.append({**r, "label_source": r.get("label_source", "teacher")})
        elif res.status in ("agreed", "corrected"):
            merged = {**r, label_key: res.label, "teacher_label": r.get(label_key), "label_source": "human"}
            if res.rationale:
                merged["rationale"] = res.rationale
            out.append(merged)
    return MergeResult(
        rows=out,
        resolved=resolved,
        rejected={k: v.reasons for k, v in resolved.items() if v.status == "rejected"},
        held_back=[k for k, v in resolved.items() if v.status == "held_back"],
        pending=pending,
        stats=review_stats(resolved, anns),
    )
