"""Pure review merging and the review building blocks that need no server."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from potstill.review import (
    KINDS,
    Outbox,
    ReviewProjectSpec,
    build_task,
    build_tasks,
    label_config,
    parse_annotation,
    write_import_file,
)
from potstill.review.merge import HumanAnnotation, merge_reviews, resolve_row, review_stats

LABELS = ("negative", "positive")


def ann(row: str, who: str, answer: str | None, **kw) -> HumanAnnotation:
    return HumanAnnotation(row_id=row, annotator=who, answer=answer, **kw)


def test_majority_wins_and_disagreement_is_flagged() -> None:
    r = resolve_row([ann("a", "1", "neg"), ann("a", "2", "neg"), ann("a", "3", "pos")], "pos")
    assert (r.status, r.label, r.disagreement, r.votes, r.annotators) == (
        "corrected",
        "neg",
        True,
        {"neg": 2, "pos": 1},
        3,
    )


def test_unanimous_agreement_with_the_teacher() -> None:
    r = resolve_row([ann("a", "1", "pos"), ann("a", "2", " pos ")], "pos")
    assert (r.status, r.label, r.disagreement, r.rule) == ("agreed", "pos", False, "unanimous")


@pytest.mark.parametrize(
    ("rule", "status", "label"),
    [("hold", "held_back", None), ("teacher", "agreed", "pos"), ("latest", "corrected", "neg")],
)
def test_tie_rules(rule: str, status: str, label: str | None) -> None:
    anns = [
        ann("a", "1", "pos", updated_at="2026-01-01T10:00:00Z"),
        ann("a", "2", "neg", updated_at="2026-01-01T11:00:00Z"),
    ]
    r = resolve_row(anns, "pos", tie_rule=rule)  # type: ignore[arg-type]
    assert (r.status, r.label, r.disagreement) == (status, label, True)
    if rule == "hold":
        assert r.reasons == ("tie between 'neg', 'pos' (1 votes each)",)


def test_teacher_tie_rule_holds_when_the_teacher_is_not_among_the_tied() -> None:
    r = resolve_row([ann("a", "1", "x"), ann("a", "2", "y")], "z", tie_rule="teacher")
    assert r.status == "held_back"


def test_reject_excludes_with_reasons_and_empty_answers_do_not_vote() -> None:
    anns = [
        ann("a", "1", None, rejected=True, reason="not English"),
        ann("a", "2", "pos", rejected=True, reason="not English"),
        ann("a", "3", "neg"),
        ann("a", "4", None),  # an empty submit
    ]
    r = resolve_row(anns, "pos")
    assert (r.status, r.label, r.reasons, r.votes) == (
        "rejected",
        None,
        ("not English",),
        {"reject": 2, "neg": 1},
    )
    assert resolve_row([ann("a", "1", None)], "pos") is None


def test_merge_overrides_teacher_drops_rejected_and_held_keeps_pending() -> None:
    rows = [{"id": i, "label": "pos", "confidence": 0.5} for i in ("a", "b", "c", "d")]
    anns = [
        ann("a", "1", "neg", lead_time=3.0),
        ann("b", "1", None, rejected=True, reason="garbled", lead_time=1.0),
        ann("c", "1", "neg", lead_time=2.0),
        ann("c", "2", "pos"),
        ann("zz", "1", "neg"),  # not one of these rows: ignored
    ]
    m = merge_reviews(rows, anns)
    assert [(r["id"], r["label"], r["label_source"]) for r in m.rows] == [
        ("a", "neg", "human"),
        ("d", "pos", "teacher"),
    ]
    assert m.rows[0]["teacher_label"] == "pos"
    assert m.rejected == {"b": ("garbled",)} and m.held_back == ["c"] and m.pending == ["d"]
    assert [r["id"] for r in merge_reviews(rows, anns, include_pending=False).rows] == ["a"]
    s = m.stats
    assert (s.reviewed, s.agreed, s.corrected, s.rejected, s.held_back, s.disagreements) == (3, 0, 1, 1, 1, 1)
    assert (s.annotations, s.total_lead_time_s, s.mean_lead_time_s) == (4, 6.0, 2.0)
    assert s.teacher_precision_audit is None
    assert m.stats.as_metrics()["review_corrected"] == 1.0


def test_merge_ignores_answers_on_another_dataset_version() -> None:
    rows = [{"id": "a", "label": "pos"}]
    m = merge_reviews(rows, [ann("a", "1", "neg", dataset_version="v1")], dataset_version="v2")
    assert m.pending == ["a"] and m.rows == [{"id": "a", "label": "pos", "label_source": "teacher"}]


def test_teacher_precision_on_the_audit_sample() -> None:
    anns = [
        ann("a1", "1", "pos", audit=True, teacher_label="pos"),
        ann("a2", "1", "neg", audit=True, teacher_label="pos"),
        ann("a3", "1", "pos", audit=True, teacher_label="pos"),
        ann("a4", "1", None, rejected=True, audit=True, teacher_label="pos"),  # not counted
        ann("x", "1", "neg", teacher_label="pos"),  # not an audit row
    ]
    from potstill.review.merge import resolve_annotations

    s = review_stats(resolve_annotations(anns), anns)
    assert (s.audit_reviewed, s.audit_teacher_correct) == (3, 2)
    assert s.teacher_precision_audit == pytest.approx(2 / 3)


@pytest.mark.parametrize("kind", KINDS)
def test_label_configs_are_xml_with_answer_verdict_and_reason(kind: str) -> None:
    spec = ReviewProjectSpec("d", "v1", kind, labels=LABELS if kind in ("classification", "nli") else ())
    root = ET.fromstring(label_config(spec))
    names = {el.get("name") for el in root.iter() if el.get("name")}
    assert {"answer", "verdict", "reason"} <= names


def test_label_values_are_escaped() -> None:
    spec = ReviewProjectSpec("d", "v1", labels=('say "hi"', "a<b"))
    values = [el.get("value") for el in ET.fromstring(label_config(spec)).iter("Choice")]
    assert values[:2] == ['say "hi"', "a<b"]


def test_task_carries_row_id_version_and_a_scored_prediction() -> None:
    spec = ReviewProjectSpec("d", "v1", labels=LABELS, teacher="smol")
    row = {"id": 7, "text": "fine", "label": "positive", "confidence": 0.42, "route_reason": "audit: x"}
    task = build_task(row, spec, "v3")
    assert task["data"] == {
        "text": "fine",
        "row_id": "7",
        "dataset": "d",
        "dataset_version": "v3",
        "prompt_version": "v1",
        "teacher_label": "positive",
        "confidence": 0.42,
        "audit": True,
        "route_reason": "audit: x",
    }
    [pred] = task["predictions"]
    assert (pred["score"], pred["model_version"]) == (0.42, "smol")
    # A reviewer submitting the pre-annotation unchanged gives the teacher's label back.
    parsed = parse_annotation(
        task["data"], {"id": 1, "completed_by": 2, "result": pred["result"]}, "classification"
    )
    assert (parsed.answer, parsed.row_id, parsed.audit, parsed.annotator) == ("positive", "7", True, "2")
    assert parse_annotation(task["data"], {"was_cancelled": True, "result": []}, "classification") is None


def test_tasks_are_sorted_by_confidence() -> None:
    spec = ReviewProjectSpec("d", "v1", labels=LABELS)
    rows = [
        {"id": i, "text": "t", "label": "positive", "confidence": c} for i, c in enumerate([0.5, 0.1, 0.3])
    ]
    assert [t["data"]["row_id"] for t in build_tasks(rows, spec)] == ["1", "2", "0"]


def test_import_file_and_its_config(tmp_path: Path) -> None:
    spec = ReviewProjectSpec("d", "v1", labels=LABELS)
    rows = [{"id": "a", "text": "t", "label": "positive", "confidence": 0.5}]
    path = write_import_file(rows, tmp_path / "q" / "review.json", spec=spec, dataset_version="v1")
    tasks = json.loads(path.read_text())
    assert tasks[0]["data"]["row_id"] == "a" and tasks[0]["predictions"][0]["score"] == 0.5
    assert (tmp_path / "q" / "review.label_config.xml").read_text() == label_config(spec)


def test_outbox_deduplicates_per_project_and_removes_delivered(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.jsonl")
    a = ReviewProjectSpec("a", "v1", labels=LABELS)
    b = ReviewProjectSpec("b", "v1", labels=LABELS)
    rows = [{"id": i, "text": "t", "label": "positive", "confidence": 0.5} for i in ("1", "2")]
    box.add(a, build_tasks(rows, a))
    box.add(a, build_tasks(rows[:1], a))  # queued again: replaced, not duplicated
    box.add(b, build_tasks(rows[:1], b))  # same row id, another project: kept apart
    assert len(box) == 3
    box.remove(a, ["1"])
    assert [(e["project"]["dataset"], e["task"]["data"]["row_id"]) for e in box.entries()] == [
        ("a", "2"),
        ("b", "1"),
    ]
