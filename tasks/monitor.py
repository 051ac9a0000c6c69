"""Drift monitor steps: the reference window, the drift report, its MLflow record, the monitor state and
the retrain trigger. Thin: the statistics live in potstill.operations.drift, the decisions in
potstill.operations.monitoring.

The trigger is its own task so that the decision (pure, logged) and the side effect (a deployment run,
a subflow, or nothing) can be told apart in the Prefect UI and retried separately.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from potstill.config import MonitorConfig
from potstill.data.catalog import Catalog, CatalogError
from potstill.kinds import get_kind
from potstill.operations.drift import Disagreement, DriftReport, DriftSample, drift_report
from potstill.operations.monitoring import (
    RetrainDecision,
    answer_length_bucket,
    drift_config,
    empty_state,
    input_text,
    length_bucket_names,
    plot_confidence,
    plot_label_shares,
    seeded_sample,
)
from tasks.predict import ServedModel, predict_rows
from tasks.tracking import log_json, log_metrics

AgreeFn = Callable[[Sequence[str | None], Sequence[str | None]], float]
# What a generative model's prediction drift compares, in place of label shares.
ANSWER_LENGTHS = "answer-length buckets (words per generated answer)"


@dataclass(frozen=True)
class Window:
    """Rows the model saw and what it predicted on them; `teacher` holds the teacher's labels of the first
    `len(teacher)` rows (its sample), for teacher–student disagreement."""

    rows: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    teacher: list[str | None] | None = None

    @property
    def generative(self) -> bool:
        """A generative model's predictions: response, answer and confidence instead of a label."""
        return bool(self.predictions) and "label" not in self.predictions[0]

    @property
    def labels(self) -> list[str]:
        """The categories prediction drift compares: a classifier's labels; for a generative model, which
        length bucket each answer falls in (its answers are texts, too many to count)."""
        if self.generative:
            return [answer_length_bucket(p.get("response")) for p in self.predictions]
        return [p["label"] for p in self.predictions]

    @property
    def answers(self) -> list[str | None]:
        """What the model answered per row (a label, or what a generative kind read out of the text)."""
        return [p["label"] if "label" in p else p.get("answer") for p in self.predictions]

    @property
    def confidences(self) -> list[float]:
        return [float(p["confidence"]) for p in self.predictions]

    def disagreement(self, agree: AgreeFn | None = None) -> Disagreement | None:
        """Rows of the teacher's sample where the model answered otherwise. Without `agree`, answers are
        compared as labels (equal or not); with a kind's agreement (math's same number, multiple choice's
        same option, ROUGE-L for free text) a row disagrees when its agreement is below one half: two
        unreadable answers do not agree, and a reworded text is not a disagreement."""
        if not self.teacher:
            return None
        answers = self.answers[: len(self.teacher)]
        if agree is None:
            return Disagreement.from_labels(self.teacher, answers)
        pairs = zip(self.teacher, answers, strict=True)
        return Disagreement(sum(agree([t], [a]) < 0.5 for t, a in pairs), len(self.teacher))


def _reference_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same model run, same train_set content, same size and seed: same window (the predictions too)."""
    served: ServedModel = parameters["served"]
    payload = [
        served.run_id,
        served.tags.get("lineage.data.train_set"),
        parameters["n"],
        parameters["seed"],
        served.fields,
        str(parameters["catalog"].root),
        parameters["catalog"].scope,
    ]
    return "monitor-reference-" + hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


@task(name="reference_window", cache_key_fn=_reference_key, persist_result=True, retries=1)
def reference_window(catalog: Catalog, served: ServedModel, n: int, seed: int) -> Window:
    """A seeded sample of the training set the served model was trained on (the version its lineage tag
    names), with the model's own predictions on it: what "no drift" looks like for this model."""
    version = served.data_version("train_set")
    if version is None:
        raise CatalogError(
            f"{served.uri} has no lineage.data.train_set tag: cannot tell which training data to compare to"
        )
    rows = seeded_sample(catalog.load("train_set", version=version), n, seed)
    return Window(rows, predict_rows(served, rows))


def teacher_sample(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first n rows of a window (windows are already seeded samples or whole batches): what the
    teacher labels. Only prompt fields and the id go to the teacher, never a stored label."""
    return [
        {k: v for k, v in r.items() if k not in ("label", "confidence", "distribution")} for r in rows[:n]
    ]


@task(name="measure_drift", cache_policy=NO_CACHE)
def measure_drift(
    reference: Window, current: Window, fields: list[str], cfg: MonitorConfig, kind: str | None = None
) -> DriftReport:
    """Embed both windows (sentence embeddings of the prompt fields) and run the enabled drift checks.
    `kind`: the task's kind, whose agreement rule (when it has one) decides teacher–student disagreement;
    a generative model's prediction drift compares answer-length buckets instead of label shares."""
    from potstill.operations.embeddings import embed  # loads torch + the embedding model: only when measuring

    checks = set(cfg.checks)
    needs_embeddings = bool(checks & {"mmd", "domain_classifier"})
    agree = get_kind(kind).agree if kind else None

    def sample(window: Window) -> DriftSample:
        emb = embed([input_text(r, fields) for r in window.rows]) if needs_embeddings else None
        categories = ANSWER_LENGTHS if window.generative else "predicted labels"
        return DriftSample(window.labels, window.confidences, emb, window.disagreement(agree), categories)

    dcfg = drift_config(
        cfg.checks,
        cfg.mmd_alpha,
        cfg.chi2_alpha,
        cfg.ks_alpha,
        cfg.psi_threshold,
        cfg.max_disagreement_increase,
        cfg.n_permutations,
        cfg.seed,
        cfg.correction,
    )
    report = drift_report(sample(reference), sample(current), dcfg)
    logger = get_run_logger()
    for reason in report.reasons:
        logger.info("drift check: %s", reason)
    for skipped in report.skipped:
        logger.warning("drift check skipped: %s", skipped)
    return report


@task(name="log_drift", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_drift(
    run_id: str, report: DriftReport, decision: RetrainDecision, reference: Window, current: Window
) -> dict[str, float]:
    """Metrics per check, the verdict, the report and decision JSON, and the two comparison plots."""
    metrics: dict[str, float] = {"drift_detected": float(report.drifted), "retrain_triggered": 0.0}
    metrics["retrain_triggered"] = float(decision.trigger)
    for c in report.checks:
        metrics[f"drift_{c.name}_statistic"] = c.statistic
        metrics[f"drift_{c.name}_threshold"] = c.threshold
        metrics[f"drift_{c.name}_drifted"] = float(c.drifted)
        if c.p_value is not None:
            metrics[f"drift_{c.name}_p_value"] = c.p_value
    metrics["reference_rows"], metrics["current_rows"] = len(reference.rows), len(current.rows)
    log_metrics(run_id, metrics)
    log_json(run_id, report.to_dict(), "drift/report.json")
    log_json(run_id, decision.to_dict(), "drift/decision.json")
    client = MlflowClient()
    generative = reference.generative or current.generative
    title, order = (ANSWER_LENGTHS, length_bucket_names()) if generative else ("", None)
    with tempfile.TemporaryDirectory() as tmp:
        labels = plot_label_shares(
            reference.labels, current.labels, Path(tmp) / "label_shares.png", title, order
        )
        conf = plot_confidence(reference.confidences, current.confidences, Path(tmp) / "confidence.png")
        for path in (labels, conf):
            client.log_artifact(run_id, str(path), "plots")
    return metrics


def retrain_deployment(task: str) -> str:
    """The deployment the drift monitor of `task` starts (flows/deployments.py names it)."""
    return f"retrain/{task}-retrain-on-drift"


@task(name="trigger_retrain", retries=0, cache_policy=NO_CACHE)
def trigger_retrain(
    decision: RetrainDecision, mode: str, batch: str, project: str, deployment: str
) -> dict[str, Any]:
    """The side effect of a retrain decision: start the task's retrain deployment (without waiting:
    timeout=0), or only log (`none`). `inline` runs the retrain flow as a subflow, which the monitor
    flow does itself: a task never imports a flow."""
    logger = get_run_logger()
    if not decision.trigger:
        logger.info("no retrain: %s", "; ".join(decision.reasons))
        return {"triggered": False, "mode": mode}
    if mode == "deployment":
        from prefect.deployments import run_deployment

        flow_run = run_deployment(name=deployment, parameters={"batch": batch, "project": project}, timeout=0)
        logger.info("retrain triggered: deployment %s, flow run %s", deployment, flow_run.id)
        return {"triggered": True, "mode": mode, "flow_run_id": str(flow_run.id), "deployment": deployment}
    logger.info("retrain decided but trigger is `%s`: %s", mode, "; ".join(decision.reasons))
    return {"triggered": True, "mode": mode}


def load_state(catalog: Catalog, name: str = "monitor_state") -> dict[str, Any]:
    return catalog.load_json(name) if catalog.exists(name) else empty_state()


@task(name="save_monitor_state", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def save_state(catalog: Catalog, state: dict[str, Any], name: str = "monitor_state") -> None:
    """Written after each batch, so a crash part-way leaves finished batches marked and the rest new."""
    catalog.save_json(name, state)


def now_utc() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)
