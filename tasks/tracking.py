"""MLflow plumbing shared by the tasks: where the stores are, the parent run, safe logging.

Tasks may run in worker threads, and MLflow's active run is per thread, so nothing relies on an active
run: the parent run id travels with the flow and every call names it. `parent_run` is the one place a
flow's MLflow run is opened, tagged, given its config and closed (FINISHED, or FAILED on any error).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

# What the user exported, read before anything here calls `mlflow.set_tracking_uri`, which writes the
# same environment variable (so a second project in one process would otherwise inherit the first's).
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
_USER_REGISTRY_URI = os.environ.get("MLFLOW_REGISTRY_URI")


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` if the user set it, else a SQLite store in the project (`sqlite:////abs`)."""
    return _USER_TRACKING_URI or f"sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"


def configure(root: Path) -> MlflowClient:
    (root / "mlruns").mkdir(exist_ok=True)
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(_USER_REGISTRY_URI or uri)
    return MlflowClient()


def experiment_name(configured: str | None, task: str) -> str:
    """The run config's experiment, else one per task (`potstill-<task>`): a task's runs compare with
    each other, not with another task's."""
    return configured or f"potstill-{task}"


@dataclass(frozen=True)
class ParentRun:
    run_id: str
    experiment_id: str


@contextmanager
def parent_run(
    root: Path,
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, str] | None = None,
    config_yaml: str | None = None,
) -> Iterator[ParentRun]:
    """Create a flow's MLflow run with its tags (and params and resolved config when given), yield it, and
    end it FINISHED, or FAILED when the block raises (the error propagates)."""
    from mlflow.entities import Param

    client = configure(root)
    run = client.create_run(experiment_id(client, experiment, root), run_name=run_name, tags=tags)
    run_id = run.info.run_id
    if params:
        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
    if config_yaml is not None:
        client.log_text(run_id, config_yaml, "config/params.resolved.yaml")
    try:
        yield ParentRun(run_id, run.info.experiment_id)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def experiment_id(client: MlflowClient, name: str, root: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None if _USER_TRACKING_URI else (root / "mlruns" / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


@contextmanager
def resumed(run_id: str) -> Iterator[None]:
    """Make the parent run active in this thread for fluent calls (log_input, log_model), then release it."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    with mlflow.start_run(run_id=run_id):
        yield
    MlflowClient().update_run(run_id, status="RUNNING")


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    client = MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), step=step or 0)


def log_json(run_id: str, obj: Any, artifact_file: str) -> None:
    MlflowClient().log_text(run_id, json.dumps(obj, indent=2, default=str), artifact_file)


def log_file(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    MlflowClient().log_artifact(run_id, str(path), artifact_path)


def log_rows(run_id: str, rows: list[dict[str, Any]], artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        log_file(run_id, path, str(Path(artifact_file).parent) if "/" in artifact_file else None)
