import pytest

from potstill.review.routing import (
    AuditSample,
    Budget,
    PerClassQuota,
    Threshold,
    build_policies,
    route,
    route_with,
)


def rows(*confs):
    return [{"id": f"r{i}", "confidence": c} for i, c in enumerate(confs)]


def test_threshold_only_sends_every_low_confidence_row_to_review():
    d = route(rows(0.9, 0.55, 0.7, 0.51), threshold=0.6)
    assert d.review == ["r1", "r3"] and d.accepted == ["r0", "r2"]
    assert d.reasons["r1"] == "confidence 0.550 < threshold 0.6"
    assert d.reasons["r0"] == "confidence 0.900 >= threshold 0.6"


def test_budget_only_takes_the_lowest_confidence_fraction():
    d = route(rows(0.9, 0.55, 0.7, 0.51, 0.99), budget=0.4)  # floor(0.4 * 5) = 2
    assert d.review == ["r1", "r3"]
    assert d.accepted == ["r0", "r2", "r4"]


def test_budget_caps_threshold_candidates_lowest_first_and_says_why():
    d = route(rows(0.52, 0.55, 0.58, 0.95), threshold=0.6, budget=0.5)  # 3 candidates, room for 2
    assert d.review == ["r0", "r1"]
    assert "r2" in d.accepted
    assert "budget 50% is spent" in d.reasons["r2"]


def test_budget_rounds_down_and_ties_break_by_id():
    d = route(rows(0.5, 0.5, 0.5), budget=0.5)  # floor(1.5) = 1
    assert d.review == ["r0"]


def test_no_policy_accepts_everything():
    d = route(rows(0.1, 0.2))
    assert d.review == [] and d.accepted == ["r0", "r1"]


def test_every_row_is_in_exactly_one_group():
    rs = rows(*[i / 20 for i in range(20)])
    d = route(rs, threshold=0.5, budget=0.2)
    assert sorted(d.accepted + d.review) == sorted(r["id"] for r in rs)
    assert len(d.review) == 4 and set(d.reasons) == {r["id"] for r in rs}


# ---- combinable policies (route_with)


def labeled(*pairs):
    return [{"id": f"r{i}", "confidence": c, "label": lab} for i, (c, lab) in enumerate(pairs)]


def test_route_is_route_with_threshold_and_budget():
    rs = rows(0.52, 0.55, 0.58, 0.95, 0.1)
    assert route(rs, threshold=0.6, budget=0.4) == route_with(rs, [Threshold(0.6), Budget(fraction=0.4)])


def test_budget_in_rows_and_the_smaller_of_both():
    rs = rows(0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    assert route_with(rs, [Budget(rows=2)]).review == ["r0", "r1"]
    assert route_with(rs, [Budget(fraction=0.5, rows=1)]).review == ["r0"]  # min(3, 1)
    d = route_with(rs, [Threshold(0.45), Budget(rows=3)])
    assert d.review == ["r0", "r1", "r2"] and "budget 3 rows is spent" in d.reasons["r3"]


def test_per_class_quota_caps_each_predicted_label_lowest_first():
    rs = labeled((0.1, "pos"), (0.2, "pos"), (0.3, "pos"), (0.15, "neg"), (0.9, "neg"))
    d = route_with(rs, [Threshold(0.5), PerClassQuota(2)])
    assert d.review == ["r0", "r1", "r3"]
    assert "quota of 2 rows for 'pos' is full" in d.reasons["r2"]
    assert d.reasons["r4"] == "confidence 0.900 >= threshold 0.5"


def test_quota_applies_before_the_budget():
    rs = labeled((0.1, "pos"), (0.2, "pos"), (0.3, "neg"), (0.4, "neg"))
    d = route_with(rs, [Threshold(0.5), PerClassQuota(1), Budget(rows=3)])
    assert d.review == ["r0", "r2"]  # the quota leaves 2; the budget of 3 is not reached


def test_audit_samples_high_confidence_rows_seeded_and_says_audit():
    rs = rows(*([0.3] * 5 + [0.9 + i / 1000 for i in range(20)]))
    policies = [Threshold(0.6), AuditSample(rows=4, seed=7)]
    d = route_with(rs, policies)
    assert len(d.audit) == 4 and set(d.audit) <= set(d.review)
    assert all(rs[int(i[1:])]["confidence"] >= 0.6 for i in d.audit)
    assert all(d.reasons[i].startswith("audit: ") for i in d.audit)
    assert len(d.review) == 9 and sorted(d.accepted + d.review) == sorted(r["id"] for r in rs)
    assert route_with(rs, policies) == d  # same seed, same sample
    assert route_with(rs, [Threshold(0.6), AuditSample(rows=4, seed=8)]).audit != d.audit
    assert "4 of them audit samples" in d.summary


def test_audit_fraction_of_eligible_rows_and_min_confidence():
    rs = rows(0.3, 0.7, 0.8, 0.95, 0.96, 0.97, 0.98)
    d = route_with(rs, [Threshold(0.5), AuditSample(fraction=0.5, seed=0, min_confidence=0.9)])
    assert len(d.audit) == 2 and all(rs[int(i[1:])]["confidence"] >= 0.9 for i in d.audit)


def test_build_policies_from_flat_settings():
    assert build_policies() == []
    ps = build_policies(threshold=0.6, budget_rows=10, per_class=3, audit=0.01, audit_seed=5)
    assert ps == [Threshold(0.6), Budget(rows=10), PerClassQuota(3), AuditSample(fraction=0.01, seed=5)]


def test_bad_policies_fail_early():
    with pytest.raises(ValueError, match="at most one Threshold"):
        route_with(rows(0.1), [Threshold(0.5), Threshold(0.6)])
    with pytest.raises(ValueError):
        Budget()
    with pytest.raises(ValueError):
        Threshold(1.5)


def test_parse_errors_always_go_to_review_outside_the_budget():
    rows = labeled((0.9, "positive"), (0.2, "negative"), (0.95, "positive"), (0.99, "negative"))
    rows[0] |= {"parse_error": True, "parse_error_reason": "no label word", "confidence": 0.0, "label": None}
    rows[2] |= {"parse_error": True, "confidence": 0.0, "label": None}
    d = route_with(rows, build_policies(threshold=0.5, budget_rows=1))
    assert d.review == ["r0", "r1", "r2"] and d.accepted == ["r3"]
    assert d.reasons["r0"].startswith("parse error (no label word)")
    assert "unreadable teacher output" in d.reasons["r2"]
    assert route_with(rows, []).review == ["r0", "r2"]  # even with no routing configured
