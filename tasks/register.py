"""Step 7: log the student to MLflow (weights, tokenizer, student prompt) and register it with aliases."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.config import RunConfig
from potstill.data.tasks import RegistryTarget
from potstill.files import file_lock
from potstill.models import default_cache_dir
from potstill.operations.gate import (
    GateConfig,
    ModelScores,
    PromotionDecision,
    alias_plan,
    decide_promotion,
    rollback_plan,
)
from potstill.serving import input_fields, predict_frame
from potstill.training.generator import load_student
from tasks.tracking import log_json, resumed

# The MLflow model's code file (not imported here: importing it sets MLflow's model-from-code global). It
# imports only mlflow, pandas and the potstill package, so it loads wherever potstill is installed.
STUDENT_MODEL_CODE = Path(__file__).with_name("student_model.py")


def scores_from_metrics(metrics: dict[str, float], metric: str, prefix: str = "student_") -> ModelScores:
    """What the gate compares, from a run's metrics: the primary metric, per-label recall as slices,
    latency and size (absent ones stay None, which fails a check that needs them)."""
    slices = {
        f"label={k.removeprefix(prefix + 'recall_')}": v
        for k, v in metrics.items()
        if k.startswith(prefix + "recall_")
    }
    return ModelScores(
        metric=float(metrics[metric]) if metric in metrics else float("nan"),
        slices=slices,
        latency_ms=metrics.get(prefix + "latency_ms"),
        size_mb=metrics.get(prefix + "size_mb"),
    )


def gate_config(cfg: RunConfig, metric: str) -> GateConfig:
    return GateConfig(metric=metric, **cfg.promotion.model_dump())


def current_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def judge(
    client: MlflowClient,
    cfg: RunConfig,
    metrics: dict[str, float],
    champion: ModelVersion | None,
    metric: str,
) -> PromotionDecision:
    """The gate's decision for a candidate with these run metrics against the current champion."""
    champion_scores = None
    if champion is not None and champion.run_id:
        try:
            champion_run = client.get_run(champion.run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise RuntimeError(
                f"champion {champion.name} v{champion.version} was logged by run {champion.run_id}, which "
                f"the tracking store {client.tracking_uri} does not have (registry {client._registry_uri}); "
                "point MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI at the same server"
            ) from exc
        champion_scores = scores_from_metrics(champion_run.data.metrics, metric)
    teacher = metrics.get(metric.replace("student_", "teacher_", 1))
    scores = scores_from_metrics(metrics, metric)
    return decide_promotion(scores, champion_scores, teacher, gate_config(cfg, metric))


def apply_aliases(client: MlflowClient, model_name: str, plan: dict[str, str | None]) -> None:
    for alias, version in plan.items():
        if version is None:
            client.delete_registered_model_alias(model_name, alias)
        else:
            client.set_registered_model_alias(model_name, alias, version)


def record_decision(
    client: MlflowClient, model_name: str, version: str, decision: PromotionDecision, how: str
) -> None:
    """The decision lives on the model version itself, so the registry UI shows why it is (not) champion."""
    client.set_model_version_tag(model_name, version, "potstill.decision", "promoted" if decision.promote else
                                 "not promoted")  # fmt: skip
    client.set_model_version_tag(model_name, version, "potstill.decided_by", how)
    client.set_model_version_tag(model_name, version, "potstill.reasons", "; ".join(decision.reasons)[:5000])
    client.set_model_version_tag(
        model_name, version, "potstill.checks", json.dumps(decision.to_dict()["checks"], default=str)[:5000]
    )


# One registry step at a time: across processes and threads on this machine (a file lock), and across
# machines through the Prefect server's global concurrency limit when the runs share one.
REGISTRY_LOCK = "potstill-registry.lock"
REGISTRY_LIMIT = "potstill-registry"


@contextmanager
def registry_slot(name: str = REGISTRY_LOCK, limit: str = REGISTRY_LIMIT) -> Iterator[None]:
    """Hold the registry: reading the champion, judging and moving the aliases happen as one step, so a
    run that judged against a stale champion can never overwrite a stronger one.

    First an exclusive `flock` on a file in the cache (`potstill.files.file_lock`: the kernel frees it when
    its holder dies; a run still waiting after `POTSTILL_LOCK_TIMEOUT` fails naming the holder), then when
    `PREFECT_API_URL` names a Prefect server, a slot of the global concurrency limit `potstill-registry`
    (limit 1, created if missing), which serializes runs on different machines and shows in the Prefect UI.
    Without a server every run is on this machine and the file lock is enough."""
    with file_lock(default_cache_dir() / "locks" / name), prefect_limit_slot(limit):
        yield


@contextmanager
def prefect_limit_slot(limit: str, wait_s: float | None = None) -> Iterator[str | None]:
    """One slot of a Prefect global concurrency limit, held with a lease that a thread renews. Yields the
    lease id (None when no Prefect server is configured).

    Plain calls on Prefect's synchronous client rather than `prefect.concurrency.sync.concurrency`: the
    latter hands the acquisition to a service on a shared event-loop thread, whose answer never arrived in
    a long test session (the server had granted the slot). Waits at most `wait_s`
    (`POTSTILL_REGISTRY_WAIT_S`, default 600 s) and then fails naming the limit, instead of hanging."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        yield None
        return
    import httpx

    wait_s = float(os.environ.get("POTSTILL_REGISTRY_WAIT_S", "600")) if wait_s is None else wait_s
    lease_s = lease_seconds()
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(limit, 1)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[limit], slots=1, mode="concurrency", lease_duration=lease_s
                )
                break
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the Prefect concurrency limit {limit!r} stayed taken for {wait_s:.0f} s; a holder "
                        f"that died frees it within {lease_s:.0f} s on a server running its services "
                        f"(`prefect server start`). Inspect it with `prefect gcl inspect {limit}`"
                    ) from exc
                time.sleep(min(float(exc.response.headers.get("Retry-After", 1)), 2.0))
        lease_id = response.json()["lease_id"]
        stop = threading.Event()
        renewer = threading.Thread(target=_renew, args=(lease_id, lease_s, stop), daemon=True)
        renewer.start()
        try:
            yield lease_id
        finally:
            stop.set()
            renewer.join()
            client.release_concurrency_slots_with_lease(lease_id)


def lease_seconds() -> float:
    """How long a registry slot outlives a holder that stopped renewing it (`POTSTILL_REGISTRY_LEASE_S`,
    default and minimum 60 s, Prefect's floor): the holder renews every third of it, so it only lapses when
    the holder is gone."""
    lease_s = float(os.environ.get("POTSTILL_REGISTRY_LEASE_S", "60"))
    if lease_s < 60:
        raise ValueError(f"POTSTILL_REGISTRY_LEASE_S={lease_s:g}: Prefect accepts leases of 60 s or more")
    return lease_s


def _renew(lease_id: str, lease_s: float, stop: threading.Event) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not stop.wait(lease_s / 3):
            try:
                client.renew_concurrency_lease(lease_id, lease_s)
            except Exception as exc:  # the step goes on; the lease may lapse and let another run in
                logging.getLogger(__name__).warning("registry lease %s not renewed: %s", lease_id, exc)


def gate_in_turn(
    client: MlflowClient,
    cfg: RunConfig,
    target: RegistryTarget,
    version: str,
    metrics: dict[str, float],
) -> tuple[PromotionDecision, dict[str, str | None]]:
    """The gate for a registered `version` with these run metrics, inside the registry slot: the champion
    is read there (not before logging the model), judged against, and the aliases moved before the next
    run may look. Returns the decision and the alias plan applied."""
    model_name = target.model_name
    with registry_slot():
        champion = current_alias(client, model_name, "champion")
        decision = judge(client, cfg, metrics, champion, target.metric)
        plan = alias_plan(decision, version, str(champion.version) if champion else None)
        apply_aliases(client, model_name, plan)
        record_decision(client, model_name, version, decision, "gate")
    return decision, plan


@task(name="register_student", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_student(
    folder: Path,
    sample: list[dict[str, Any]],
    cfg: RunConfig,
    target: RegistryTarget,
    metrics: dict[str, float],
    run_id: str,
    lineage: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Log and register; every version is `challenger`, and `champion` when it passes the promotion gate
    (the champion it replaces keeps `previous`). The decision and lineage are model-version tags.

    Logging the model (the slow part) runs unlocked; the gate runs inside the registry lock and
    reads the champion there, so concurrent runs promote in turn, each against the latest champion."""
    client = MlflowClient()
    model_name, metric = target.model_name, target.metric
    clf = load_student(folder)
    fields = input_fields(clf)
    example = pd.DataFrame([{f: r[f] for f in fields} for r in sample[:3]])
    signature = infer_signature(example, predict_frame(clf, example))
    with resumed(run_id):
        info = mlflow.pyfunc.log_model(
            name="student",
            python_model=str(STUDENT_MODEL_CODE),  # models-from-code: no pickle in the version
            artifacts={"student": str(folder)},
            signature=signature,
            input_example=example,
            registered_model_name=model_name,
            pip_requirements=["potstill", "torch", "transformers", "pandas"],
        )
        mlflow.log_text(clf.prompt.text, f"prompts/{clf.prompt.name}.txt")
    version = str(info.registered_model_version)
    decision, plan = gate_in_turn(client, cfg, target, version, metrics)
    client.set_model_version_tag(model_name, version, "potstill.prompt", clf.prompt.name)
    if metric in metrics:
        client.set_model_version_tag(model_name, version, metric, f"{metrics[metric]:.6f}")
    for key, tag in (lineage or {}).items():
        client.set_model_version_tag(model_name, version, f"lineage.{key}", tag)
    aliases = [a for a, v in plan.items() if v == version]
    log_json(run_id, {"version": version, "aliases": aliases, **decision.to_dict()}, "registry/decision.json")
    get_run_logger().info(
        "registered %s version %s as %s: %s",
        model_name,
        version,
        "+".join(aliases),
        "; ".join(decision.reasons),
    )
    return {
        "model_name": model_name,
        "version": version,
        "aliases": aliases,
        "reasons": decision.reasons,
        "promoted": decision.promote,
    }


# ---- manual promotion and rollback (`potstill promote`): plain MLflow calls, no flow needed


def promote_version(
    cfg: RunConfig, target: RegistryTarget, version: str, force: bool = False
) -> tuple[PromotionDecision, bool]:
    """Judge `version` against the current champion with the same gate as a run; apply when it passes
    (or with force). Returns the decision and whether the aliases changed. Inside the registry slot, like a
    run's gate, so a run promoting at the same moment cannot interleave."""
    client = MlflowClient()
    name = target.model_name
    candidate = client.get_model_version(name, version)
    with registry_slot():
        champion = current_alias(client, name, "champion")
        if champion is not None and champion.version == candidate.version:
            raise ValueError(f"{name} version {version} is the champion already")
        metrics = dict(client.get_run(candidate.run_id).data.metrics)
        decision = judge(client, cfg, metrics, champion, target.metric)
        if not (decision.promote or force):
            return decision, False
        plan: dict[str, str | None] = {"champion": str(candidate.version)}
        if champion is not None:
            plan["previous"] = str(champion.version)
        apply_aliases(client, name, plan)
        how = "manual --force" if force else "manual"
        record_decision(client, name, str(candidate.version), decision, how)
    return decision, True


def rollback(target: RegistryTarget) -> dict[str, str | None]:
    """`previous` becomes `champion` again; the demoted version is tagged so the registry shows why."""
    client = MlflowClient()
    name = target.model_name
    with registry_slot():
        champion = current_alias(client, name, "champion")
        previous = current_alias(client, name, "previous")
        plan = rollback_plan(
            str(champion.version) if champion else None, str(previous.version) if previous else None
        )
        apply_aliases(client, name, plan)
        if champion is not None:
            client.set_model_version_tag(name, champion.version, "potstill.decision", "rolled back")
    return {"demoted": str(champion.version) if champion else None, "champion": plan["champion"]}
