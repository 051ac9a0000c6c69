"""The Great Expectations side of validation: the suite for a dataset's role and kind, and running it.

Kept apart from `potstill.data.validation` (verdicts, reports, quarantine) so the GX plumbing sits in one
place: which expectations apply, the helper columns GX needs, the in-memory context, and turning a GX
result into short messages. GX is imported inside the functions that use it, never at module level: the
import costs seconds, and importing this module (or `potstill.data.validation`) should not.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from potstill.data.readers import short

ROW = "__row"  # the source row number, handed to GX as the index column
LABELED_ROLES = {"gold_eval", "teacher_labels", "training_set", "review_queue"}
TEACHER_ROLES = {"teacher_labels", "review_queue"}


@dataclass(frozen=True)
class ValidationLimits:
    max_text_chars: int = 4000
    max_parse_failure_rate: float = 0.05
    distribution_tolerance: float = 1e-3


@dataclass(frozen=True)
class Check:
    expectation: Any  # a GX Expectation
    column: str  # the source column (a helper column reports the one it derives from)
    expects: str  # what it requires of a row, in words: "expected <expects>, got <the row's value>"
    blocking: bool = False
    # A bound on the dataset, not a rule for a row: the rows it counts stay (a parse failure is routed to
    # review, never quarantined); when the bound is broken, the check blocks the run.
    rate_only: bool = False


def text_fields(kind: str | None) -> tuple[str, ...]:
    """Where a kind keeps its input text (its `Kind.text_fields`); a dataset without a kind: `text`."""
    from potstill.kinds import get_kind

    return get_kind(kind).text_fields if kind else ("text",)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def required_columns(role: str, kind: str | None, labels: Sequence[str]) -> list[str]:
    cols = ["id", *text_fields(kind)]
    cols += ["label"] if role in LABELED_ROLES else []
    cols += (["confidence", "distribution"] if labels else ["confidence"]) if role in TEACHER_ROLES else []
    return cols


def build_checks(
    frame: Any,
    role: str,
    kind: str,
    labels: Sequence[str],
    limits: ValidationLimits,
    forbidden_ids: Iterable[Any] | None,
    forbidden: str,
) -> dict[str, Check]:
    """The suite, keyed `<column>.<rule>`; adds the helper columns it needs to `frame`."""
    import great_expectations.expectations as gxe
    import pandas as pd

    checks: dict[str, Check] = {}

    def add(key: str, exp: Any, expects: str, blocking: bool = False, rate_only: bool = False) -> None:
        exp.meta = {"check": key}  # how a result finds its check: GX returns results in its own order
        checks[key] = Check(exp, key.split(".")[0], expects, blocking, rate_only)

    present, top, tol = set(frame.columns), limits.max_text_chars, limits.distribution_tolerance
    teacher = role in TEACHER_ROLES
    for c in required_columns(role, kind, labels):
        add(f"{c}.exists", gxe.ExpectColumnToExist(column=c), f"a column {c!r}", blocking=True)
        if c in present and teacher and c in ("label", "distribution") and "parse_error" in present:
            # A row the teacher's output could not be read for has no label by design: it stays (routing
            # sends it to review) and the parse_error rate check below bounds how many there are.
            flags = [v is True for v in frame["parse_error"]]
            given = [_present(v) or f for v, f in zip(frame[c], flags, strict=True)]
            frame[f"__{c}_given"] = pd.Series(given, dtype=object)
            exp = gxe.ExpectColumnValuesToBeInSet(column=f"__{c}_given", value_set=[True])
            add(f"{c}.not_null", exp, "a value (or a parse_error flag)")
        elif c in present:
            add(f"{c}.not_null", gxe.ExpectColumnValuesToNotBeNull(column=c), "a value")
    if "id" in present:
        t = _dominant_type(frame["id"])
        add(
            "id.type",
            gxe.ExpectColumnValuesToBeInTypeList(column="id", type_list=[t]),
            f"{t} like the other ids",
        )
        add("id.unique", gxe.ExpectColumnValuesToBeUnique(column="id"), "a unique id")
        if forbidden_ids is not None:
            ids = sorted(forbidden_ids, key=str)
            exp = gxe.ExpectColumnValuesToNotBeInSet(column="id", value_set=ids)
            add("id.not_in_eval", exp, f"an id not in {forbidden}", blocking=True)
    for c in (c for c in text_fields(kind) if c in present):
        add(f"{c}.type", gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=["str"]), "a string")
        exp = gxe.ExpectColumnValueLengthsToBeBetween(column=c, min_value=1, max_value=top)
        add(f"{c}.length", exp, f"1 to {top} characters")
    if role in LABELED_ROLES and labels and "label" in present:
        exp = gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels))
        add("label.in_set", exp, f"one of {list(labels)}")
    if teacher and "confidence" in present:
        frame["__confidence"] = [_number(v) for v in frame["confidence"]]
        exp = gxe.ExpectColumnValuesToBeBetween(column="__confidence", min_value=0.0, max_value=1.0)
        add("confidence.range", exp, "a number in [0, 1]")
    if teacher and labels and "distribution" in present:
        frame["__distribution_sum"] = [_distribution_sum(v) for v in frame["distribution"]]
        exp = gxe.ExpectColumnValuesToBeBetween(
            column="__distribution_sum", min_value=1 - tol, max_value=1 + tol
        )
        add("distribution.sum", exp, f"probabilities summing to 1 ± {tol:g}")
    if teacher and "parse_error" in present:
        bound = limits.max_parse_failure_rate
        # A missing flag means parsed; GX would leave nulls out of the rate's denominator instead.
        frame["__parse_error"] = pd.Series([v is True for v in frame["parse_error"]], dtype=object)
        exp = gxe.ExpectColumnValuesToBeInSet(column="__parse_error", value_set=[False], mostly=1 - bound)
        expects = f"a parsed teacher output (at most {bound:.1%} unparsed)"
        add("parse_error.rate", exp, expects, blocking=True, rate_only=True)
    return checks


def run_suite(frame: Any, suite_name: str, checks: dict[str, Check]) -> Any:
    import great_expectations as gx

    context = gx_context()
    source = context.data_sources.add_pandas("rows")
    batch_def = source.add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all rows")
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for check in checks.values():
        suite.add_expectation(check.expectation)
    batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
    fmt = {"result_format": "COMPLETE", "unexpected_index_column_names": [ROW]}
    return batch.validate(suite, result_format=fmt)


def gx_context() -> Any:
    """A fresh in-memory GX context, without the progress bar it prints per validation by default."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def row_message(expectation: str, expects: str, column: str, v: Any) -> str:
    """`expected <what the check requires>, got <what this row has>`; safe for a value of any type."""
    if expectation == "expect_column_to_exist":
        got = "no such column"
    elif expectation == "expect_column_values_to_not_be_null":
        got = "nothing"
    elif column == "distribution":
        total = _distribution_sum(v)
        got = f"a sum of {total:.4f}" if total is not None and not math.isinf(total) else short(v)
    elif expectation.endswith("in_type_list") or not isinstance(v, str):
        got = f"{type(v).__name__} {short(v)}"
    elif expectation.endswith("lengths_to_be_between"):
        got = f"{len(v)} characters"
    else:
        got = short(v)
    return f"expected {expects}, got {got}"


def exception_message(info: Any) -> str | None:
    """GX reports an error either flat or keyed by metric id; the first message, if any."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    nested = [v for v in info.values() if isinstance(v, dict) and v.get("exception_message")]
    return str(nested[0]["exception_message"]).splitlines()[0] if nested else None


def shrink(result: Any) -> None:
    """Cut long strings in the GX result (the lists of unexpected values) to 200 characters, in place."""

    def cut(v: Any) -> Any:
        if isinstance(v, str):
            return v if len(v) <= 200 else v[:197] + "..."
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        return [cut(x) for x in v] if isinstance(v, list) else v

    for res in result.results:
        res.result.update({k: cut(x) for k, x in res.result.items()})


def is_null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _dominant_type(column: Any) -> str:
    """str or int, whichever most ids are (str on a tie): the minority is what gets reported."""
    kinds = Counter(type(v).__name__ for v in column if not is_null(v))
    return "int" if kinds["int"] > kinds["str"] else "str"


def _number(v: Any) -> float | None:
    """The value as a float; None for null (the not-null check reports it, so not twice) and -1 for
    anything that is not a number, bools included, so the range check flags it."""
    if is_null(v):
        return None
    return -1.0 if isinstance(v, bool) or not isinstance(v, int | float) else float(v)


def _distribution_sum(v: Any) -> float | None:
    """Sum of the label probabilities; inf for anything but a non-empty dict of probabilities in [0, 1]
    (NaN and infinities included), so it fails."""
    if is_null(v):
        return None
    ok = (
        isinstance(v, dict)
        and v
        and all(isinstance(p, int | float) and not isinstance(p, bool) and 0 <= p <= 1 for p in v.values())
    )  # `0 <= p <= 1` is False for NaN: a NaN sum would compare as inside the range and pass
    return float(sum(v.values())) if ok else math.inf
