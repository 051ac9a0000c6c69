"""The drift monitor's decisions, free of Prefect and MLflow: which batches are new, what the reference
window is, whether a drift report should start a retrain, and the plots that show why.

Kept pure so that the cooldown rule (one drift event starts one retrain, not one per batch while the
retrain is still running) can be tested with hand-picked clocks, and so that a benchmark can replay a
stream of batches without a registry.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from potstill.operations.drift import DriftConfig, DriftReport

STATE_VERSION = 1


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to retrain now, with every reason that led there (stored verbatim in MLflow)."""

    trigger: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_retrain(
    report: DriftReport, last_trigger: datetime | None, now: datetime, cooldown_s: float
) -> RetrainDecision:
    """Drift outside the cooldown triggers; drift inside it does not (the retrain started by the same
    drift event is still running or just finished, and a second one would train on the same data); no
    drift never triggers. `last_trigger` None means no retrain was ever triggered."""
    if cooldown_s < 0:
        raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
    if not report.drifted:
        return RetrainDecision(False, ["no drift: " + "; ".join(report.reasons)])
    drift = [f"drift: {r}" for r in report.reasons]
    if last_trigger is None:
        return RetrainDecision(True, [*drift, "no retrain was triggered before"])
    ends = last_trigger + timedelta(seconds=cooldown_s)
    if now < ends:
        return RetrainDecision(
            False,
            [
                *drift,
                f"inside the cooldown: last retrain triggered {last_trigger.isoformat()}, cooldown "
                f"{cooldown_s:g}s ends {ends.isoformat()} ({(ends - now).total_seconds():.0f}s from now)",
            ],
        )
    return RetrainDecision(
        True,
        [
            *drift,
            f"outside the cooldown: last retrain triggered {last_trigger.isoformat()}, cooldown ended "
            f"{ends.isoformat()}",
        ],
    )


def drift_config(
    checks: Iterable[str],
    mmd_alpha: float,
    chi2_alpha: float,
    ks_alpha: float,
    psi_threshold: float,
    max_disagreement_increase: float,
    n_permutations: int,
    seed: int,
    correction: str = "bonferroni",
) -> DriftConfig:
    """The statistics' config from the run config's `monitor:` fields (kept as arguments so that
    potstill.config stays free of numpy/scipy imports)."""
    return DriftConfig(
        checks=frozenset(checks),
        mmd_alpha=mmd_alpha,
        chi2_alpha=chi2_alpha,
        ks_alpha=ks_alpha,
        psi_threshold=psi_threshold,
        max_disagreement_increase=max_disagreement_increase,
        n_permutations=n_permutations,
        seed=seed,
        correction=correction,
    )


# --- monitor state -----------------------------------------------------------------------------------


def empty_state() -> dict[str, Any]:
    return {"version": STATE_VERSION, "monitored": {}, "last_trigger": None, "triggers": []}


def new_batches(versions: Sequence[str], state: Mapping[str, Any]) -> list[str]:
    """Batch versions not monitored yet, oldest first, so a monitor that was down catches up in order."""
    done = set(state.get("monitored", {}))
    return [v for v in versions if v not in done]


def last_trigger_of(state: Mapping[str, Any]) -> datetime | None:
    value = state.get("last_trigger")
    return datetime.fromisoformat(value) if value else None


def record_batch(
    state: Mapping[str, Any],
    batch: str,
    summary: Mapping[str, Any],
    decision: RetrainDecision,
    now: datetime,
    trigger_mode: str,
) -> dict[str, Any]:
    """A new state with `batch` marked monitored and, when the decision triggered, the trigger time (the
    cooldown counts from it whatever `trigger_mode` did, so `none` behaves like the real thing)."""
    out = {**empty_state(), **state}
    out["monitored"] = {**out["monitored"], batch: {**summary, "monitored_at": now.isoformat()}}
    if decision.trigger:
        out["last_trigger"] = now.isoformat()
        out["triggers"] = [*out["triggers"], {"batch": batch, "at": now.isoformat(), "mode": trigger_mode}]
    return out


# --- windows -----------------------------------------------------------------------------------------


def seeded_sample(rows: Sequence[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """n rows drawn without replacement in their original order (all rows when there are fewer), so the
    same champion always gets the same reference window and the teacher's labels of it stay cached."""
    if n >= len(rows):
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


# Upper bounds (in words) of the answer-length buckets whose shares a generative model's prediction drift
# compares, where a classifier's label shares are compared.
LENGTH_BUCKETS: tuple[int, ...] = (0, 5, 15, 40, 100)


def answer_length_bucket(text: str | None) -> str:
    """The length bucket of a generated answer (`words<=5`, ..., `words>100`): answers that suddenly get
    longer or shorter are what a drifting input does to a generative student."""
    words = len(str(text or "").split())
    for bound in LENGTH_BUCKETS:
        if words <= bound:
            return f"words<={bound}"
    return f"words>{LENGTH_BUCKETS[-1]}"


def length_bucket_names() -> list[str]:
    """Every answer-length bucket, shortest first (the order their plot shows; the names do not sort so)."""
    return [*(f"words<={b}" for b in LENGTH_BUCKETS), f"words>{LENGTH_BUCKETS[-1]}"]


def input_text(row: Mapping[str, Any], fields: Sequence[str]) -> str:
    """What gets embedded: the prompt fields the model reads, in order (one field: that field)."""
    return "\n".join(str(row.get(f, "")) for f in fields)


# --- plots -------------------------------------------------------------------------------------------


def plot_label_shares(
    reference: Sequence[str],
    current: Sequence[str],
    path: Path,
    title: str = "",
    order: Sequence[str] | None = None,
) -> Path:
    """Predicted label shares (or a generative model's answer-length buckets), reference vs current, as
    grouped bars (PNG). `order`: the categories in this order (those seen in neither window left out);
    default: sorted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = set(reference) | set(current)
    labels = [c for c in order if c in seen] + sorted(seen - set(order)) if order else sorted(seen)
    ref, cur = Counter(reference), Counter(current)
    xs = range(len(labels))
    fig, ax = plt.subplots(figsize=(1.6 * max(len(labels), 2) + 1.5, 3.2))
    for offset, name, counts, n in (
        (-0.2, "reference", ref, len(reference)),
        (0.2, "current", cur, len(current)),
    ):
        ax.bar(
            [x + offset for x in xs],
            [counts[lab] / (n or 1) for lab in labels],
            width=0.4,
            label=f"{name} ({n})",
        )
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("share of predictions")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(title or "predicted labels")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confidence(
    reference: Sequence[float], current: Sequence[float], path: Path, title: str = ""
) -> Path:
    """Histograms of the student's confidence, reference vs current, on shared bins (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [*reference, *current]
    low = min(values, default=0.0)
    bins = [low + (1.0 - low) * i / 20 for i in range(21)] if low < 1.0 else 20
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    ax.hist(reference, bins=bins, alpha=0.55, density=True, label=f"reference ({len(reference)})")
    ax.hist(current, bins=bins, alpha=0.55, density=True, label=f"current ({len(current)})")
    ax.set_xlabel("student confidence")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title(title or "confidence")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
