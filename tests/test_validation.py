"""Great Expectations suites per role: exact quarantine contents, the continue decision, Data Docs and
the Prefect task against a real SQLite MLflow store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.logging import disable_run_logger

from potstill.data.catalog import Catalog
from potstill.data.readers import Problem, read_rows
from potstill.data.validation import (
    DataValidationError,
    QuarantinedRow,
    RowFailure,
    ValidationLimits,
    check_template,
    decide_continue,
    from_read_result,
    render_data_docs,
    save_quarantine,
    validate_rows,
    validate_training_set,
)
from potstill.prompts import PromptTemplate
from tasks.validate import validate_dataset

LABELS = ["negative", "positive"]
IN_SET = "expect_column_values_to_be_in_set"


def gold(n: int = 6) -> list[dict[str, Any]]:
    return [{"id": f"g{i}", "text": f"sentence {i}", "label": LABELS[i % 2]} for i in range(n)]


def teacher(n: int = 20) -> list[dict[str, Any]]:
    return [
        {
            "id": f"t{i}",
            "text": f"prompt {i}",
            "label": "positive",
            "confidence": 0.8,
            "distribution": {"negative": 0.2, "positive": 0.8},
            "parse_error": False,
        }
        for i in range(n)
    ]


def failures(report) -> dict[int, list[tuple[str, str, str, str]]]:
    return {
        q.row: [(f.expectation, f.column, f.value, f.message) for f in q.failures] for q in report.quarantined
    }


@pytest.mark.parametrize(
    ("role", "rows"),
    [
        ("prompts", [{"id": "p1", "text": "a"}, {"id": "p2", "text": "b"}]),
        ("gold_eval", gold()),
        ("teacher_labels", teacher()),
    ],
)
def test_good_data_passes(role: str, rows: list[dict[str, Any]]):
    report = validate_rows(rows, role, "classification", LABELS)
    assert report.passed and report.quarantined == []
    assert report.valid_rows == rows and report.valid_row_numbers == list(range(1, len(rows) + 1))
    assert all(r["success"] for r in report.expectation_results)
    assert decide_continue(report, 1.0).proceed


def test_label_outside_the_set_is_quarantined():
    rows = gold()
    rows[2]["label"] = "neutral"
    report = validate_rows(rows, "gold_eval", "classification", LABELS, row_numbers=[10, 11, 12, 13, 14, 15])
    assert not report.passed
    assert failures(report) == {
        12: [(IN_SET, "label", "'neutral'", "expected one of ['negative', 'positive'], got 'neutral'")]
    }
    assert report.quarantined[0].id == "g2" and report.quarantined[0].data == rows[2]
    assert report.valid_row_numbers == [10, 11, 13, 14, 15]


def test_duplicate_ids_quarantine_every_copy():
    rows = gold()
    rows[4]["id"] = "g1"
    report = validate_rows(rows, "gold_eval", "classification", LABELS)
    unique = "expect_column_values_to_be_unique"
    assert failures(report) == {
        2: [(unique, "id", "'g1'", "expected a unique id, got 'g1' again (also in rows 5)")],
        5: [(unique, "id", "'g1'", "expected a unique id, got 'g1' again (also in rows 2)")],
    }


def test_a_1mb_text_row_is_quarantined_by_the_length_bound_quickly():
    rows = [{"id": "p1", "text": "ok"}, {"id": "p2", "text": "x" * 1_000_000}]
    start = time.perf_counter()
    report = validate_rows(
        rows, "prompts", "classification", [], limits=ValidationLimits(max_text_chars=4000)
    )
    assert time.perf_counter() - start < 30
    [(expectation, column, value, message)] = failures(report)[2]
    assert (expectation, column) == ("expect_column_value_lengths_to_be_between", "text")
    assert message == "expected 1 to 4000 characters, got 1000000 characters"
    assert len(value) == 200
    assert len(json.dumps(report.to_dict())) < 10_000  # the value is cut everywhere it is reported
    assert report.quarantined[0].data["text"] == rows[1]["text"]  # but kept whole for the quarantine file


def test_empty_text_and_nulls_are_quarantined():
    rows = [{"id": "p1", "text": ""}, {"id": None, "text": None}, {"id": "p3", "text": "fine"}]
    report = validate_rows(rows, "prompts", "classification", [])
    assert failures(report)[1] == [
        (
            "expect_column_value_lengths_to_be_between",
            "text",
            "''",
            "expected 1 to 4000 characters, got 0 characters",
        )
    ]
    assert sorted(m for *_, m in failures(report)[2]) == ["expected a value, got nothing"] * 2
    assert report.valid_row_numbers == [3]


def test_mixed_types_in_a_column_fail_per_row():
    rows = [
        {"id": "p1", "text": "a"},
        {"id": 2, "text": "b"},
        {"id": "p3", "text": ["a", "list"]},
        {"id": "p4", "text": "d"},
    ]
    report = validate_rows(rows, "incoming", "classification", [])
    in_types = "expect_column_values_to_be_in_type_list"
    assert failures(report)[2] == [(in_types, "id", "2", "expected str like the other ids, got int 2")]
    assert (in_types, "text", "['a', 'list']", "expected a string, got list ['a', 'list']") in failures(
        report
    )[3]
    assert report.valid_row_numbers == [1, 4]


def test_ids_may_all_be_ints():
    rows = [{"id": i, "text": "t"} for i in range(3)]
    assert validate_rows(rows, "prompts", "classification", []).passed


def test_missing_column_blocks_and_names_the_field():
    rows = [{"id": "g1", "text": "a"}, {"id": "g2", "text": "b"}]
    report = validate_rows(rows, "gold_eval", "classification", LABELS, source="catalog/data/gold.jsonl")
    exists = [r for r in report.expectation_results if r["check"] == "label.exists"]
    assert exists[0]["success"] is False and exists[0]["blocking"] is True
    assert failures(report)[1] == [
        ("expect_column_to_exist", "label", "'<absent>'", "expected a column 'label', got no such column")
    ]
    decision = decide_continue(report, 0.0)
    assert not decision.proceed
    assert (
        decision.reasons[0]
        == "catalog/data/gold.jsonl: failed label.exists (expects a column 'label'): 2 of 2 rows"
    )


def test_teacher_distribution_not_summing_to_one_and_confidence_over_one():
    rows = teacher()
    rows[3]["distribution"] = {"negative": 0.5, "positive": 0.4}
    rows[5]["confidence"] = 1.2
    rows[7]["distribution"] = {"negative": "a lot"}
    rows[8]["confidence"] = "high"
    report = validate_rows(rows, "teacher_labels", "classification", LABELS)
    between = "expect_column_values_to_be_between"
    tol = "expected probabilities summing to 1 ± 0.001"
    assert failures(report) == {
        4: [(between, "distribution", "{'negative': 0.5, 'positive': 0.4}", f"{tol}, got a sum of 0.9000")],
        6: [(between, "confidence", "1.2", "expected a number in [0, 1], got float 1.2")],
        8: [(between, "distribution", "{'negative': 'a lot'}", f"{tol}, got {{'negative': 'a lot'}}")],
        9: [(between, "confidence", "'high'", "expected a number in [0, 1], got 'high'")],
    }
    by_check = {r["check"]: r for r in report.expectation_results}
    assert by_check["distribution.sum"]["gx_column"] == "__distribution_sum"
    assert decide_continue(report, 0.8).proceed  # row problems: quarantine them and go on


def test_parse_failure_rate_over_the_bound_fails_the_suite():
    rows = teacher(20)
    for i in (1, 2, 3):
        rows[i]["parse_error"] = True
    report = validate_rows(rows, "teacher_labels", "classification", LABELS, name="teacher_labels")
    rate = next(r for r in report.expectation_results if r["check"] == "parse_error.rate")
    assert rate["success"] is False and rate["unexpected_count"] == 3
    assert not report.passed
    assert not failures(report)  # the rows stay (review takes them); the broken bound stops the run
    decision = decide_continue(report, 0.5)  # every row valid, but a blocking check failed
    assert not decision.proceed
    assert decision.reasons[0] == (
        "teacher_labels: failed parse_error.rate (expects a parsed teacher output (at most 5.0% unparsed)): "
        "3 of 20 rows"
    )


def test_parse_failures_within_the_bound_pass_and_those_rows_stay_for_review():
    """A row the teacher's output could not be read for has no label and no distribution by design: it
    is not quarantined (routing always sends it to review), only the failure rate is bounded."""
    rows = teacher(20)
    rows[0].update(parse_error=True, label=None, distribution=None, confidence=0.0)
    report = validate_rows(rows, "teacher_labels", "classification", LABELS)
    assert next(r for r in report.expectation_results if r["check"] == "parse_error.rate")["success"]
    assert not failures(report) and len(report.valid_rows) == 20
    rows[1]["label"] = None  # a parsed row without a label is still a broken row
    report = validate_rows(rows, "teacher_labels", "classification", LABELS)
    assert list(failures(report)) == [2]
    assert decide_continue(report, 0.9).proceed


def test_id_overlap_between_train_and_gold_is_detected():
    train = [{"id": f"t{i}", "text": "x", "label": "positive"} for i in range(4)] + [gold()[3]]
    report = validate_training_set(train, gold(), "classification", LABELS, eval_name="polarity_gold")
    assert failures(report) == {
        5: [
            (
                "expect_column_values_to_not_be_in_set",
                "id",
                "'g3'",
                "expected an id not in polarity_gold, got 'g3'",
            )
        ]
    }
    decision = decide_continue(report, 0.5)
    assert not decision.proceed
    assert "failed id.not_in_eval" in decision.reasons[0]
    assert decision.reasons[-1] == (
        "train_set: first failing rows: row 5 (id g3): id: expected an id not in polarity_gold, got 'g3'"
    )


def test_decide_continue_both_ways_on_the_valid_fraction():
    rows = gold(10)
    rows[0]["label"] = "maybe"
    rows[1]["text"] = ""
    report = validate_rows(rows, "gold_eval", "classification", LABELS, source="gold.jsonl")
    go = decide_continue(report, 0.8)
    assert go == type(go)(True, ["gold.jsonl: 8 of 10 rows valid (80.0% >= 80.0%), 2 quarantined"])
    stop = decide_continue(report, 0.9)
    assert not stop.proceed
    assert stop.reasons == [
        "gold.jsonl: only 8 of 10 rows valid (80.0% < 90.0%)",
        "gold.jsonl: first failing rows: row 1 (id g0): label: expected one of ['negative', 'positive'], "
        "got 'maybe'; row 2 (id g1): text: expected 1 to 4000 characters, got 0 characters",
    ]


def test_no_rows_never_proceeds():
    report = validate_rows([], "prompts", "classification", [], source="empty.jsonl")
    decision = decide_continue(report, 0.0)
    assert not decision.proceed and decision.reasons[0] == "empty.jsonl: no rows"


def test_reader_rejects_join_the_quarantine(tmp_path: Path):
    path = tmp_path / "gold.jsonl"
    path.write_bytes(b'{"id": "g1", "text": "a", "label": "positive"}\n{"id": "g2", "text": "b"\n')
    read = read_rows(path, "jsonl", ["id", "text", "label"])
    rejected = from_read_result(read)
    report = validate_rows(
        read.rows, "gold_eval", "classification", LABELS, row_numbers=read.row_numbers, rejected=rejected
    )
    assert not report.passed
    assert (
        report.counts["rows"] == 2 and report.counts["valid"] == 1 and report.counts["rejected_on_read"] == 1
    )
    [q] = report.quarantined
    assert (q.row, q.id, q.data) == (2, None, '{"id": "g2", "text": "b"')
    assert q.failures[0].expectation == "read" and q.failures[0].column == "<row>"


def test_template_referencing_a_missing_field():
    template = PromptTemplate("teacher_nli", "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:")
    assert check_template(template, ["id", "premise", "label"]) == [
        Problem(
            "teacher_nli",
            0,
            "hypothesis",
            "'{hypothesis}'",
            "prompt 'teacher_nli' uses field 'hypothesis', which the dataset lacks "
            "(columns: ['id', 'label', 'premise'])",
        )
    ]
    assert check_template(template, ["id", "premise", "hypothesis"]) == []
    assert check_template(PromptTemplate("bad", "Review: {text"), ["text"])[0].reason.startswith(
        "not a valid template"
    )


def test_data_docs_html_is_produced(tmp_path: Path):
    rows = gold()
    rows[0]["label"] = "neutral"
    report = validate_rows(rows, "gold_eval", "classification", LABELS, name="polarity_gold")
    index = render_data_docs(report, tmp_path / "docs")
    assert index == (tmp_path / "docs" / "index.html").resolve()
    assert "<html" in index.read_text().lower()
    [page] = (tmp_path / "docs" / "validations").rglob("*.html")
    assert (
        page.relative_to(tmp_path / "docs" / "validations").parts[0]
        == "polarity_gold-gold_eval-classification"
    )
    html = page.read_text()
    assert "values must belong to this set" in html and "neutral" in html  # the failed check, the bad value
    assert "polarity_gold-gold_eval-classification" in index.read_text()


def test_save_quarantine_writes_each_row_with_its_failures(tmp_path: Path):
    row = QuarantinedRow(
        3, "g3", [RowFailure(IN_SET, "label", "'x'", "expected one of [...], got 'x'")], {"id": "g3"}
    )
    target = tmp_path / "catalog" / "data" / "polarity" / "quarantine" / "gold.jsonl"
    path = save_quarantine(target, [row])
    assert path == target
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {
            "row": 3,
            "id": "g3",
            "failures": [
                {
                    "expectation": IN_SET,
                    "column": "label",
                    "value": "'x'",
                    "message": "expected one of [...], got 'x'",
                }
            ],
            "data": {"id": "g3"},
        }
    ]
    assert save_quarantine(target, []).read_text() == ""


@pytest.fixture(scope="module")
def mlflow_experiment(tmp_path_factory: pytest.TempPathFactory):
    """One SQLite store for the module: creating one runs MLflow's migrations (seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = MlflowClient()
    yield client, client.create_experiment("validation", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_tracking_uri(None)


@pytest.fixture
def mlflow_run(mlflow_experiment):
    client, experiment_id = mlflow_experiment
    mlflow.set_tracking_uri(client.tracking_uri)
    return client, client.create_run(experiment_id).info.run_id


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def test_task_logs_metrics_report_docs_and_quarantine(project: Path, mlflow_run):
    client, run_id = mlflow_run
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    rows = gold(10)
    rows[4]["label"] = "neutral"
    with disable_run_logger():
        out = validate_dataset.fn(catalog, "gold", rows, run_id, ValidationLimits(), 0.8)
    assert len(out.rows) == 9 and out.row_numbers == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert out.summary["proceed"] and out.summary["failed_checks"] == ["label.in_set"]
    assert (out.summary["rows"], out.summary["valid_rows"], out.summary["quarantined_rows"]) == (10, 9, 1)
    assert out.summary["data_docs"] == "validation/gold_docs/index.html"
    metrics = client.get_run(run_id).data.metrics
    assert metrics["validation_gold_passed"] == 0
    assert metrics["validation_gold_valid_rows"] == 9
    assert metrics["validation_gold_quarantined_rows"] == 1
    paths = artifact_paths(client, run_id)
    assert "validation/gold.json" in paths
    assert "validation/gold_docs/index.html" in paths
    report = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="validation/gold.json")
        ).read_text()
    )
    assert report["quarantined"][0]["row"] == 5 and report["decision"]["proceed"] is True
    [line] = (
        (project / "catalog" / "data" / "polarity" / "quarantine" / "gold.jsonl").read_text().splitlines()
    )
    saved = json.loads(line)
    assert saved["failures"][0]["message"] == "expected one of ['negative', 'positive'], got 'neutral'"
    assert saved["data"] == rows[4]


def test_task_raises_with_the_decision_when_it_must_stop(project: Path, mlflow_run):
    client, run_id = mlflow_run
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    rows = gold(4)
    rows[0]["label"] = rows[1]["label"] = "neutral"
    with (
        disable_run_logger(),
        pytest.raises(DataValidationError, match=r"only 2 of 4 rows valid \(50.0% < 90.0%\)") as exc,
    ):
        validate_dataset.fn(catalog, "gold", rows, run_id, ValidationLimits(), 0.9)
    assert "gold.jsonl: first failing rows: row 1 (id g0): label" in str(exc.value)
    assert client.get_run(run_id).data.metrics["validation_gold_valid_rows"] == 2
    assert (project / "catalog" / "data" / "polarity" / "quarantine" / "gold.jsonl").exists()


def test_task_stops_a_training_set_that_shares_ids_with_gold(project: Path, mlflow_run):
    _, run_id = mlflow_run
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    train = [{"id": f"t{i}", "text": "x", "label": "positive"} for i in range(9)] + [gold()[0]]
    with disable_run_logger(), pytest.raises(DataValidationError, match=r"failed id\.not_in_eval") as exc:
        validate_dataset.fn(
            catalog,
            "train_set",
            train,
            run_id,
            ValidationLimits(),
            0.5,
            eval_rows=gold(),
            eval_name="gold",
        )
    assert "row 10 (id g0): id: expected an id not in gold, got 'g0'" in str(exc.value)


def test_a_nan_or_negative_probability_in_the_distribution_is_quarantined():
    """NaN compares false with both bounds, so a sum check alone let a NaN distribution through."""
    rows = teacher()
    rows[2]["distribution"] = {"negative": float("nan"), "positive": 0.8}
    rows[4]["distribution"] = {"negative": -0.5, "positive": 1.5}  # sums to 1, yet not probabilities
    rows[6]["distribution"] = {"negative": float("inf"), "positive": 0.0}
    report = validate_rows(rows, "teacher_labels", "classification", LABELS)
    found = failures(report)
    assert sorted(found) == [3, 5, 7]
    assert all(f[0][1] == "distribution" for f in found.values())
