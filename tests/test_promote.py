"""Manual promotion and rollback against a real SQLite MLflow registry: the same gate as a run, the
decision recorded on the model version, aliases champion/challenger/previous moved as promised."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from potstill.cli import main
from potstill.config import validate
from potstill.data.tasks import RegistryTarget
from tasks.register import judge, promote_version, rollback
from tasks.tracking import configure

NAME = "polarity-student"  # the demo task's registered model
TARGET = RegistryTarget(NAME, "student_accuracy", "potstill-polarity")


def _version(client: MlflowClient, accuracy: float, recall_neg: float, latency: float = 50.0) -> str:
    exp = client.get_experiment_by_name("potstill") or client.get_experiment(
        client.create_experiment("potstill")
    )
    run = client.create_run(exp.experiment_id)
    for key, value in {
        "student_accuracy": accuracy,
        "teacher_accuracy": 0.8,
        "student_recall_negative": recall_neg,
        "student_recall_positive": accuracy,
        "student_latency_ms": latency,
        "student_size_mb": 300.0,
    }.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    if client.search_registered_models(f"name='{NAME}'") == []:
        client.create_registered_model(NAME)
    return str(client.create_model_version(NAME, f"runs:/{run.info.run_id}/student", run.info.run_id).version)


@pytest.fixture
def registry(project: Path) -> tuple[Path, MlflowClient]:
    return project, configure(project)


def test_gate_refuses_then_force_then_rollback(registry) -> None:
    project, client = registry
    v1 = _version(client, 0.70, 0.70)
    client.set_registered_model_alias(NAME, "champion", v1)
    v2 = _version(client, 0.72, 0.50)  # better overall, but the negative slice drops by 0.2
    cfg = validate({"promotion": {"min_improvement": 0.01, "max_slice_regression": 0.05}})

    decision, applied = promote_version(cfg, TARGET, v2)
    assert not applied and not decision.promote
    assert any("label=negative" in r for r in decision.reasons)
    assert client.get_model_version_by_alias(NAME, "champion").version == int(
        v1
    )  # a refused gate changes nothing

    assert main(["--project", str(project), "promote", v2, "-o", "promotion.max_slice_regression=0.05"]) == 1
    assert main(["--project", str(project), "promote", v2, "--force",
                 "-o", "promotion.max_slice_regression=0.05"]) == 0  # fmt: skip
    assert client.get_model_version_by_alias(NAME, "champion").version == int(v2)
    assert client.get_model_version_by_alias(NAME, "previous").version == int(v1)
    tags = client.get_model_version(NAME, v2).tags
    assert tags["potstill.decided_by"] == "manual --force" and "label=negative" in tags["potstill.reasons"]

    assert main(["--project", str(project), "promote", "--rollback"]) == 0
    assert client.get_model_version_by_alias(NAME, "champion").version == int(v1)
    assert client.get_model_version(NAME, v2).tags["potstill.decision"] == "rolled back"
    assert main(["--project", str(project), "promote", "--rollback"]) == 2  # no previous left: clear error


def test_gate_passes_and_budget_fails(registry) -> None:
    _, client = registry
    v1 = _version(client, 0.70, 0.70)
    client.set_registered_model_alias(NAME, "champion", v1)
    v2 = _version(client, 0.75, 0.71, latency=500.0)
    cfg = validate({"promotion": {"min_improvement": 0.01, "max_latency_ms": 100}})
    metrics = dict(client.get_run(client.get_model_version(NAME, v2).run_id).data.metrics)
    decision = judge(
        client, cfg, metrics, client.get_model_version_by_alias(NAME, "champion"), "student_accuracy"
    )
    assert not decision.promote and [c.name for c in decision.failed] == ["latency"]
    ok, applied = promote_version(validate({"promotion": {"min_improvement": 0.01}}), TARGET, v2)
    assert ok.promote and applied
    assert client.get_model_version_by_alias(NAME, "champion").version == int(v2)
    rollback(TARGET)
    assert client.get_model_version_by_alias(NAME, "champion").version == int(v1)


def test_champion_whose_run_is_in_another_tracking_store_is_a_clear_error(registry, tmp_path: Path) -> None:
    """Registry and tracking on different stores (a leaked MLFLOW_REGISTRY_URI, say): the gate cannot
    read the champion's metrics and says which stores it looked in, instead of a bare 'run not found'."""
    _, client = registry
    client.set_registered_model_alias(NAME, "champion", _version(client, 0.70, 0.70))
    elsewhere = MlflowClient(
        tracking_uri=f"sqlite:///{tmp_path / 'other.db'}", registry_uri=client._registry_uri
    )
    champion = elsewhere.get_model_version_by_alias(NAME, "champion")
    with pytest.raises(RuntimeError, match=f"run {champion.run_id}.*other.db.*MLFLOW_REGISTRY_URI"):
        judge(elsewhere, validate({}), {"student_accuracy": 0.9}, champion, "student_accuracy")


def test_manual_promote_and_rollback_wait_for_the_registry_slot(registry) -> None:
    """A run's gate holds the registry slot: `potstill promote` and `--rollback` wait for it rather than
    moving aliases between the run's read of the champion and its write."""
    import threading
    import time

    from tasks.register import registry_slot

    _, client = registry
    v1 = _version(client, 0.70, 0.70)
    client.set_registered_model_alias(NAME, "champion", v1)
    v2 = _version(client, 0.80, 0.80)
    cfg = validate({"promotion": {"min_improvement": 0.01}})
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with registry_slot():
            held.set()
            release.wait(timeout=30)

    for step in (lambda: promote_version(cfg, TARGET, v2), lambda: rollback(TARGET)):
        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(timeout=30)
        threading.Timer(1.0, release.set).start()
        start = time.monotonic()
        step()
        assert time.monotonic() - start >= 0.9  # it waited for the holder
        holder.join()
        held.clear()
        release.clear()
    assert client.get_model_version_by_alias(NAME, "champion").version == int(v1)  # promoted, rolled back
