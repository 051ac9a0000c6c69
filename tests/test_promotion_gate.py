"""The promotion gate and alias plans: every check passing and failing, with the reason a reviewer reads."""

from __future__ import annotations

import json
import math

import pytest

from potstill.operations.gate import (
    Check,
    GateConfig,
    ModelScores,
    PromotionDecision,
    RollbackError,
    alias_plan,
    decide_promotion,
    rollback_plan,
)

ALL_OFF = GateConfig(min_improvement=None)


def check(decision: PromotionDecision, name: str) -> Check:
    (found,) = [c for c in decision.checks if c.name == name]
    return found


# --- improvement over the champion ------------------------------------------------------------------


def test_improvement_by_the_margin_promotes_with_reason():
    d = decide_promotion(ModelScores(0.85), ModelScores(0.80), None, GateConfig(min_improvement=0.02))
    assert d.promote
    c = check(d, "improvement")
    assert c.passed and c.value == pytest.approx(0.05) and c.threshold == 0.02
    assert "student_accuracy 0.8500 beats the champion's 0.8000" in c.reason
    assert c.reason in d.reasons


def test_improvement_below_the_margin_is_refused_with_reason():
    d = decide_promotion(ModelScores(0.81), ModelScores(0.80), None, GateConfig(min_improvement=0.02))
    assert not d.promote
    assert d.reasons == [check(d, "improvement").reason]
    assert (
        "does not beat the champion's 0.8000 by the required margin 0.0200 (improvement +0.0100)"
        in (d.reasons[0])
    )


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "promote"),
    [
        (0.35, 0.34, 0.01, True),  # exactly the margin: 0.35 - 0.34 = 0.00999…95 in binary, still passes
        (0.81, 0.80, 0.01, True),  # exactly the margin, rounding the other way (0.0100…09)
        (0.8199, 0.81, 0.01, False),  # 0.0099 short of the margin
        (0.80, 0.80, 0.0, False),  # a tie never promotes, even with no margin
        (0.8001, 0.80, 0.0, True),  # any strict improvement with margin 0
        (0.79, 0.80, 0.0, False),
    ],
)
def test_margin_boundaries(candidate, champion, margin, promote):
    cfg = GateConfig(min_improvement=margin)
    assert decide_promotion(ModelScores(candidate), ModelScores(champion), None, cfg).promote is promote


def test_metric_name_comes_from_the_config():
    d = decide_promotion(ModelScores(0.5), ModelScores(0.6), None, GateConfig(metric="macro_f1"))
    assert d.reasons[0].startswith("macro_f1 0.5000 does not beat")


# --- distance to the teacher ------------------------------------------------------------------------


def test_teacher_gap_within_bound_passes():
    d = decide_promotion(ModelScores(0.48), None, 0.50, GateConfig(max_gap_to_teacher=0.03))
    c = check(d, "teacher_gap")
    assert d.promote and c.passed and c.value == pytest.approx(0.02)
    assert "gap +0.0200 within the bound 0.0300" in c.reason


def test_teacher_gap_exactly_at_bound_passes():
    # 0.50 - 0.47 = 0.0300…27 in binary: the gate must not refuse on float noise
    assert decide_promotion(ModelScores(0.47), None, 0.50, GateConfig(max_gap_to_teacher=0.03)).promote


def test_teacher_gap_beyond_bound_fails_with_reason():
    d = decide_promotion(ModelScores(0.40), None, 0.50, GateConfig(max_gap_to_teacher=0.03))
    assert not d.promote
    assert d.reasons == ["student_accuracy 0.4000 vs teacher 0.5000: gap +0.1000 exceeds the bound 0.0300"]


def test_student_better_than_teacher_passes_the_gap():
    d = decide_promotion(ModelScores(0.55), None, 0.50, GateConfig(max_gap_to_teacher=0.0))
    assert d.promote and check(d, "teacher_gap").value == pytest.approx(-0.05)


def test_unknown_teacher_metric_fails_closed():
    d = decide_promotion(ModelScores(0.9), None, None, GateConfig(max_gap_to_teacher=0.05))
    assert not d.promote and d.reasons == ["teacher student_accuracy unknown: cannot check the gap"]


# --- slices ---------------------------------------------------------------------------------------

CHAMP_SLICES = {"label=positive": 0.80, "label=negative": 0.70, "data=v2": 0.75}


def test_slice_regression_names_the_slice():
    cand = ModelScores(0.90, {"label=positive": 0.95, "label=negative": 0.60, "data=v2": 0.76})
    d = decide_promotion(cand, ModelScores(0.80, CHAMP_SLICES), None, GateConfig(max_slice_regression=0.05))
    assert not d.promote
    assert [c.name for c in d.failed] == ["slice:label=negative"]
    assert d.reasons == [
        "slice label=negative: 0.6000 vs champion 0.7000 (change -0.1000), "
        "regression exceeds the bound 0.0500"
    ]
    assert check(d, "slice:label=negative").value == pytest.approx(0.10)
    assert check(d, "slice:data=v2").passed and check(d, "slice:label=positive").passed


def test_slice_drop_exactly_at_bound_passes():
    cand = ModelScores(0.90, {"label=positive": 0.75, "label=negative": 0.65, "data=v2": 0.70})
    d = decide_promotion(cand, ModelScores(0.80, CHAMP_SLICES), None, GateConfig(max_slice_regression=0.05))
    assert d.promote, d.reasons
    assert "regression within the bound 0.0500" in check(d, "slice:label=positive").reason


def test_slice_missing_for_candidate_fails_closed_and_new_slices_are_ignored():
    cand = ModelScores(0.90, {"label=positive": 0.9, "label=negative": 0.9, "data=v3": 0.1})
    d = decide_promotion(cand, ModelScores(0.80, CHAMP_SLICES), None, GateConfig(max_slice_regression=0.05))
    assert not d.promote
    assert d.reasons == ["slice data=v2: not measured for the candidate (champion 0.7500)"]
    assert not any("data=v3" in c.name for c in d.checks)


# --- budgets --------------------------------------------------------------------------------------


def test_latency_budget_pass_and_fail():
    cfg = GateConfig(min_improvement=None, max_latency_ms=50)
    ok = decide_promotion(ModelScores(0.8, latency_ms=50.0), None, None, cfg)
    assert ok.promote and check(ok, "latency").reason == "latency 50 ms within the budget 50 ms"
    slow = decide_promotion(ModelScores(0.8, latency_ms=62.5), None, None, cfg)
    assert not slow.promote and slow.reasons == ["latency 62.5 ms over the budget 50 ms"]
    unknown = decide_promotion(ModelScores(0.8), None, None, cfg)
    assert unknown.reasons == ["latency not measured: cannot check the 50 ms budget"]


def test_size_budget_pass_and_fail():
    cfg = GateConfig(min_improvement=None, max_size_mb=330)
    ok = decide_promotion(ModelScores(0.8, size_mb=324.1), None, None, cfg)
    assert ok.promote and check(ok, "size").reason == "size 324.1 MB within the budget 330 MB"
    big = decide_promotion(ModelScores(0.8, size_mb=540), None, None, cfg)
    assert not big.promote and big.reasons == ["size 540 MB over the budget 330 MB"]


# --- combinations, no champion, config ---------------------------------------------------------------

FULL = GateConfig(
    min_improvement=0.01,
    max_gap_to_teacher=0.05,
    max_slice_regression=0.05,
    max_latency_ms=100,
    max_size_mb=400,
)


def test_no_champion_promotes_when_absolute_checks_pass():
    d = decide_promotion(ModelScores(0.47, latency_ms=20, size_mb=300), None, 0.50, FULL)
    assert d.promote
    assert [c.name for c in d.checks] == ["champion", "teacher_gap", "latency", "size"]
    assert d.reasons[0] == "no champion yet: nothing to beat or regress"


def test_no_champion_still_refused_by_absolute_checks():
    d = decide_promotion(ModelScores(0.30, latency_ms=20, size_mb=900), None, 0.50, FULL)
    assert not d.promote
    assert [c.name for c in d.failed] == ["teacher_gap", "size"]
    assert len(d.reasons) == 2


def test_every_failing_check_is_reported_not_just_the_first():
    cand = ModelScores(0.70, {"label=positive": 0.5}, latency_ms=500, size_mb=900)
    d = decide_promotion(cand, ModelScores(0.80, {"label=positive": 0.8}), 0.9, FULL)
    assert [c.name for c in d.failed] == [
        "improvement",
        "slice:label=positive",
        "teacher_gap",
        "latency",
        "size",
    ]


def test_all_checks_off_promotes_and_says_so():
    d = decide_promotion(ModelScores(0.1), ModelScores(0.9), None, ALL_OFF)
    assert d.promote and d.checks == [] and d.reasons == ["no check enabled: promoted"]


def test_nan_metric_never_promotes():
    d = decide_promotion(ModelScores(math.nan), ModelScores(0.5), 0.6, FULL)
    assert not d.promote and {"improvement", "teacher_gap"} <= {c.name for c in d.failed}


def test_decision_serialises_to_json():
    d = decide_promotion(
        ModelScores(0.85, latency_ms=10), ModelScores(0.80), None, GateConfig(max_latency_ms=20)
    )
    data = json.loads(json.dumps(d.to_dict()))
    assert data["promote"] is True
    assert data["checks"][0] == {
        "name": "improvement",
        "passed": True,
        "value": pytest.approx(0.05),
        "threshold": 0.0,
        "reason": d.checks[0].reason,
    }


@pytest.mark.parametrize(
    "kwargs", [{"min_improvement": -0.1}, {"max_slice_regression": math.nan}, {"max_latency_ms": 0}]
)
def test_bad_thresholds_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GateConfig(**kwargs)


# --- alias plans ----------------------------------------------------------------------------------

PROMOTED = PromotionDecision(True, [], ["ok"])
REFUSED = PromotionDecision(False, [], ["no"])


def test_alias_plan_promoted_moves_champion_and_keeps_previous():
    assert alias_plan(PROMOTED, "7", "5") == {"challenger": "7", "champion": "7", "previous": "5"}


def test_alias_plan_first_champion_has_no_previous():
    assert alias_plan(PROMOTED, "1", None) == {"challenger": "1", "champion": "1"}


def test_alias_plan_refused_only_sets_challenger():
    assert alias_plan(REFUSED, "7", "5") == {"challenger": "7"}


def test_alias_plan_repromoting_the_champion_does_not_make_it_its_own_previous():
    assert alias_plan(PROMOTED, "5", "5") == {"challenger": "5", "champion": "5"}


def test_rollback_restores_previous_and_removes_the_alias():
    assert rollback_plan("7", "5") == {"champion": "5", "previous": None}


def test_rollback_without_previous_errors_clearly():
    with pytest.raises(RollbackError, match="no version holds the 'previous' alias \\(champion is 7\\)"):
        rollback_plan("7", None)


def test_rollback_without_champion_or_with_same_version_errors():
    with pytest.raises(RollbackError, match="'champion' alias"):
        rollback_plan(None, "5")
    with pytest.raises(RollbackError, match="both version 5"):
        rollback_plan("5", "5")
