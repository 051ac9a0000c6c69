"""The promotion gate: whether a new student may replace the champion, as a pure decision with reasons.

The registry step reads metrics from MLflow, calls `decide_promotion`, and applies `alias_plan` (or
`rollback_plan`); keeping the rule here, free of MLflow, lets every threshold be tested by hand and lets
the decision be stored verbatim next to the model version it judged.

`metric` is the task kind's headline (`student_accuracy` for a classifier, `student_exact_match` for math,
`student_rouge_l` for free text; `registry.metric` overrides it), read with the same name from the
candidate's and the champion's runs. All metrics are "higher is better" (accuracy, macro-F1, exact match,
ROUGE-L, agreement, per-slice accuracy). A check whose threshold is None is off and leaves no trace in
the decision; a check that is on but lacks the value it needs fails, so a missing measurement can never
promote a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# Metrics are ratios of counts: differences below this are float noise (0.83 - 0.82 < 0.01 in binary).
EPS = 1e-9

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate; None turns a check off.

    min_improvement: the candidate must be strictly better than the champion on `metric` and by at least
        this much (0.0 = any strict improvement; a tie never promotes, so equal retrains don't churn).
    max_gap_to_teacher: teacher metric minus candidate metric may be at most this.
    max_slice_regression: on every slice the champion was measured on, the candidate may be worse by at
        most this (a drop exactly equal to the bound passes).
    max_latency_ms, max_size_mb: absolute budgets, inclusive.
    """

    metric: str = "student_accuracy"
    min_improvement: float | None = 0.0
    max_gap_to_teacher: float | None = None
    max_slice_regression: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_improvement", "max_gap_to_teacher", "max_slice_regression"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"GateConfig.{name} must be a finite number >= 0 or None, got {value!r}")
        for name in ("max_latency_ms", "max_size_mb"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"GateConfig.{name} must be a finite number > 0 or None, got {value!r}")


@dataclass(frozen=True)
class ModelScores:
    """What the gate knows about one model version (candidate or champion).

    slices: metric per slice, keyed like "label=positive" or "data=v2"; the champion's slices are the bar.
    """

    metric: float
    slices: Mapping[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    size_mb: float | None = None


Candidate = ModelScores
Champion = ModelScores


@dataclass(frozen=True)
class Check:
    """One rule's outcome; `value` and `threshold` are what the reason compares (None when not measured)."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    reason: str


@dataclass(frozen=True)
class PromotionDecision:
    """promote is True only when every check passed; reasons say why in the order a reviewer needs them."""

    promote: bool
    checks: list[Check]
    reasons: list[str]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the decision artifact and model-version tags."""
        return {
            "promote": self.promote,
            "checks": [asdict(c) for c in self.checks],
            "reasons": list(self.reasons),
        }


def decide_promotion(
    candidate: Candidate, champion: Champion | None, teacher_metric: float | None, cfg: GateConfig
) -> PromotionDecision:
    """Run every enabled check; with no champion yet only the absolute checks (teacher gap, budgets) apply."""
    checks: list[Check] = []
    if champion is None:
        if cfg.min_improvement is not None or cfg.max_slice_regression is not None:
            checks.append(Check("champion", True, None, None, "no champion yet: nothing to beat or regress"))
    else:
        if cfg.min_improvement is not None:
            checks.append(_improvement(cfg.metric, candidate.metric, champion.metric, cfg.min_improvement))
        if cfg.max_slice_regression is not None:
            checks.extend(_slices(candidate.slices, champion.slices, cfg.max_slice_regression))
    if cfg.max_gap_to_teacher is not None:
        checks.append(_teacher_gap(cfg.metric, candidate.metric, teacher_metric, cfg.max_gap_to_teacher))
    if cfg.max_latency_ms is not None:
        checks.append(_budget("latency", "ms", candidate.latency_ms, cfg.max_latency_ms))
    if cfg.max_size_mb is not None:
        checks.append(_budget("size", "MB", candidate.size_mb, cfg.max_size_mb))

    failed = [c for c in checks if not c.passed]
    if failed:
        return PromotionDecision(False, checks, [c.reason for c in failed])
    return PromotionDecision(True, checks, [c.reason for c in checks] or ["no check enabled: promoted"])


def _improvement(metric: str, value: float, champion: float, margin: float) -> Check:
    gain = value - champion
    passed = gain > EPS and gain >= margin - EPS
    verb = "beats" if passed else "does not beat"
    reason = (
        f"{metric} {value:.4f} {verb} the champion's {champion:.4f} by the required margin "
        f"{margin:.4f} (improvement {gain:+.4f})"
    )
    return Check("improvement", passed, gain, margin, reason)


def _slices(candidate: Mapping[str, float], champion: Mapping[str, float], bound: float) -> list[Check]:
    """One check per champion slice, so a failure names the label or data version that regressed."""
    checks = []
    for name in sorted(champion):
        before = champion[name]
        if name not in candidate:
            reason = f"slice {name}: not measured for the candidate (champion {before:.4f})"
            checks.append(Check(f"slice:{name}", False, None, bound, reason))
            continue
        drop = before - candidate[name]
        passed = drop <= bound + EPS
        verdict = "within" if passed else "exceeds"
        reason = (
            f"slice {name}: {candidate[name]:.4f} vs champion {before:.4f} (change {-drop:+.4f}), "
            f"regression {verdict} the bound {bound:.4f}"
        )
        checks.append(Check(f"slice:{name}", passed, drop, bound, reason))
    return checks


def _teacher_gap(metric: str, value: float, teacher: float | None, bound: float) -> Check:
    if teacher is None:
        return Check("teacher_gap", False, None, bound, f"teacher {metric} unknown: cannot check the gap")
    gap = teacher - value
    passed = gap <= bound + EPS
    verdict = "within" if passed else "exceeds"
    reason = f"{metric} {value:.4f} vs teacher {teacher:.4f}: gap {gap:+.4f} {verdict} the bound {bound:.4f}"
    return Check("teacher_gap", passed, gap, bound, reason)


def _budget(name: str, unit: str, value: float | None, budget: float) -> Check:
    if value is None:
        return Check(
            name, False, None, budget, f"{name} not measured: cannot check the {budget:g} {unit} budget"
        )
    passed = value <= budget
    verdict = "within" if passed else "over"
    return Check(
        name, passed, value, budget, f"{name} {value:g} {unit} {verdict} the budget {budget:g} {unit}"
    )


def alias_plan(decision: PromotionDecision, version: str, current_champion: str | None) -> dict[str, str]:
    """Aliases to set: the new version is always `challenger`; when promoted also `champion`, and the
    champion it replaces keeps `previous` so that a rollback has somewhere to go. Aliases not in the
    plan are left as they are."""
    plan = {CHALLENGER: version}
    if decision.promote:
        plan[CHAMPION] = version
        if current_champion is not None and current_champion != version:
            plan[PREVIOUS] = current_champion
    return plan


class RollbackError(ValueError):
    """The registry holds no state a rollback could return to."""


def rollback_plan(current_champion: str | None, previous: str | None) -> dict[str, str | None]:
    """Alias changes for `potstill promote --rollback`: `previous` becomes `champion`, `previous` is removed
    (value None). The demoted version does not become `previous`: it was rolled back for a reason, and a
    second rollback must fail rather than bring it back."""
    if previous is None:
        raise RollbackError(
            "cannot roll back: no version holds the 'previous' alias "
            f"(champion is {current_champion or 'unset'}); promote a version explicitly instead"
        )
    if current_champion is None:
        raise RollbackError(
            f"cannot roll back: no version holds the 'champion' alias (previous is {previous})"
        )
    if previous == current_champion:
        raise RollbackError(f"cannot roll back: 'previous' and 'champion' are both version {previous}")
    return {CHAMPION: previous, PREVIOUS: None}
