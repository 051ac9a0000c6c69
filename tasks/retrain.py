"""Retrain steps: read an incoming batch, fetch the champion, build the next train_set, score a slice.

Thin: the merge rule lives in `potstill.operations.retrain`, metrics in `potstill.metrics`; these tasks read
and write catalog entries and MLflow.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.data.catalog import Catalog, CatalogError
from potstill.kinds import get_kind
from potstill.operations.retrain import (
    continuation_rows,
    merge_train_sets,
    train_set_version,
)
from potstill.serving import find_student_folder, unsafe_files
from tasks.evaluate import student_score
from tasks.tracking import log_json, log_metrics, resumed


class NoChampionError(LookupError):
    """Retraining continues from the champion; without one there is nothing to continue."""


@task(name="load_batch", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_batch(catalog: Catalog, name: str, batch: str | None, run_id: str) -> dict[str, Any]:
    """Rows of one version of the incoming entry (default: the latest; the workspace file is versioned
    first when it changed by hand), recorded as an MLflow input of the run."""
    if not catalog.is_versioned(name):
        rows, version = catalog.load(name), "unversioned"
        batch = "workspace"
    else:
        if batch is None:
            if catalog.exists(name) and catalog.current_version(name) is None:
                catalog.version_workspace(name, run_id)  # a batch dropped in by hand becomes a version
            latest = catalog.versions.latest(name)
            if latest is None:
                raise CatalogError(f"{catalog.full_name(name)}: no batch yet ({catalog.file(name)})")
            batch = latest.name
        record = catalog.versions.get(name, batch)
        rows, batch, version = catalog.load(name, record.name), record.name, f"{record.name} md5:{record.md5}"
    with resumed(run_id), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        ds = mlflow.data.from_pandas(
            pd.DataFrame(rows), source=str(catalog.file(name)), name=catalog.full_name(name)
        )
        mlflow.log_input(ds, context="retraining", tags={"catalog.version": version, "rows": str(len(rows))})
    get_run_logger().info("%s@%s: %d rows", name, batch, len(rows))
    return {"rows": rows, "batch": batch, "version": version}


@task(name="fetch_champion", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def fetch_champion(model_name: str, dest: Path, run_id: str) -> dict[str, Any]:
    """Download the champion's registered pyfunc and return its student folder, version and the
    train_set version it was trained on (its `lineage.data.train_set` tag)."""
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(model_name, "champion")
    except mlflow.exceptions.MlflowException as exc:
        raise NoChampionError(
            f"{model_name} has no champion to retrain: run the distill flow first (potstill run)"
        ) from exc
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    uri = f"models:/{model_name}@champion"
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest))
    folder = find_student_folder(Path(local))
    unsafe = unsafe_files(folder)
    if unsafe:  # a version potstill did not write: its files could run code once loaded
        raise CatalogError(f"{uri} (version {mv.version}) holds files potstill does not load: {unsafe}")
    lineage = mv.tags.get("lineage.data.train_set")
    init_from = f"{uri} version {mv.version}"
    client.log_param(run_id, "retrain.init_from", init_from)
    client.set_tag(run_id, "potstill.init_from", init_from)
    get_run_logger().info("continuing from %s (trained on train_set %s)", init_from, lineage or "unknown")
    return {
        "folder": folder,
        "version": str(mv.version),
        "init_from": init_from,
        "train_set": train_set_version(lineage),
        "run_id": mv.run_id,
    }


@task(name="merge_train_set", cache_policy=NO_CACHE)
def merge_train_set(
    catalog: Catalog,
    previous_version: str | None,
    new_rows: list[dict[str, Any]],
    fields: list[str],
    mode: str,
    replay_rows: int | None,
    seed: int,
    run_id: str,
) -> dict[str, Any]:
    """Next train_set = the champion's train_set version + the new accepted rows, de-duplicated; and the
    rows the continuation trains on. `previous_version` None (a champion without lineage): new rows only."""
    previous = catalog.load("train_set", previous_version) if previous_version else []
    merged = merge_train_sets(previous, new_rows, fields)
    train = continuation_rows(merged, mode, replay_rows, seed)
    counts = {
        "retrain_rows_previous": merged.previous,
        "retrain_rows_new": merged.new,
        "retrain_rows_replaced": merged.replaced,
        "retrain_rows_duplicates": merged.duplicates,
        "retrain_rows_merged": len(merged.rows),
        "retrain_rows_trained_on": len(train),
    }
    log_metrics(run_id, counts)
    get_run_logger().info(
        "next train_set: %d previous (train_set %s) + %d new = %d rows (%d superseded, %d duplicates); "
        "training on %d (%s)",
        merged.previous,
        previous_version or "none",
        merged.new,
        len(merged.rows),
        merged.replaced,
        merged.duplicates,
        len(train),
        mode,
    )
    return {"rows": merged.rows, "train_rows": train, "counts": counts}


@task(name="evaluate_slice", cache_policy=NO_CACHE)
def evaluate_slice(
    rows: list[dict[str, Any]],
    labels: list[str],
    before: dict[str, Any],
    after: dict[str, Any],
    run_id: str,
    prefix: str = "new_slice_",
    kind: str = "classification",
) -> dict[str, float]:
    """The kind's scores (accuracy, macro-F1 and per-label recall for a classifier; exact match, ROUGE-L,
    ... for a generative kind) of the champion (`before`) and the retrained student (`after`) on rows with
    a gold label, e.g. `new_slice_before_accuracy` / `new_slice_after_accuracy`."""
    y = [r["label"] for r in rows]
    out: dict[str, float] = {f"{prefix}rows": float(len(rows))}
    score = student_score(kind)
    for name, res in (("before", before), ("after", after)):
        out |= {f"{prefix}{name}_{k}": v for k, v in score(y, res["pred"], labels).items()}
    log_metrics(run_id, out)
    predictions = [
        {"id": r["id"], "gold": g, "before": b, "after": a}
        for r, g, b, a in zip(rows, y, before["pred"], after["pred"], strict=True)
    ]
    for name, res in (("before", before), ("after", after)):  # a generative model's texts too
        if "responses" in res:
            for row, text in zip(predictions, res["responses"], strict=True):
                row[f"{name}_response"] = text
    log_json(run_id, predictions, f"eval/{prefix.rstrip('_')}_predictions.json")
    headline = get_kind(kind).headline.removeprefix("student_")
    get_run_logger().info(
        "%s%d rows: %s %.3f before, %.3f after",
        prefix,
        len(rows),
        headline,
        out.get(f"{prefix}before_{headline}", float("nan")),
        out.get(f"{prefix}after_{headline}", float("nan")),
    )
    return out
