"""Drift statistics between a reference window (what the champion was trained and evaluated on) and a
current window (what it sees now), gathered in one typed report with a verdict per check.

Each statistic is a plain function so that it can be pinned to a hand computation; `drift_report` only
decides which ones apply and combines their verdicts. The rule for every `DriftCheck`: when the test has a
p-value, it drifted if p_value < threshold (the test's alpha); otherwise it drifted if
statistic > threshold. With `correction="bonferroni"` (the default) each p-value test runs at alpha / m,
m the number of p-value tests in the report: five tests at 0.05 each would raise a false alarm on about
one clean batch in five, and one false alarm spends the retrain cooldown before the real shift comes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats

from potstill.operations.input_drift import domain_classifier_auc, mmd_permutation_test

CHECKS = ("mmd", "domain_classifier", "psi", "chi2", "ks", "disagreement")


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and which checks run. The domain classifier is off by default: it answers the same
    question as MMD, costs a cross-validated fit, and has no p-value."""

    checks: frozenset[str] = frozenset({"mmd", "psi", "chi2", "ks", "disagreement"})
    mmd_alpha: float = 0.05
    chi2_alpha: float = 0.05
    ks_alpha: float = 0.05
    psi_threshold: float = 0.2
    psi_epsilon: float = 1e-4
    domain_auc_threshold: float = 0.7
    domain_cv_folds: int = 5
    max_disagreement_increase: float = 0.05
    disagreement_alpha: float = 0.05
    n_permutations: int = 500
    # MMD costs O(n²) memory and time per permutation: larger windows are subsampled (seeded) to this.
    mmd_max_samples: int = 1000
    seed: int = 0
    correction: str = "bonferroni"  # or "none": every p-value test at its own alpha

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", frozenset(self.checks))  # a list from YAML works too
        unknown = set(self.checks) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown drift checks {sorted(unknown)}; known: {list(CHECKS)}")
        for name in ("mmd_alpha", "chi2_alpha", "ks_alpha", "disagreement_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"DriftConfig.{name} must be in (0, 1), got {getattr(self, name)!r}")
        if self.correction not in ("bonferroni", "none"):
            raise ValueError(
                f"DriftConfig.correction must be 'bonferroni' or 'none', got {self.correction!r}"
            )
        if self.n_permutations < 1 or self.mmd_max_samples < 2 or self.domain_cv_folds < 2:
            raise ValueError(
                "n_permutations >= 1, mmd_max_samples >= 2 and domain_cv_folds >= 2 are required"
            )


@dataclass(frozen=True)
class Disagreement:
    """Teacher–student disagreement on rows the teacher labelled (counts, so small samples stay visible)."""

    disagreeing: int
    rows: int

    @property
    def rate(self) -> float:
        return self.disagreeing / self.rows if self.rows else 0.0

    @classmethod
    def from_labels(cls, teacher: Sequence[str], student: Sequence[str]) -> Disagreement:
        if len(teacher) != len(student):
            raise ValueError(f"teacher and student labels differ in length: {len(teacher)} vs {len(student)}")
        return cls(sum(t != s for t, s in zip(teacher, student, strict=True)), len(teacher))


@dataclass(frozen=True, eq=False)
class DriftSample:
    """One window of monitored data; any part may be missing and the checks that need it are skipped.
    `labels` are the categories prediction drift counts: a classifier's predicted labels, or what stands
    in for them (a generative model's answer-length buckets); `categories` names them in the report."""

    labels: Sequence[str] = ()
    confidences: Sequence[float] = ()
    embeddings: np.ndarray | None = None
    disagreement: Disagreement | None = None
    categories: str = "predicted labels"


@dataclass(frozen=True)
class DriftCheck:
    name: str
    statistic: float
    p_value: float | None
    threshold: float
    drifted: bool
    detail: str


@dataclass(frozen=True)
class DriftReport:
    checks: list[DriftCheck]
    skipped: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return any(c.drifted for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        drifted = [f"{c.name}: {c.detail}" for c in self.checks if c.drifted]
        if drifted:
            return drifted
        return [f"no drift in {len(self.checks)} checks ({', '.join(c.name for c in self.checks) or 'none'})"]

    def check(self, name: str) -> DriftCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no drift check {name!r} in this report (ran: {[c.name for c in self.checks]})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (plain floats, no NaN) for mlflow.log_dict."""
        return {
            "drifted": self.drifted,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
            "skipped": list(self.skipped),
        }


# --- prediction and confidence drift ----------------------------------------------------------------


def _label_counts(reference: Sequence[str], current: Sequence[str]) -> tuple[list[str], list[int], list[int]]:
    ref, cur = Counter(reference), Counter(current)
    labels = sorted(set(ref) | set(cur))
    return labels, [ref[lab] for lab in labels], [cur[lab] for lab in labels]


def psi(reference: Sequence[str], current: Sequence[str], epsilon: float = 1e-4) -> float:
    """Population stability index Σ (c − r)·ln(c / r) over the labels seen in either window, where r and
    c are label shares; a share of 0 is replaced by `epsilon` (not renormalised), since ln(0) is undefined
    and a label that vanishes or appears is exactly the drift PSI should flag."""
    if not reference or not current:
        raise ValueError("PSI needs at least one label in each window")
    _, ref, cur = _label_counts(reference, current)
    total_r, total_c = sum(ref), sum(cur)
    value = 0.0
    for r_count, c_count in zip(ref, cur, strict=True):
        r, c = max(r_count / total_r, epsilon), max(c_count / total_c, epsilon)
        value += (c - r) * math.log(c / r)
    return value


def label_chi2(reference: Sequence[str], current: Sequence[str]) -> tuple[float, float, int]:
    """Pearson chi-square test of homogeneity on the 2 × k table of label counts (both windows are
    samples, so neither is taken as the true distribution); no Yates correction, so a 2 × 2 table gives
    the plain Pearson statistic. Returns (statistic, p-value, degrees of freedom)."""
    if not reference or not current:
        raise ValueError("the chi-square test needs at least one label in each window")
    _, ref, cur = _label_counts(reference, current)
    dof = len(ref) - 1
    if dof == 0:
        return 0.0, 1.0, 0
    n_r, n_c = sum(ref), sum(cur)
    total = n_r + n_c
    statistic = 0.0
    for r_count, c_count in zip(ref, cur, strict=True):
        column = r_count + c_count
        for observed, row_total in ((r_count, n_r), (c_count, n_c)):
            expected = row_total * column / total
            statistic += (observed - expected) ** 2 / expected
    return statistic, float(stats.chi2.sf(statistic, dof)), dof


def confidence_ks(reference: Sequence[float], current: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov: D = sup |F_ref − F_cur| and its two-sided p-value (exact for small
    windows, asymptotic for large ones, as scipy chooses)."""
    if not len(reference) or not len(current):
        raise ValueError("the KS test needs at least one confidence in each window")
    result = stats.ks_2samp(np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64))
    return float(result.statistic), float(result.pvalue)


# --- the report -------------------------------------------------------------------------------------


def drift_report(reference: DriftSample, current: DriftSample, cfg: DriftConfig | None = None) -> DriftReport:
    """Run every enabled check the two windows have data for; a check without data is listed in `skipped`
    with why, so a report never looks clean only because a window was empty."""
    cfg = cfg or DriftConfig()
    checks: list[DriftCheck] = []
    skipped: list[str] = []
    runners = {
        "mmd": _check_mmd,
        "domain_classifier": _check_domain,
        "psi": _check_psi,
        "chi2": _check_chi2,
        "ks": _check_ks,
        "disagreement": _check_disagreement,
    }
    for name in CHECKS:
        if name not in cfg.checks:
            continue
        outcome = runners[name](reference, current, cfg)
        if isinstance(outcome, str):
            skipped.append(f"{name}: {outcome}")
        else:
            checks.append(outcome)
    return DriftReport(correct(checks, cfg.correction), skipped)


def correct(checks: list[DriftCheck], correction: str = "bonferroni") -> list[DriftCheck]:
    """Bonferroni: each of the m p-value checks drifts only when p < alpha / m (family-wise alpha), on
    top of any other condition it has (the disagreement check also needs its margin)."""
    m = sum(c.p_value is not None for c in checks)
    if correction != "bonferroni" or m < 2:
        return checks
    return [
        replace(
            c,
            threshold=c.threshold / m,
            drifted=c.drifted and c.p_value < c.threshold / m,  # keeps a check's other conditions
            detail=f"{c.detail} (Bonferroni: alpha {c.threshold:g}/{m})",
        )
        if c.p_value is not None
        else c
        for c in checks
    ]


def _embeddings(
    reference: DriftSample, current: DriftSample, cfg: DriftConfig
) -> tuple[np.ndarray, ...] | str:
    if reference.embeddings is None or current.embeddings is None:
        return "no embeddings in a window"
    rng = np.random.default_rng(cfg.seed)
    out = []
    sizes = f"{len(reference.embeddings)} and {len(current.embeddings)}"
    for window in (reference.embeddings, current.embeddings):
        e = np.asarray(window, dtype=np.float64)
        if len(e) < 2:
            return f"fewer than 2 embeddings in a window ({sizes})"
        if len(e) > cfg.mmd_max_samples:
            e = e[np.sort(rng.choice(len(e), cfg.mmd_max_samples, replace=False))]
        out.append(e)
    return tuple(out)


def _check_mmd(reference: DriftSample, current: DriftSample, cfg: DriftConfig) -> DriftCheck | str:
    pair = _embeddings(reference, current, cfg)
    if isinstance(pair, str):
        return pair
    x, y = pair
    r = mmd_permutation_test(x, y, cfg.n_permutations, cfg.seed)
    drifted = r.p_value < cfg.mmd_alpha
    detail = (
        f"MMD² {r.statistic:.5f} (RBF, σ {r.bandwidth:.4f}, {len(x)} vs {len(y)} rows), permutation p "
        f"{r.p_value:.4f} over {r.n_permutations} permutations {'<' if drifted else '≥'} α {cfg.mmd_alpha}"
    )
    return DriftCheck("mmd", r.statistic, r.p_value, cfg.mmd_alpha, drifted, detail)


def _check_domain(reference: DriftSample, current: DriftSample, cfg: DriftConfig) -> DriftCheck | str:
    pair = _embeddings(reference, current, cfg)
    if isinstance(pair, str):
        return pair
    x, y = pair
    auc = domain_classifier_auc(x, y, cfg.domain_cv_folds, cfg.seed)
    drifted = auc > cfg.domain_auc_threshold
    detail = (
        f"a logistic regression tells the windows apart with cross-validated AUC {auc:.3f} "
        f"({'>' if drifted else '≤'} {cfg.domain_auc_threshold}; 0.5 = indistinguishable)"
    )
    return DriftCheck("domain_classifier", auc, None, cfg.domain_auc_threshold, drifted, detail)


def _shares(labels: Sequence[str]) -> str:
    counts = Counter(labels)
    return ", ".join(f"{lab} {counts[lab] / len(labels):.1%}" for lab in sorted(counts))


def _check_psi(reference: DriftSample, current: DriftSample, cfg: DriftConfig) -> DriftCheck | str:
    if not reference.labels or not current.labels:
        return f"no {current.categories} in a window"
    value = psi(reference.labels, current.labels, cfg.psi_epsilon)
    drifted = value > cfg.psi_threshold
    detail = (
        f"PSI {value:.4f} {'>' if drifted else '≤'} {cfg.psi_threshold} on {current.categories} "
        f"(reference {_shares(reference.labels)}; current {_shares(current.labels)})"
    )
    return DriftCheck("psi", value, None, cfg.psi_threshold, drifted, detail)


def _check_chi2(reference: DriftSample, current: DriftSample, cfg: DriftConfig) -> DriftCheck | str:
    if not reference.labels or not current.labels:
        return f"no {current.categories} in a window"
    value, p, dof = label_chi2(reference.labels, current.labels)
    drifted = p < cfg.chi2_alpha
    counts = "label counts" if current.categories == "predicted labels" else f"counts of {current.categories}"
    detail = (
        f"chi-square {value:.4f} on {counts} ({dof} dof, {len(reference.labels)} vs "
        f"{len(current.labels)} rows), p {p:.4g} {'<' if drifted else '≥'} α {cfg.chi2_alpha}"
    )
    return DriftCheck("chi2", value, p, cfg.chi2_alpha, drifted, detail)


def _check_ks(reference: DriftSample, current: DriftSample, cfg: DriftConfig) -> DriftCheck | str:
    if not len(reference.confidences) or not len(current.confidences):
        return "no student confidences in a window"
    d, p = confidence_ks(reference.confidences, current.confidences)
    drifted = p < cfg.ks_alpha
    detail = (
        f"KS D {d:.4f} on student confidence (mean {np.mean(reference.confidences):.3f} → "
        f"{np.mean(current.confidences):.3f}), p {p:.4g} {'<' if drifted else '≥'} α {cfg.ks_alpha}"
    )
    return DriftCheck("ks", d, p, cfg.ks_alpha, drifted, detail)


def disagreement_p_value(reference: Disagreement, current: Disagreement) -> float:
    """One-sided Fisher exact test that the current window disagrees more often than the reference: the
    samples are small (tens of teacher-labelled rows), where a normal approximation is poor."""
    table = [
        [current.disagreeing, current.rows - current.disagreeing],
        [reference.disagreeing, reference.rows - reference.disagreeing],
    ]
    return float(stats.fisher_exact(table, alternative="greater").pvalue)


def _check_disagreement(reference: DriftSample, current: DriftSample, cfg: DriftConfig) -> DriftCheck | str:
    """Drifted when the rate rose by more than `max_disagreement_increase` (a change worth acting on)
    and the rise is unlikely to be sampling noise (Fisher p < `disagreement_alpha`)."""
    ref, cur = reference.disagreement, current.disagreement
    if ref is None or cur is None or not ref.rows or not cur.rows:
        return "no teacher-labelled sample in a window"
    limit = ref.rate + cfg.max_disagreement_increase
    p = disagreement_p_value(ref, cur)
    drifted = cur.rate > limit and p < cfg.disagreement_alpha
    detail = (
        f"teacher–student disagreement {cur.rate:.1%} ({cur.disagreeing}/{cur.rows}) vs reference "
        f"{ref.rate:.1%} ({ref.disagreeing}/{ref.rows}): {'above' if cur.rate > limit else 'within'} the "
        f"limit {limit:.1%} (reference + {cfg.max_disagreement_increase:.1%}), Fisher p {p:.3g}"
    )
    return DriftCheck("disagreement", cur.rate, p, cfg.disagreement_alpha, drifted, detail)
