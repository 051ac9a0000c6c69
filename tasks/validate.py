"""Validate a dataset before a step uses it: quarantine the bad rows, record everything, stop if needed.

The quarantine file, the report (`validation/<name>.json`) and the Data Docs site
(`validation/<name>_docs/index.html`) are written before the task decides, so a stopped run leaves
behind exactly what a person needs to see why.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.data.catalog import Catalog
from potstill.data.validation import (
    DataValidationError,
    QuarantinedRow,
    ValidationLimits,
    decide_continue,
    render_data_docs,
    save_quarantine,
    validate_rows,
    validate_training_set,
)
from tasks.tracking import log_json, log_metrics


@dataclass(frozen=True)
class Validated:
    rows: list[dict[str, Any]]
    row_numbers: list[int]
    summary: dict[str, Any]


@task(name="validate_dataset", retries=0, cache_policy=NO_CACHE)
def validate_dataset(
    catalog: Catalog,
    name: str,
    rows: list[dict[str, Any]],
    run_id: str,
    limits: ValidationLimits,
    min_valid_fraction: float,
    row_numbers: list[int] | None = None,
    rejected: Sequence[QuarantinedRow] = (),
    eval_rows: list[dict[str, Any]] | None = None,
    eval_name: str = "the evaluation set",
) -> Validated:
    """Run the catalog entry's suite (its role, kind and labels) on rows; raise DataValidationError when
    the decision is to stop. rejected: rows the reader set aside (`from_read_result`), quarantined too.
    eval_rows: for a training set, the evaluation rows whose ids must not appear in it."""
    logger = get_run_logger()
    entry = catalog.dataset(name)
    common: dict[str, Any] = {
        "row_numbers": row_numbers,
        "limits": limits,
        "name": name,
        "source": str(catalog.file(name)),
        "rejected": rejected,
    }
    if eval_rows is None:
        report = validate_rows(rows, entry.role, entry.kind, entry.labels, **common)
    else:
        report = validate_training_set(
            rows, eval_rows, entry.kind, entry.labels, eval_name=eval_name, **common
        )
    decision = decide_continue(report, min_valid_fraction)
    quarantine = save_quarantine(catalog.quarantine_path(name), report.quarantined)
    log_metrics(
        run_id,
        {
            f"validation_{name}_passed": int(report.passed),
            f"validation_{name}_valid_rows": report.counts["valid"],
            f"validation_{name}_quarantined_rows": report.counts["quarantined"],
        },
    )
    log_json(
        run_id,
        {**report.to_dict(), "decision": asdict(decision), "quarantine_file": str(quarantine)},
        f"validation/{name}.json",
    )
    docs = f"validation/{name}_docs"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            render_data_docs(report, Path(tmp))
            MlflowClient().log_artifacts(run_id, tmp, docs)
    except Exception as exc:  # the report and the quarantine are the record; the HTML is a convenience
        logger.warning("could not build Data Docs for %s: %s", name, exc)
        docs = ""
    summary = {
        "name": name,
        "passed": report.passed,
        "proceed": decision.proceed,
        "reasons": decision.reasons,
        "rows": report.counts["rows"],
        "valid_rows": report.counts["valid"],
        "quarantined_rows": report.counts["quarantined"],
        "failed_checks": [r["check"] for r in report.expectation_results if not r["success"]],
        "quarantine_file": str(quarantine),
        "data_docs": f"{docs}/index.html" if docs else None,
    }
    last = catalog.validation_record_path(name)  # for `potstill catalog show`
    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_text(json.dumps({**summary, "run_id": run_id}, indent=2))
    if not decision.proceed:
        reasons = list(decision.reasons)
        if entry.task and "label.in_set" in summary["failed_checks"] and entry.role == "gold_eval":
            reasons.append(
                f"the file's label values are not the task's labels {entry.labels}: map them with "
                f"`label_map:` in catalog/tasks/{entry.task}.yaml (or --label-map VALUE=LABEL,... with "
                "`potstill task new`)"
            )
        logger.error("validation of %s stopped the run:\n%s", name, "\n".join(reasons))
        raise DataValidationError("\n".join(reasons))
    logger.info("validation of %s: %s", name, decision.reasons[0])
    return Validated(report.valid_rows, report.valid_row_numbers, summary)
