"""Routing: which teacher labels go to human review and which are trusted for training.

A pure decision: rows in, a typed decision with a reason per row out. Saving the review queue is a
separate step, so the rule can be tested and explained on its own.

Policies are small frozen dataclasses combined by `route_with`, always in the same order, so a set of
policies means one thing whatever order it is written in:

1. `Threshold`: rows under the confidence threshold are review candidates (without one, every row is).
2. Candidates are taken lowest confidence first (ties by id): reviewers' time goes where the teacher is
   least sure.
3. `PerClassQuota`: at most N review rows per predicted label, so one label the teacher is unsure about
   cannot eat the whole budget.
4. `Budget`: at most a fraction of all rows and/or a number of rows go to review.
5. `AuditSample`: a seeded random sample of the remaining high-confidence rows also goes to review,
   with a reason starting with "audit", to measure the teacher's precision where it is sure.

Every row ends in exactly one of `accepted` and `review`; audit rows are in `review` and in `audit`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RoutingDecision:
    accepted: list[str]
    review: list[str]
    reasons: dict[str, str] = field(default_factory=dict)
    audit: list[str] = field(default_factory=list)  # the subset of `review` sampled for the precision audit

    @property
    def summary(self) -> str:
        text = f"{len(self.accepted)} accepted, {len(self.review)} to review"
        return text + (f" ({len(self.audit)} of them audit samples)" if self.audit else "")


@dataclass(frozen=True)
class Threshold:
    """Rows with confidence strictly below `below` are review candidates."""

    below: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.below <= 1.0:
            raise ValueError(f"Threshold.below must be in [0, 1], got {self.below}")


@dataclass(frozen=True)
class Budget:
    """At most floor(fraction * all rows) and at most `rows` review rows (either or both)."""

    fraction: float | None = None
    rows: int | None = None

    def __post_init__(self) -> None:
        if self.fraction is None and self.rows is None:
            raise ValueError("Budget needs a fraction, a number of rows, or both")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"Budget.fraction must be in [0, 1], got {self.fraction}")
        if self.rows is not None and self.rows < 0:
            raise ValueError(f"Budget.rows must be >= 0, got {self.rows}")

    def cap(self, total: int) -> int:
        caps = [math.floor(self.fraction * total)] if self.fraction is not None else []
        caps += [self.rows] if self.rows is not None else []
        return min(caps)

    def describe(self) -> str:
        parts = [f"{self.fraction:.0%}"] if self.fraction is not None else []
        parts += [f"{self.rows} rows"] if self.rows is not None else []
        return " / ".join(parts)


@dataclass(frozen=True)
class PerClassQuota:
    """At most `max_rows` review rows per predicted label (the row's `label`)."""

    max_rows: int

    def __post_init__(self) -> None:
        if self.max_rows < 0:
            raise ValueError(f"PerClassQuota.max_rows must be >= 0, got {self.max_rows}")


@dataclass(frozen=True)
class AuditSample:
    """A seeded random sample of not-routed rows with confidence >= `min_confidence` goes to review.

    Size: `rows`, or floor(`fraction` * eligible rows); with both, the smaller. `min_confidence` None
    means the threshold's value when there is one, else every not-routed row is eligible.
    """

    fraction: float | None = None
    rows: int | None = None
    seed: int = 0
    min_confidence: float | None = None

    def __post_init__(self) -> None:
        if self.fraction is None and self.rows is None:
            raise ValueError("AuditSample needs a fraction, a number of rows, or both")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"AuditSample.fraction must be in [0, 1], got {self.fraction}")

    def size(self, eligible: int) -> int:
        sizes = [math.floor(self.fraction * eligible)] if self.fraction is not None else []
        sizes += [self.rows] if self.rows is not None else []
        return min([*sizes, eligible])


Policy = Threshold | Budget | PerClassQuota | AuditSample


def _one(policies: Sequence[Policy], kind: type) -> Any:
    found = [p for p in policies if isinstance(p, kind)]
    if len(found) > 1:
        raise ValueError(f"at most one {kind.__name__} policy, got {len(found)}")
    return found[0] if found else None


def build_policies(
    *,
    threshold: float | None = None,
    budget: float | None = None,
    budget_rows: int | None = None,
    per_class: int | None = None,
    audit: float | None = None,
    audit_rows: int | None = None,
    audit_seed: int = 0,
) -> list[Policy]:
    """Policies from flat settings (a config section); None switches a policy off."""
    policies: list[Policy] = []
    if threshold is not None:
        policies.append(Threshold(threshold))
    if budget is not None or budget_rows is not None:
        policies.append(Budget(fraction=budget, rows=budget_rows))
    if per_class is not None:
        policies.append(PerClassQuota(per_class))
    if audit is not None or audit_rows is not None:
        policies.append(AuditSample(fraction=audit, rows=audit_rows, seed=audit_seed))
    return policies


def route_with(rows: list[dict[str, Any]], policies: Sequence[Policy]) -> RoutingDecision:
    """Apply the policies (see the module docstring for their fixed order) to rows with `id` and
    `confidence` (and `label`, for a per-class quota).

    A row whose teacher output could not be parsed (`parse_error`) always goes to review, outside any
    budget or quota: it has no usable label, so it must never reach training unread."""
    broken = [r for r in rows if r.get("parse_error")]
    if not broken:
        return _route_parsed(rows, policies)
    decision = _route_parsed([r for r in rows if not r.get("parse_error")], policies)
    broken_ids = {r["id"] for r in broken}
    reasons = dict(decision.reasons)
    for r in broken:
        reasons[r["id"]] = f"parse error ({r.get('parse_error_reason') or 'unreadable teacher output'}): " \
            "a person must label it"  # fmt: skip
    review = set(decision.review) | broken_ids
    return RoutingDecision(
        accepted=[r["id"] for r in rows if r["id"] not in review],
        review=[r["id"] for r in rows if r["id"] in review],
        reasons=reasons,
        audit=decision.audit,
    )


def _route_parsed(rows: list[dict[str, Any]], policies: Sequence[Policy]) -> RoutingDecision:
    threshold: Threshold | None = _one(policies, Threshold)
    budget: Budget | None = _one(policies, Budget)
    quota: PerClassQuota | None = _one(policies, PerClassQuota)
    audit: AuditSample | None = _one(policies, AuditSample)
    if threshold is None and budget is None and quota is None and audit is None:
        return RoutingDecision([r["id"] for r in rows], [], {r["id"]: "no routing configured" for r in rows})

    t = threshold.below if threshold is not None else None
    selecting = threshold is not None or budget is not None or quota is not None
    by_conf = sorted(rows, key=lambda r: (r["confidence"], r["id"]))
    candidates = [r for r in by_conf if selecting and (t is None or r["confidence"] < t)]

    def base(r: dict[str, Any]) -> str:
        return f"confidence {r['confidence']:.3f}" + (f" < threshold {t}" if t is not None else "")

    reasons: dict[str, str] = {}
    within_quota: list[dict[str, Any]] = []
    per_label: dict[Any, int] = {}
    for r in candidates:
        label = r.get("label")
        if quota is not None and per_label.get(label, 0) >= quota.max_rows:
            reasons[r["id"]] = (
                f"{base(r)}, but the review quota of {quota.max_rows} rows for {label!r} is full"
            )
            continue
        per_label[label] = per_label.get(label, 0) + 1
        within_quota.append(r)
    cap = len(within_quota) if budget is None else budget.cap(len(rows))
    review_ids = {r["id"] for r in within_quota[:cap]}
    for r in within_quota[:cap]:
        why = base(r)
        why += f", within review budget {budget.describe()}" if budget is not None else ""
        why += f", within the quota of {quota.max_rows} for {r.get('label')!r}" if quota is not None else ""
        reasons[r["id"]] = why
    for r in within_quota[cap:]:
        reasons[r["id"]] = f"{base(r)}, but review budget {budget.describe()} is spent"  # type: ignore[union-attr]

    audit_ids: set[str] = set()
    if audit is not None:
        floor = audit.min_confidence if audit.min_confidence is not None else (t if t is not None else 0.0)
        eligible = sorted(r["id"] for r in rows if r["id"] not in review_ids and r["confidence"] >= floor)
        audit_ids = set(random.Random(audit.seed).sample(eligible, audit.size(len(eligible))))
        conf = {r["id"]: r["confidence"] for r in rows}
        for rid in audit_ids:
            reasons[rid] = (
                f"audit: confidence {conf[rid]:.3f} >= {floor}, random sample of high-confidence rows "
                f"(seed {audit.seed}) to measure teacher precision"
            )
        review_ids |= audit_ids

    for r in rows:
        if r["id"] not in reasons:
            reasons[r["id"]] = f"confidence {r['confidence']:.3f}" + (
                f" >= threshold {t}" if t is not None else ""
            )
    return RoutingDecision(
        accepted=[r["id"] for r in rows if r["id"] not in review_ids],
        review=[r["id"] for r in rows if r["id"] in review_ids],
        reasons=reasons,
        audit=[r["id"] for r in rows if r["id"] in audit_ids],
    )


def route(
    rows: list[dict[str, Any]], threshold: float | None = None, budget: float | None = None
) -> RoutingDecision:
    """Split rows (each with `id` and `confidence`) into accepted and needs-review.

    threshold: rows with confidence below it are review candidates (None: every row is a candidate
    when a budget is set, none otherwise). budget: at most floor(budget * len(rows)) rows go to review,
    lowest confidence first; candidates over the budget are trained on and the reason says so.
    The two-policy shorthand of `route_with`, kept for the config's `route.threshold`/`route.budget`.
    """
    return route_with(rows, build_policies(threshold=threshold, budget=budget))


TEACHER_FIELDS = ("confidence", "distribution", "teacher", "prompt_digest", "route_reason")


@dataclass(frozen=True)
class TrainPlan:
    """What routing plus human verdicts make of the labeled rows."""

    train_rows: list[dict[str, Any]]  # prompt fields + label + label_source ("teacher" | "human")
    review_rows: list[dict[str, Any]]  # still waiting for a person, with route_reason (and audit)
    human: int  # training rows whose label a person gave or confirmed
    rejected: dict[str, list[str]]  # row id -> the reviewers' reasons; never trained on


def merge_verdicts(
    labeled: list[dict[str, Any]], decision: RoutingDecision, reviewed: list[dict[str, Any]]
) -> TrainPlan:
    """A human verdict beats routing: reviewed rows train on the person's label or, when rejected, are
    left out with the reason; they do not go back to review. Unreviewed rows follow the decision."""
    verdicts = {str(r["id"]): r for r in reviewed}
    to_review, audit = set(decision.review), set(decision.audit)
    train: list[dict[str, Any]] = []
    review: list[dict[str, Any]] = []
    rejected: dict[str, list[str]] = {}
    human = 0
    for row in labeled:
        rid = row["id"]
        fields = {k: v for k, v in row.items() if k not in TEACHER_FIELDS}
        verdict = verdicts.get(str(rid))
        if verdict is not None and verdict.get("review_status") == "rejected":
            rejected[str(rid)] = list(verdict.get("reject_reasons") or []) or ["rejected by a reviewer"]
        elif verdict is not None:
            train.append({**fields, "label": verdict["label"], "label_source": "human"})
            human += 1
        elif rid in to_review:
            extra = {"audit": True} if rid in audit else {}
            review.append({**row, "route_reason": decision.reasons[rid], **extra})
        else:
            train.append({**fields, "label_source": "teacher"})
    return TrainPlan(train, review, human, rejected)
