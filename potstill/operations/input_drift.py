"""Input drift statistics on sentence embeddings: MMD² with a permutation test, and a domain classifier.

Kept apart from `potstill.operations.drift` (which gathers every check into one report) because these are the
numerical kernels: each is pinned to a naive reference in the tests and knows nothing of configs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --- input drift: MMD² on embeddings -----------------------------------------------------------------


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def median_bandwidth(pooled: np.ndarray) -> float:
    """Median heuristic: σ = median Euclidean distance over distinct pairs (i < j) of the pooled sample,
    ignoring zero distances (duplicates); 1.0 when every point is identical. Computed on the pooled sample
    so that it is the same for every permutation."""
    z = np.asarray(pooled, dtype=np.float64)
    d = np.sqrt(_sq_dists(z, z)[np.triu_indices(len(z), k=1)])
    d = d[d > 0]
    return float(np.median(d)) if d.size else 1.0


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """k(a, b) = exp(-‖a − b‖² / (2σ²))."""
    return np.exp(-_sq_dists(a, b) / (2.0 * bandwidth**2))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3): within-sample means exclude i = j, so it can be slightly
    negative when the distributions match; needs at least 2 points per side."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD² needs at least 2 points per sample, got {m} and {n}")
    kxx, kyy, kxy = rbf_kernel(x, x, bandwidth), rbf_kernel(y, y, bandwidth), rbf_kernel(x, y, bandwidth)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


@dataclass(frozen=True)
class MMDResult:
    statistic: float
    p_value: float
    bandwidth: float
    n_permutations: int


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, n_permutations: int = 500, seed: int = 0, bandwidth: float | None = None
) -> MMDResult:
    """Unbiased MMD² and its permutation p-value (1 + #{perm ≥ observed}) / (1 + n_permutations).

    The kernel matrix of the pooled sample is built once; each permutation is a 0/1 membership column a,
    and its statistic follows from aᵀKa and aᵀK1, so a batch of permutations is one matrix product.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD² needs at least 2 points per sample, got {m} and {n}")
    z = np.vstack([x, y])
    sigma = median_bandwidth(z) if bandwidth is None else bandwidth
    k = rbf_kernel(z, z, sigma)
    row, diag = k.sum(1), np.diag(k)
    total = row.sum()

    def statistic(a: np.ndarray) -> np.ndarray:
        sxx = (a * (k @ a)).sum(0)  # Σ_{i,j ∈ X} k
        ak1 = a.T @ row  # Σ_{i ∈ X, j} k
        sxy = ak1 - sxx
        syy = total - 2.0 * ak1 + sxx
        trx = a.T @ diag
        tr_y = diag.sum() - trx
        return (sxx - trx) / (m * (m - 1)) + (syy - tr_y) / (n * (n - 1)) - 2.0 * sxy / (m * n)

    observed_a = np.zeros((m + n, 1))
    observed_a[:m] = 1.0
    observed = float(statistic(observed_a)[0])
    rng = np.random.default_rng(seed)
    exceed, done = 0, 0
    while done < n_permutations:
        batch = min(256, n_permutations - done)
        a = np.zeros((m + n, batch))
        for col in range(batch):
            a[rng.permutation(m + n)[:m], col] = 1.0
        exceed += int((statistic(a) >= observed - 1e-12).sum())
        done += batch
    return MMDResult(observed, (1 + exceed) / (1 + n_permutations), sigma, n_permutations)


def domain_classifier_auc(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression telling reference (0) from current (1) rows:
    ≈ 0.5 when the windows are indistinguishable. Out-of-fold probabilities only, so no row scores itself."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    features = np.vstack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)])
    target = np.r_[np.zeros(len(x)), np.ones(len(y))]
    folds = min(folds, len(x), len(y))
    if folds < 2:
        raise ValueError(f"a cross-validated AUC needs at least 2 rows per window, got {len(x)} and {len(y)}")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(
        LogisticRegression(max_iter=1000), features, target, cv=cv, method="predict_proba"
    )[:, 1]
    return float(roc_auc_score(target, proba))
