"""MLflow plumbing shared by the tasks: where the stores are, the parent run, safe logging.

Tasks may run in worker threads, and MLflow's active run is per thread, so nothing relies on an active
run: the parent run id travels with the flow and every call names it. `parent_run` is the one place a
flow's MLflow run is opened, tagged, given its config and closed (FINISHED, or FAILED on any error).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from potstill.config import RunConfig
from potstill.files import file_lock
from potstill.models import REGISTRY_PREFIX, ModelSourceError, default_cache_dir, parse_registered

# What the user exported, read before anything here calls `mlflow.set_tracking_uri`, which writes the
# same environment variable (so a second project in one process would otherwise inherit the first's).
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
_USER_REGISTRY_URI = os.environ.get("MLFLOW_REGISTRY_URI")


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` if the user set it, else a SQLite store in the project (`sqlite:////abs`)."""
    return _USER_TRACKING_URI or f"sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"


def configure(root: Path) -> MlflowClient:
    """Point MLflow at the project's stores. A new SQLite store is created (its schema migrated) under a
    file lock: two runs starting at once on a fresh project would otherwise both migrate it, and one fails
    with "table ... already exists"."""
    (root / "mlruns").mkdir(exist_ok=True)
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(_USER_REGISTRY_URI or uri)
    if uri.startswith("sqlite:") and _uri_key(uri) not in _READY:
        with file_lock(root / "mlruns" / ".store.lock"):
            client = MlflowClient()  # creating the client creates (and migrates) the tracking store
            client.search_registered_models(max_results=1)  # and the registry (the same database)
        _READY.add(_uri_key(uri))
        return client
    return MlflowClient()


_READY: set[str] = set()  # SQLite stores this process has seen created


def _uri_key(uri: str) -> str:
    return f"{uri}|{mlflow.get_registry_uri()}"


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
    exp_id = experiment_id(client, experiment, root)
    end_dead_runs(client, exp_id)
    run = client.create_run(exp_id, run_name=run_name, tags={**tags, **process_tags()})
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


def process_tags() -> dict[str, str]:
    """Which process owns a run: host, PID and the PID's start time (a reused PID is another process)."""
    import psutil

    me = psutil.Process()
    return {
        "potstill.host": socket.gethostname(),
        "potstill.pid": str(me.pid),
        "potstill.pid_start": f"{me.create_time():.2f}",
    }


def end_dead_runs(client: MlflowClient, exp_id: str) -> list[str]:
    """End as KILLED the runs of this experiment left RUNNING by a process of this host that is gone (a
    SIGKILL or a crash ends no run: MLflow would show it running forever). Runs of other hosts, and runs
    whose process lives, are left alone. Returns the ids ended."""
    import psutil

    host = socket.gethostname()
    found = client.search_runs(
        [exp_id], filter_string=f"attributes.status = 'RUNNING' and tags.`potstill.host` = '{host}'"
    )
    ended = []
    for run in found:
        pid, start = run.data.tags.get("potstill.pid"), run.data.tags.get("potstill.pid_start")
        if pid is None or start is None:
            continue
        try:
            alive = f"{psutil.Process(int(pid)).create_time():.2f}" == start
        except (psutil.Error, ValueError):
            alive = False
        if alive:
            continue
        client.set_tag(run.info.run_id, "potstill.ended", f"killed: process {pid} on {host} is gone")
        client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    if ended:
        run_logger().warning(
            "ended %d run(s) left RUNNING by a process that is gone, as KILLED: %s",
            len(ended),
            ", ".join(ended),
        )
    return ended


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


def run_logger(name: str = "potstill") -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task, else the plain logger `name` (benchmarks, tests)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)


# ---- registered models as teacher or student sources (`teacher.model: models:/<name>@<alias>`)


def registered_model_folder(spec: str, cache_dir: Path | None = None) -> Path:
    """The files of a model version registered in MLflow (the tracking/registry URI in effect, e.g. the
    project's store once `tasks.tracking.configure` ran), downloaded once into `<cache>/registry/`.

    The version must hold a plain transformers folder (config.json at its root), as
    `benchmarks/tuned_teacher.register_teacher` logs it. The cache key includes the version's source URI,
    so version 1 of two different stores never share a folder."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_registered(spec)
    client = MlflowClient()
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
    except MlflowException as exc:
        raise ModelSourceError(
            f"{spec}: not in the model registry at {client._registry_uri}: {exc}"
        ) from None
    key = hashlib.sha256(f"{mv.source}|{mv.run_id}".encode()).hexdigest()[:12]
    folder = (cache_dir or default_cache_dir()) / "registry" / f"{name}-v{mv.version}-{key}"
    if (folder / "config.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    local = Path(download_artifacts(artifact_uri=mv.source, dst_path=str(tmp)))
    if not (local / "config.json").exists():
        raise ModelSourceError(f"{spec}: version {mv.version} ({mv.source}) holds no transformers folder")
    shutil.rmtree(folder, ignore_errors=True)
    local.rename(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_registered(cfg: RunConfig) -> RunConfig:
    """The run config with `models:/...` teacher and student sources replaced by their downloaded folders
    (the library loads paths only); everything else as it was."""
    update: dict[str, Any] = {}
    if cfg.teacher.model.startswith(REGISTRY_PREFIX):
        update["teacher"] = cfg.teacher.model_copy(
            update={"model": str(registered_model_folder(cfg.teacher.model))}
        )
    if cfg.student.model.startswith(REGISTRY_PREFIX):
        update["student"] = cfg.student.model_copy(
            update={"model": str(registered_model_folder(cfg.student.model))}
        )
    return cfg.model_copy(update=update) if update else cfg
