"""Drift statistics pinned to hand computations and naive loops, and the report's verdict combination."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from potstill.operations.drift import (
    Disagreement,
    DriftConfig,
    DriftSample,
    confidence_ks,
    drift_report,
    label_chi2,
    psi,
)
from potstill.operations.input_drift import (
    domain_classifier_auc,
    median_bandwidth,
    mmd2_unbiased,
    mmd_permutation_test,
)

# --- PSI ------------------------------------------------------------------------------------------


def test_psi_by_hand():
    # reference: positive 6/10 = 0.6, negative 4/10 = 0.4; current: positive 3/10 = 0.3, negative 7/10 = 0.7
    # PSI = (0.3 − 0.6)·ln(0.3/0.6) + (0.7 − 0.4)·ln(0.7/0.4)
    #     = (−0.3)(−0.693147) + (0.3)(0.559616) = 0.207944 + 0.167885 = 0.375829
    ref = ["positive"] * 6 + ["negative"] * 4
    cur = ["positive"] * 3 + ["negative"] * 7
    assert psi(ref, cur) == pytest.approx(0.375829, abs=1e-6)
    assert psi(ref, cur) == pytest.approx(-0.3 * math.log(0.5) + 0.3 * math.log(0.7 / 0.4))
    assert psi(ref, ref) == 0.0


def test_psi_empty_bin_uses_epsilon():
    # reference: a 0.5, b 0.5; current: a 1.0, b 0 → ε = 1e-4 (not renormalised)
    # PSI = (1 − 0.5)·ln(1/0.5) + (1e-4 − 0.5)·ln(1e-4/0.5)
    #     = 0.5·0.693147 + (−0.4999)(−8.517193) = 0.346574 + 4.257745 = 4.604319
    assert psi(["a", "a", "b", "b"], ["a"] * 4) == pytest.approx(4.604319, abs=1e-6)
    # a label that only appears in the current window is the same case mirrored
    assert psi(["a"] * 4, ["a", "a", "b", "b"]) == pytest.approx(4.604319, abs=1e-6)
    assert psi(["a"] * 4, ["a", "a", "b", "b"], epsilon=1e-2) == pytest.approx(
        (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 0.01) * math.log(0.5 / 0.01)  # 0.346574 + 1.916891
    )


# --- chi-square -----------------------------------------------------------------------------------


def test_chi2_two_labels_by_hand():
    # table       pos  neg | row
    #   reference  6    4  |  10
    #   current    3    7  |  10
    #   column     9   11  |  20      expected per row: 10·9/20 = 4.5 and 10·11/20 = 5.5
    # χ² = (6−4.5)²/4.5 + (4−5.5)²/5.5 + (3−4.5)²/4.5 + (7−5.5)²/5.5 = 2·(2.25/4.5) + 2·(2.25/5.5)
    #    = 1 + 0.818182 = 1.818182, 1 dof; p = P(χ²₁ ≥ x) = erfc(√(x/2)) = 0.177530
    statistic, p, dof = label_chi2(["pos"] * 6 + ["neg"] * 4, ["pos"] * 3 + ["neg"] * 7)
    assert dof == 1
    assert statistic == pytest.approx(1 + 9 / 11)
    assert p == pytest.approx(math.erfc(math.sqrt(statistic / 2)))
    assert p == pytest.approx(0.177530, abs=1e-6)
    # no Yates correction: same as scipy with correction=False
    assert (statistic, p) == pytest.approx(stats.chi2_contingency([[6, 4], [3, 7]], correction=False)[:2])


def test_chi2_three_labels_by_hand():
    # reference a 10, b 10, c 10; current a 20, b 5, c 5; columns 30, 15, 15 of 60 → expected 15, 7.5, 7.5
    # reference: 25/15 + 6.25/7.5 + 6.25/7.5 = 10/3; current: the same 10/3 → χ² = 20/3, 2 dof
    # p = P(χ²₂ ≥ x) = exp(−x/2) = exp(−10/3) = 0.035674
    statistic, p, dof = label_chi2(list("a" * 10 + "b" * 10 + "c" * 10), list("a" * 20 + "b" * 5 + "c" * 5))
    assert (statistic, dof) == (pytest.approx(20 / 3), 2)
    assert p == pytest.approx(math.exp(-10 / 3))


def test_chi2_single_label_is_no_evidence():
    assert label_chi2(["a", "a"], ["a"]) == (0.0, 1.0, 0)


# --- KS -------------------------------------------------------------------------------------------


def test_ks_statistic_and_exact_p_by_hand():
    ref = [0.1, 0.2, 0.3, 0.4]
    cur = [0.35, 0.5, 0.6, 0.7]
    # ECDFs: at 0.3 F_ref = 3/4, F_cur = 0; at 0.4 F_ref = 1, F_cur = 1/4 → D = 3/4 (no point does better)
    d, p = confidence_ks(ref, cur)
    assert d == pytest.approx(0.75)

    # exact p-value: of the C(8,4) = 70 equally likely splits of the pooled values, count those with D ≥ 3/4
    pooled = sorted(ref + cur)

    def ks_d(a: list[float], b: list[float]) -> float:
        return max(abs(sum(v <= t for v in a) / len(a) - sum(v <= t for v in b) / len(b)) for t in pooled)

    splits = list(itertools.combinations(range(8), 4))
    extreme = sum(
        ks_d([pooled[i] for i in s], [pooled[i] for i in range(8) if i not in s]) >= 0.75 - 1e-12
        for s in splits
    )
    assert (len(splits), extreme) == (70, 16)
    assert p == pytest.approx(16 / 70)


# --- MMD² -----------------------------------------------------------------------------------------

X = np.array([[0.0, 0.0, 1.0], [1.0, 0.5, 0.0], [0.2, -1.0, 0.3], [0.5, 0.5, 0.5], [-0.3, 0.1, 0.9]])
Y = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, 0.5], [0.0, 1.5, -0.5], [1.2, 0.8, 0.1]])


def naive_mmd2_unbiased(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True)) / (2 * sigma**2))

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_median_bandwidth_matches_pairwise_loop():
    pooled = np.vstack([X, Y])
    distances = [
        math.dist(pooled[i], pooled[j]) for i in range(len(pooled)) for j in range(i + 1, len(pooled))
    ]
    assert len(distances) == 36  # 9 points → 9·8/2 pairs
    assert median_bandwidth(pooled) == pytest.approx(float(np.median(distances)))


def test_median_bandwidth_ignores_duplicates_and_degenerate_sample():
    assert median_bandwidth(np.zeros((4, 2))) == 1.0
    assert median_bandwidth(np.array([[0.0], [0.0], [3.0]])) == pytest.approx(3.0)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3])
def test_mmd2_unbiased_matches_naive_double_loop(sigma):
    assert mmd2_unbiased(X, Y, sigma) == pytest.approx(naive_mmd2_unbiased(X, Y, sigma), rel=1e-10)


def test_permutation_test_statistic_is_the_unbiased_mmd2_with_median_bandwidth():
    r = mmd_permutation_test(X, Y, n_permutations=50, seed=0)
    sigma = median_bandwidth(np.vstack([X, Y]))
    assert r.bandwidth == pytest.approx(sigma)
    assert r.statistic == pytest.approx(naive_mmd2_unbiased(X, Y, sigma), rel=1e-10)
    assert 1 / 51 <= r.p_value <= 1


def test_permutation_p_value_small_for_shifted_gaussians_large_for_same():
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(60, 8))
    shifted = rng.normal(loc=0.8, size=(60, 8))
    same = rng.normal(size=(60, 8))
    drift = mmd_permutation_test(ref, shifted, n_permutations=200, seed=1)
    assert drift.p_value == pytest.approx(1 / 201)  # no permutation reaches the observed statistic
    assert drift.statistic > 0.05
    calm = mmd_permutation_test(ref, same, n_permutations=200, seed=1)
    assert calm.p_value > 0.2
    assert abs(calm.statistic) < 0.02
    # seeded: the same call gives the same p-value
    assert mmd_permutation_test(ref, same, n_permutations=200, seed=1).p_value == calm.p_value


def test_mmd_needs_two_points_per_side():
    with pytest.raises(ValueError, match="at least 2 points"):
        mmd2_unbiased(X[:1], Y, 1.0)


def test_domain_classifier_auc_separates_shift_only():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(80, 5))
    assert domain_classifier_auc(ref, rng.normal(loc=1.5, size=(80, 5))) > 0.9
    assert domain_classifier_auc(ref, rng.normal(size=(80, 5))) < 0.7


# --- the report -----------------------------------------------------------------------------------


def sample(labels: str, confidences: list[float], disagreeing: int, rows: int, emb=None) -> DriftSample:
    return DriftSample(
        labels=list(labels),
        confidences=confidences,
        embeddings=emb,
        disagreement=Disagreement(disagreeing, rows),
    )


RNG = np.random.default_rng(11)
REF_CONF = list(RNG.uniform(0.6, 1.0, 200))
REF = sample("p" * 100 + "n" * 100, REF_CONF, 27, 200, RNG.normal(size=(40, 4)))


def test_report_without_drift():
    cur = sample("p" * 98 + "n" * 102, list(RNG.uniform(0.6, 1.0, 200)), 14, 100, RNG.normal(size=(40, 4)))
    report = drift_report(REF, cur, DriftConfig(n_permutations=100))
    assert [c.name for c in report.checks] == ["mmd", "psi", "chi2", "ks", "disagreement"]
    assert not report.drifted, report.reasons
    assert report.reasons == ["no drift in 5 checks (mmd, psi, chi2, ks, disagreement)"]
    assert report.skipped == []


def test_report_flags_only_the_checks_that_drifted_and_names_them():
    # labels shift 50/50 → 80/20: PSI = (0.8 − 0.5)·ln(0.8/0.5) + (0.2 − 0.5)·ln(0.2/0.5)
    #   = 0.141 + 0.275 = 0.416 > 0.2; confidences and embeddings do not shift
    cur = sample("p" * 160 + "n" * 40, list(RNG.uniform(0.6, 1.0, 200)), 14, 100, RNG.normal(size=(40, 4)))
    report = drift_report(REF, cur, DriftConfig(n_permutations=100))
    assert report.drifted
    assert {c.name for c in report.checks if c.drifted} == {"psi", "chi2"}
    assert [r.split(":")[0] for r in report.reasons] == ["psi", "chi2"]
    assert report.check("psi").statistic == pytest.approx(0.3 * math.log(1.6) - 0.3 * math.log(0.4))
    assert "p 80.0%" in report.check("psi").detail


def fisher_greater_naive(a: int, b: int, c: int, d: int) -> float:
    """P(X >= a) for the top-left cell of [[a, b], [c, d]] with fixed margins (hypergeometric)."""
    row, col, n = a + b, a + c, a + b + c + d
    return sum(
        math.comb(col, k) * math.comb(n - col, row - k) for k in range(a, min(row, col) + 1)
    ) / math.comb(n, row)


def test_disagreement_p_value_is_the_one_sided_fisher_test():
    from potstill.operations.drift import disagreement_p_value

    got = disagreement_p_value(Disagreement(10, 32), Disagreement(14, 32))
    assert got == pytest.approx(fisher_greater_naive(14, 18, 10, 22))
    assert 0.2 < got < 0.3  # 14/32 vs 10/32: above a +5% margin, but well within sampling noise


def test_report_disagreement_and_confidence_drift():
    # reference disagreement 27/200 = 13.5%, limit 18.5%; current 35/100 = 35% and Fisher p ~ 1e-5
    cur = sample("p" * 100 + "n" * 100, list(RNG.uniform(0.3, 0.7, 200)), 35, 100)
    report = drift_report(REF, cur, DriftConfig(n_permutations=100))
    dis = report.check("disagreement")
    assert dis.drifted and dis.statistic == pytest.approx(0.35)
    assert dis.p_value == pytest.approx(fisher_greater_naive(35, 65, 27, 173))
    assert "35.0% (35/100) vs reference 13.5% (27/200)" in dis.detail
    noisy = drift_report(
        REF, sample("p" * 100 + "n" * 100, REF_CONF, 20, 100), DriftConfig(n_permutations=100)
    )
    assert not noisy.check("disagreement").drifted  # 20% > 18.5% limit, but p ~ 0.09: not significant
    assert report.check("ks").drifted and report.check("ks").p_value < 0.05
    assert report.skipped == ["mmd: no embeddings in a window"]


def test_report_checks_can_be_switched_and_serialise_to_json():
    cur = sample("p" * 100 + "n" * 100, REF_CONF, 27, 200, RNG.normal(loc=2.0, size=(40, 4)))
    cfg = DriftConfig(checks=frozenset({"mmd", "domain_classifier", "psi"}), n_permutations=100)
    report = drift_report(REF, cur, cfg)
    assert [c.name for c in report.checks] == ["mmd", "domain_classifier", "psi"]
    assert report.check("mmd").drifted and report.check("domain_classifier").drifted
    assert not report.check("psi").drifted
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["drifted"] is True
    assert data["checks"][0]["name"] == "mmd" and data["checks"][0]["p_value"] == pytest.approx(1 / 101)


def test_checks_accept_a_list():
    assert DriftConfig(checks=["psi", "ks"]).checks == frozenset({"psi", "ks"})  # type: ignore[arg-type]


def test_unknown_check_name_is_rejected():
    with pytest.raises(ValueError, match="unknown drift checks \\['mdd'\\]"):
        DriftConfig(checks=frozenset({"mdd"}))


def test_disagreement_from_labels():
    assert Disagreement.from_labels(["a", "b", "a", "a"], ["a", "a", "a", "b"]).rate == 0.5


def test_bonferroni_divides_alpha_by_the_number_of_p_value_checks():
    from potstill.operations.drift import DriftCheck, correct

    checks = [
        DriftCheck("mmd", 0.1, 0.03, 0.05, True, "p=0.03"),
        DriftCheck("ks", 0.2, 0.01, 0.05, True, "p=0.01"),
        DriftCheck("psi", 0.3, None, 0.2, True, "psi 0.3 > 0.2"),  # no p-value: untouched
    ]
    out = {c.name: c for c in correct(checks)}
    assert out["mmd"].threshold == 0.025 and not out["mmd"].drifted  # 0.03 >= 0.05 / 2
    assert out["ks"].drifted and "Bonferroni" in out["ks"].detail
    assert out["psi"] == checks[2]
    assert correct(checks, "none") == checks
    assert correct(checks[:1]) == checks[:1]  # one test: nothing to correct
