"""Batch predictions: the registered model behind an alias labels one incoming batch, stored as a new
version of `predictions` that names the model version and the batch version it came from.

The registered model carries its own student prompt, so predicting needs nothing but the registry; the
alias is resolved to a version once, and that version (not the alias) is loaded, so a promotion in the
middle of a batch cannot mix two models in one predictions file. The version's files are read as data
(safetensors weights, JSON, tokenizer: `potstill.serving`): nothing from the artifact store is unpickled
or executed, so moving an alias or writing an artifact cannot run code in the pipeline.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.data.catalog import Catalog, CatalogError
from potstill.models import default_cache_dir
from potstill.serving import find_student_folder, predict_frame, unsafe_files
from potstill.training.generator import Student, load_student


@dataclass(frozen=True)
class ServedModel:
    """A registered model version resolved from an alias, with what predicting and lineage need."""

    name: str
    alias: str
    version: str
    run_id: str
    fields: list[str]  # the prompt fields the model reads (its signature's inputs)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def data_version(self, entry: str) -> str | None:
        """`v3` of a catalog entry the model was trained on, from its `lineage.data.<entry>` tag."""
        tag = self.tags.get(f"lineage.data.{entry}")
        return tag.split()[0] if tag else None


def resolve_model(model_name: str, alias: str) -> ServedModel:
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except mlflow.exceptions.MlflowException as exc:
        raise LookupError(f"no model version of {model_name!r} has alias {alias!r}: {exc.message}") from None
    signature = mlflow.models.get_model_info(f"models:/{model_name}/{mv.version}").signature
    inputs = signature.inputs if signature is not None else None
    fields = list(inputs.input_names()) if inputs is not None else ["text"]
    return ServedModel(model_name, alias, str(mv.version), mv.run_id or "", fields, dict(mv.tags or {}))


@functools.lru_cache(maxsize=4)
def _student(uri: str, tracking_uri: str) -> Student:
    """A version's student, loaded from its files (downloaded once into `<cache>/served/`, keyed by
    store and version): once per process per (store, version). A version holding a file that loading
    could unpickle or execute was not written by potstill and is refused."""
    from mlflow.artifacts import download_artifacts

    key = hashlib.sha256(f"{tracking_uri}|{uri}".encode()).hexdigest()[:16]
    dest = default_cache_dir() / "served" / key
    if not dest.exists():  # downloaded beside it, then renamed: a reader never sees half a version
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=dest.parent))
        try:
            download_artifacts(artifact_uri=uri, dst_path=str(tmp))
            os.replace(tmp, dest)
        except OSError:
            if not dest.exists():  # not another process that renamed first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    folder = find_student_folder(dest)
    unsafe = unsafe_files(folder)
    if unsafe:
        raise CatalogError(
            f"{uri} holds files potstill does not load (they could run code): {unsafe}; "
            "register students with potstill"
        )
    return load_student(folder)


def predict_rows(served: ServedModel, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """In the order of `rows`: a classifier's label, confidence and p_<label> (plain floats), or a
    generator's response, answer (None when nothing could be read) and confidence."""
    if not rows:
        return []
    missing = [f for f in served.fields if f not in rows[0]]
    if missing:
        raise CatalogError(f"rows lack the field(s) {missing} that {served.uri} reads")
    frame = pd.DataFrame([{f: r[f] for f in served.fields} for r in rows])
    out = predict_frame(_student(served.uri, mlflow.get_tracking_uri()), frame)
    return [{k: _plain(k, v) for k, v in rec.items()} for rec in out.to_dict(orient="records")]


def _plain(key: str, value: Any) -> Any:
    """JSON-ready values: texts stay text (a missing answer None), numbers become floats."""
    if key in TEXT_COLUMNS:
        return None if value is None or (isinstance(value, float) and value != value) else str(value)
    return float(value)


TEXT_COLUMNS = ("label", "response", "answer")


def batch_versions(catalog: Catalog, entry: str) -> list[str]:
    """Every stored batch (`v1`, `v2`, …), oldest first; `workspace` when the entry is not versioned."""
    if not catalog.is_versioned(entry):
        return ["workspace"] if catalog.exists(entry) else []
    return [r.name for r in catalog.versions.records(entry)]


def resolve_batch(catalog: Catalog, entry: str, batch: str | None) -> str:
    versions = batch_versions(catalog, entry)
    if not versions:
        raise CatalogError(f"{entry!r} has no batch yet: save one with catalog.save({entry!r}, rows)")
    if batch in (None, "latest"):
        return versions[-1]
    if batch not in versions:
        raise CatalogError(f"{entry!r} has no batch {batch!r}; known: {versions}")
    return batch


def _retry_unless_lookup(task: Any, task_run: Any, state: Any) -> bool:
    """A missing batch, alias or field will be missing on the retry too: fail at once."""
    try:
        state.result()
    except LookupError:
        return False
    except Exception:
        return True
    return True


@task(
    name="predict_batch",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_unless_lookup,
    cache_policy=NO_CACHE,
)
def predict_batch(
    catalog: Catalog,
    incoming: str,
    predictions: str,
    model_name: str,
    alias: str,
    batch: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Predict one batch (default: the latest) with the model behind `alias`; store the predictions.

    Returns the batch rows and predictions too, so the drift monitor reuses them instead of predicting
    twice."""
    version = resolve_batch(catalog, incoming, batch)
    rows = catalog.load(incoming, None if version == "workspace" else version)
    served = resolve_model(model_name, alias)
    preds = predict_rows(served, rows)
    out = [
        {
            "id": r.get("id", i),
            **p,
            "model_name": served.name,
            "model_version": served.version,
            "model_alias": alias,
            "batch_version": version,
        }
        for i, (r, p) in enumerate(zip(rows, preds, strict=True))
    ]
    saved = catalog.save(predictions, out, run_id=run_id)
    get_run_logger().info(
        "%s %s@%s predicted %d rows of %s %s -> %s %s",
        model_name,
        alias,
        served.version,
        len(out),
        incoming,
        version,
        predictions,
        saved.version or "(unversioned)",
    )
    return {
        "batch": version,
        "rows": rows,
        "predictions": out,
        "predictions_version": saved.version,
        "predictions_md5": saved.md5,
        "model": served,
    }
