from potstill.routing import route


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


def test_alias_decision_first_better_and_worse():
    from potstill.promotion import decide_aliases

    first = decide_aliases("student_accuracy", 0.7, None)
    assert first.aliases == ["challenger", "champion"] and "no champion yet" in first.reasons[0]
    better = decide_aliases("student_accuracy", 0.71, 0.7)
    assert better.champion and "0.7100 beats the champion's 0.7000" in better.reasons[0]
    tie = decide_aliases("student_accuracy", 0.7, 0.7)
    assert tie.aliases == ["challenger"] and not tie.champion
