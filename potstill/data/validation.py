"""Data validation: a Great Expectations suite per dataset role and kind, and a verdict for every row.

Each check is a GX expectation run on the whole batch with `result_format=COMPLETE` and the source row
number as `unexpected_index_column_names`, so GX itself says which rows failed; those rows are
quarantined with the expectation, column, value and a sentence a person can act on, and the rest go on.
Blocking checks describe the dataset, not a row (a missing column, a parse-failure rate over its bound,
evaluation ids inside a training set): when one fails the run must stop, whatever the row counts.

GX cannot look inside a dict or tell `True` from `1`, so three checks run on helper columns computed
in `potstill.data.expectations` (`__confidence`, `__distribution_sum`, `__parse_error`); results name the
source column. Values in the GX result are cut to 200 characters so a 1 MB row cannot bloat the report
or the Data Docs. The suite and the GX plumbing live in `potstill.data.expectations`, which imports GX on
first use: it adds seconds to any import.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from potstill.data.expectations import (
    LABELED_ROLES,
    ROW,
    TEACHER_ROLES,
    ValidationLimits,
    build_checks,
    exception_message,
    gx_context,
    is_null,
    required_columns,
    row_message,
    run_suite,
    shrink,
    text_fields,
)
from potstill.data.readers import Problem, ReadResult, short
from potstill.errors import UserError
from potstill.prompts import PromptTemplate

__all__ = [
    "LABELED_ROLES",
    "ROW",
    "TEACHER_ROLES",
    "ContinueDecision",
    "DataValidationError",
    "QuarantinedRow",
    "RowFailure",
    "ValidationLimits",
    "ValidationReport",
    "check_template",
    "decide_continue",
    "from_read_result",
    "render_data_docs",
    "required_columns",
    "save_quarantine",
    "text_fields",
    "validate_rows",
    "validate_training_set",
]


class DataValidationError(UserError, RuntimeError):
    """A dataset failed validation badly enough that the run must not go on."""


@dataclass(frozen=True)
class RowFailure:
    expectation: str  # GX expectation type, or "read" for a row the reader could not use
    column: str
    value: str  # truncated repr
    message: str


@dataclass(frozen=True)
class QuarantinedRow:
    row: int
    id: str | None
    failures: list[RowFailure]
    data: dict[str, Any] | str  # the row as read (raw text when it never parsed)

    @property
    def expectations(self) -> list[str]:
        return sorted({f.expectation for f in self.failures})

    def describe(self) -> str:
        what = "; ".join(f"{f.column}: {f.message}" for f in self.failures)
        return f"row {self.row}" + (f" (id {self.id})" if self.id is not None else "") + f": {what}"


@dataclass
class ValidationReport:
    name: str
    source: str
    role: str
    kind: str
    passed: bool
    valid_rows: list[dict[str, Any]]
    valid_row_numbers: list[int]
    quarantined: list[QuarantinedRow]
    expectation_results: list[dict[str, Any]]
    counts: dict[str, int]
    gx_result: Any = field(default=None, repr=False, compare=False)  # ExpectationSuiteValidationResult

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every quarantined row with its failures, its data cut short (the quarantine file
        holds it whole); valid rows are left out."""
        quarantined = [{**asdict(q), "data": short(q.data, 500)} for q in self.quarantined]
        keep = ("name", "source", "role", "kind", "passed", "counts", "expectation_results")
        return {**{k: getattr(self, k) for k in keep}, "quarantined": quarantined}


@dataclass(frozen=True)
class ContinueDecision:
    proceed: bool
    reasons: list[str]


def validate_rows(
    rows: Sequence[dict[str, Any]],
    role: str,
    kind: str,
    labels: Sequence[str],
    *,
    row_numbers: Sequence[int] | None = None,
    limits: ValidationLimits | None = None,
    name: str = "dataset",
    source: str | None = None,
    rejected: Sequence[QuarantinedRow] = (),
    forbidden_ids: Iterable[Any] | None = None,
    forbidden_source: str = "the evaluation set",
) -> ValidationReport:
    """Run the suite for `role`/`kind`; `rejected` (rows the reader set aside) join the quarantine.

    source: the file, for messages. forbidden_ids: ids that must not appear (blocking).
    """
    import pandas as pd

    numbers = list(row_numbers) if row_numbers is not None else list(range(1, len(rows) + 1))
    if len(numbers) != len(rows) or len(set(numbers)) != len(numbers):
        raise ValueError(f"row_numbers must be unique, one per row ({len(numbers)} for {len(rows)} rows)")
    frame = pd.DataFrame(list(rows), dtype=object)  # object: GX checks types per value, not per column
    frame.insert(0, ROW, numbers)
    checks = build_checks(
        frame, role, kind, labels, limits or ValidationLimits(), forbidden_ids, forbidden_source
    )
    result = run_suite(frame, f"{name}-{role}-{kind}", checks)
    position = {n: i for i, n in enumerate(numbers)}
    failures: dict[int, list[RowFailure]] = {}
    summary = []
    for res in result.results:
        cfg = res.expectation_config
        check = checks[cfg.meta["check"]]
        flagged = [position[d[ROW]] for d in res.result.get("unexpected_index_list") or []]
        if cfg.type == "expect_column_to_exist" and not res.success:
            flagged = list(range(len(rows)))  # table-level, so GX gives no indices: every row lacks it
        counted = len(flagged)
        if check.rate_only:  # the rows stay; only the rate decides (blocking)
            flagged = []
        for i in flagged:
            value = rows[i].get(check.column, "<absent>")
            message = row_message(cfg.type, check.expects, check.column, value)
            if cfg.type == "expect_column_values_to_be_unique":
                same = [str(numbers[j]) for j in flagged if j != i and rows[j].get("id") == value]
                message += f" again (also in rows {', '.join(same[:5])})"
            failures.setdefault(i, []).append(RowFailure(cfg.type, check.column, short(value), message))
        summary.append(
            {
                "check": cfg.meta["check"],
                "expectation_type": cfg.type,
                "column": check.column,
                "gx_column": cfg.kwargs.get("column"),
                "expects": check.expects,
                "blocking": check.blocking,
                "success": bool(res.success),
                "unexpected_count": int(res.result.get("unexpected_count") or counted),
                "element_count": int(res.result.get("element_count") or len(rows)),
                "exception": exception_message(res.exception_info),
            }
        )
    shrink(result)
    quarantined = [*rejected]
    quarantined += [
        QuarantinedRow(numbers[i], _id(rows[i]), f, dict(rows[i])) for i, f in sorted(failures.items())
    ]
    keep = [i for i in range(len(rows)) if i not in failures]
    counts = {
        "rows": len(rows) + len(rejected),
        "valid": len(keep),
        "quarantined": len(quarantined),
        "rejected_on_read": len(rejected),
        "expectations": len(summary),
        "failed_expectations": sum(not r["success"] for r in summary),
    }
    return ValidationReport(
        name=name,
        source=source or name,
        role=role,
        kind=kind,
        passed=bool(result.success) and not rejected,
        valid_rows=[rows[i] for i in keep],
        valid_row_numbers=[numbers[i] for i in keep],
        quarantined=quarantined,
        expectation_results=sorted(summary, key=lambda r: r["check"]),
        counts=counts,
        gx_result=result,
    )


def validate_training_set(
    train_rows: Sequence[dict[str, Any]],
    eval_rows: Sequence[dict[str, Any]],
    kind: str,
    labels: Sequence[str],
    *,
    eval_name: str = "the evaluation set",
    **kwargs: Any,
) -> ValidationReport:
    """The training-set suite plus a blocking check that no id of the evaluation set appears in it:
    a shared id means gold rows leaked into training and every evaluation number would be inflated."""
    eval_ids = {r.get("id") for r in eval_rows if isinstance(r.get("id"), str | int)}
    kwargs.setdefault("name", "train_set")
    return validate_rows(
        train_rows, "training_set", kind, labels, forbidden_ids=eval_ids, forbidden_source=eval_name, **kwargs
    )


def decide_continue(report: ValidationReport, min_valid_fraction: float) -> ContinueDecision:
    """Go on with the valid rows unless a blocking check failed, GX could not run a check, or fewer than
    `min_valid_fraction` of the rows are valid. Pure: the task raises, this only explains."""
    where, total, valid = report.source, report.counts["rows"], report.counts["valid"]
    reasons = [f"{where}: no rows"] if total == 0 else []
    for r in report.expectation_results:
        if r["exception"]:
            reasons.append(f"{where}: GX could not check {r['expects']}: {r['exception']}")
        elif r["blocking"] and not r["success"]:
            counted = f"{r['unexpected_count']} of {r['element_count']} rows"
            reasons.append(f"{where}: failed {r['check']} (expects {r['expects']}): {counted}")
    fraction = valid / total if total else 0.0
    if total and fraction < min_valid_fraction:
        reasons.append(
            f"{where}: only {valid} of {total} rows valid ({fraction:.1%} < {min_valid_fraction:.1%})"
        )
    if reasons:
        if report.quarantined:
            reasons.append(
                f"{where}: first failing rows: " + "; ".join(q.describe() for q in report.quarantined[:5])
            )
        return ContinueDecision(False, reasons)
    note = f"{where}: {valid} of {total} rows valid ({fraction:.1%} >= {min_valid_fraction:.1%})"
    return ContinueDecision(True, [f"{note}, {len(report.quarantined)} quarantined"])


def from_read_result(read: ReadResult) -> list[QuarantinedRow]:
    """The reader's rejected rows and file-level problems (row 0) as quarantine entries."""
    by_row: dict[int, list[Problem]] = {}
    for p in read.problems:
        by_row.setdefault(p.row, []).append(p)
    raw: dict[int, Any] = {r.row: r.raw for r in read.rejected}
    return [
        QuarantinedRow(
            row,
            _id(raw.get(row)),
            [RowFailure("read", p.field, p.value, p.reason) for p in ps],
            raw.get(row, ""),
        )
        for row, ps in sorted(by_row.items())
    ]


def check_template(template: PromptTemplate, columns: Sequence[str]) -> list[Problem]:
    """Problems rendering this template for a dataset with these columns (empty: it fits)."""
    name, text = template.name, short(template.text)
    try:
        fields = template.fields
    except ValueError as exc:  # unbalanced braces
        return [Problem(name, 0, "<template>", text, f"not a valid template: {exc}")]
    if not fields:
        return [Problem(name, 0, "<template>", text, "no {field} placeholder for the row")]
    lacks = f"which the dataset lacks (columns: {sorted(columns)})"
    return [
        Problem(name, 0, f, short("{" + f + "}"), f"prompt {name!r} uses field {f!r}, {lacks}")
        for f in dict.fromkeys(fields)
        if f not in columns
    ]


def save_quarantine(path: Path, rows: Sequence[QuarantinedRow]) -> Path:
    """Write quarantined rows, whole, to `path` (the catalog's `quarantine_path`) atomically; an empty
    file when there are none, so a stale quarantine from an earlier run never lingers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(asdict(q), ensure_ascii=False, default=str) + "\n" for q in rows)
    os.replace(tmp, path)
    return path


def render_data_docs(report: ValidationReport, folder: Path) -> Path:
    """Build a GX Data Docs site for the report's validation result in `folder`; returns its index.html.

    A fresh ephemeral context holds the stored result in memory; only the site goes to disk."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    folder = Path(folder).resolve()
    context = gx_context()
    # The suite name becomes folders of the site, split at dots: hence dashes.
    suite_id = ExpectationSuiteIdentifier(name=f"{report.name}-{report.role}-{report.kind}")
    run = RunIdentifier(run_name=report.name, run_time=dt.datetime.now(dt.UTC))
    key = ValidationResultIdentifier(suite_id, run, batch_identifier=report.name)
    context.validation_results_store.store_validation_results(report.gx_result, key)
    site = {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(folder)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    context.add_data_docs_site("potstill", site)
    context.build_data_docs(site_names=["potstill"])
    index = folder / "index.html"
    if not index.is_file():
        raise RuntimeError(f"GX built no Data Docs index in {folder}")
    return index


def _id(row: Any) -> str | None:
    value = row.get("id") if isinstance(row, dict) else None
    return None if is_null(value) else str(value)
