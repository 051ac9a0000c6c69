"""Routing: which teacher labels go to human review and which are trusted for training.

A pure decision: rows in, a typed decision with a reason per row out. Saving the review queue is a
separate step, so the rule can be tested and explained on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RoutingDecision:
    accepted: list[str]
    review: list[str]
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return f"{len(self.accepted)} accepted, {len(self.review)} to review"


def route(
    rows: list[dict[str, Any]], threshold: float | None = None, budget: float | None = None
) -> RoutingDecision:
    """Split rows (each with `id` and `confidence`) into accepted and needs-review.

    threshold: rows with confidence below it are review candidates (None: every row is a candidate
    when a budget is set, none otherwise). budget: at most floor(budget * len(rows)) rows go to review,
    lowest confidence first; candidates over the budget are trained on and the reason says so.
    """
    if threshold is None and budget is None:
        return RoutingDecision([r["id"] for r in rows], [], {r["id"]: "no routing configured" for r in rows})
    by_conf = sorted(rows, key=lambda r: (r["confidence"], r["id"]))
    candidates = [r for r in by_conf if threshold is None or r["confidence"] < threshold]
    cap = len(candidates) if budget is None else math.floor(budget * len(rows))
    review_ids = {r["id"] for r in candidates[:cap]}
    over_budget = {r["id"] for r in candidates[cap:]}
    reasons: dict[str, str] = {}
    for r in rows:
        rid, conf = r["id"], r["confidence"]
        if rid in review_ids:
            why = f"confidence {conf:.3f}"
            why += f" < threshold {threshold}" if threshold is not None else ""
            why += f", within review budget {budget:.0%}" if budget is not None else ""
            reasons[rid] = why
        elif rid in over_budget:
            reasons[rid] = (
                f"confidence {conf:.3f} < threshold {threshold}, but review budget {budget:.0%} is spent"
            )
        else:
            reasons[rid] = f"confidence {conf:.3f}" + (
                f" >= threshold {threshold}" if threshold is not None else ""
            )
    return RoutingDecision(
        accepted=[r["id"] for r in rows if r["id"] not in review_ids],
        review=[r["id"] for r in rows if r["id"] in review_ids],
        reasons=reasons,
    )
