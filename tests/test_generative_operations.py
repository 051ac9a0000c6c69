"""Operating a generative student: a math task (sums) distilled once, then a batch of new questions of
another shape goes through `potstill predict` (response, answer, confidence per row), the drift monitor
(input embeddings, answer-length buckets in place of label shares, confidence) and, on drift, the inline
retrain: the teacher labels the batch, the student continues from the champion, it is scored by exact
match on the gold split and on the batch rows that carry a gold answer, and the gate judges it on the
kind's headline metric, `student_exact_match`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import CACHE, math_questions
from generative_data import declare, write_sums
from mlflow.tracking import MlflowClient
from test_generative_flow import overrides
from user_data import sentences

from potstill.cli import main
from potstill.data.catalog import Catalog
from potstill.operations.drift import Disagreement

MODEL = "sums-student"


def _batch() -> list[dict[str, str]]:
    """24 long movie-review paragraphs (nothing like the training questions: the input drift) and 8 math
    questions the teacher knows, with gold answers in both spellings a user might bring (`#### 7`, `12`)."""
    picked = random.Random(11).sample(sentences(CACHE), 72)
    long = [
        {"id": f"long-{i}", "question": " ".join(s["text"] for s in picked[3 * i : 3 * i + 3])}
        for i in range(24)
    ]
    sums = [
        {
            "id": f"new-{i}",
            "question": q["problem"],
            "label": q["solution"].split("\n")[-1] if i % 2 else q["solution"].split("#### ")[-1],
        }
        for i, q in enumerate(math_questions(8, start=64))
    ]
    return long + sums


@pytest.mark.slow
def test_predict_monitor_and_retrain_a_generative_task(
    prefect_api, project: Path, math_teacher_dir: Path, tmp_path: Path, capsys
):
    base = ["--project", str(project)]
    files = write_sums(tmp_path / "sums")
    assert main([*base, *declare("sums", files)]) == 0
    fast = overrides(math_teacher_dir, 30, "sft")
    assert main([*base, "run", "--task", "sums", *fast]) == 0
    client = MlflowClient()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    catalog = Catalog.from_file(project / "catalog/catalog.yaml").for_task("sums")
    batch = _batch()
    catalog.save("incoming", batch)

    # `potstill predict`: one row per batch row, the generated text and what math reads out of it.
    capsys.readouterr()
    assert main([*base, "predict", "--task", "sums", *fast]) == 0
    assert f"predicted {len(batch)} rows of sums/incoming v1" in capsys.readouterr().out
    preds = catalog.load("predictions")
    assert [p["id"] for p in preds] == [r["id"] for r in batch]
    for p in preds:
        assert isinstance(p["response"], str) and (p["answer"] is None or isinstance(p["answer"], str))
        assert 0.0 <= p["confidence"] <= 1.0 and "label" not in p
        assert p["model_version"] == str(champion.version) and p["batch_version"] == "v1"
        assert p["model_name"] == MODEL
    assert {p["answer"] for p in preds if p["id"].startswith("new-")} == {"7"}  # what the student learned

    # `potstill monitor`: drift on the input embeddings; answer-length shares and confidence are compared
    # too; the drift starts the retrain inline.
    monitor = [
        "monitor.trigger=inline",
        "monitor.reference_rows=32",
        "monitor.teacher_sample_rows=8",
        "monitor.n_permutations=100",
        "retrain.max_steps=4",
        "retrain.learning_rate=1e-4",
        # The teacher was taught math questions only: on a few review paragraphs it writes no `#### N`.
        # Those rows go to review; the run may go on with them (the default stops at 5% / 90% valid).
        "validation.max_parse_failure_rate=0.3",
        "validation.min_valid_fraction=0.7",
    ]
    assert main([*base, "monitor", "--task", "sums", *fast, *[x for m in monitor for x in ("-o", m)]]) == 0
    out = capsys.readouterr().out
    assert "sums incoming v1: drift, retrain triggered" in out, out
    state = catalog.load_json("monitor_state")
    summary = state["monitored"]["v1"]
    run = client.get_run(summary["run_id"])
    assert run.data.tags["potstill.flow"] == "monitor_drift" and run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["drift_detected"] == 1.0 and metrics["drift_mmd_p_value"] < 0.05
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "drift/report.json")).read_text())
    ran = {c["name"]: c for c in report["checks"]}
    skipped = {s.split(":")[0]: s for s in report["skipped"]}
    for check in ("mmd", "psi", "chi2", "ks", "disagreement"):
        assert (check in ran) != (check in skipped), (check, report)
    assert "mmd" in ran and "ks" in ran and "psi" in ran and "chi2" in ran
    for check in ("psi", "chi2"):  # answer-length buckets, not label shares
        assert "answer-length buckets" in ran[check]["detail"], ran[check]
    assert "words<=" in ran["psi"]["detail"]
    for check in ran:
        assert f"drift_{check}_statistic" in metrics, check
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/label_shares.png", "plots/confidence.png"}

    # The retrain: a new version of sums-student, continued from the champion, scored by exact match on
    # the gold split and on the 8 batch rows with a gold answer, judged on student_exact_match.
    [trigger] = state["triggers"]
    assert trigger["batch"] == "v1" and trigger["mode"] == "inline"
    [retrain_run] = client.search_runs(
        [run.info.experiment_id], "tags.`potstill.flow` = 'retrain'", max_results=5
    )
    assert retrain_run.info.status == "FINISHED" and retrain_run.data.tags["potstill.batch"] == "v1"
    init_from = f"models:/{MODEL}@champion version {champion.version}"
    assert retrain_run.data.params["retrain.init_from"] == init_from
    rm = retrain_run.data.metrics
    for name in ("student_exact_match", "student_base_exact_match", "teacher_exact_match"):
        assert name in rm, name
    assert rm["new_slice_rows"] == 8
    for name in ("new_slice_before_exact_match", "new_slice_after_exact_match"):
        assert 0.0 <= rm[name] <= 1.0, name
    # the champion's answers were its predictions on the batch
    gold = {r["id"]: r["label"].split("#### ")[-1] for r in batch if "label" in r}
    hits = [p["answer"] == gold[p["id"]] for p in preds if p["id"] in gold]
    assert rm["new_slice_before_exact_match"] == pytest.approx(sum(hits) / len(hits))
    scored = json.loads(
        Path(
            client.download_artifacts(retrain_run.info.run_id, "eval/new_slice_predictions.json")
        ).read_text()
    )
    assert len(scored) == 8 and all(isinstance(r["after_response"], str) for r in scored)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    [new] = [v for v in versions if v.run_id == retrain_run.info.run_id]
    assert int(new.version) > int(champion.version)
    assert new.tags["lineage.retrained_from"] == init_from
    assert new.tags["potstill.decision"] in ("promoted", "not promoted")
    checks = json.loads(new.tags["potstill.checks"])
    assert any("student_exact_match" in c["reason"] for c in checks), checks
    decision = json.loads(
        Path(client.download_artifacts(retrain_run.info.run_id, "registry/decision.json")).read_text()
    )
    assert str(decision["version"]) == str(new.version)
    improvement = next(c for c in decision["checks"] if c["name"] == "improvement")
    assert "student_exact_match" in improvement["reason"]
    gain = rm["student_exact_match"] - client.get_run(champion.run_id).data.metrics["student_exact_match"]
    assert improvement["value"] == pytest.approx(gain)


# --- the pieces, without a model ------------------------------------------------------------------------


def _generated(answer: str | None, response: str) -> dict[str, object]:
    return {"response": response, "answer": answer, "confidence": 0.9}


def test_a_generative_window_compares_answer_lengths_and_the_kinds_agreement():
    from potstill.kinds import get_kind
    from tasks.monitor import Window

    preds = [
        _generated("7", "So 3 + 4 = 7.\n#### 7"),
        _generated(None, "word " * 30),
        _generated("8", "#### 8"),
    ]
    window = Window([{"id": i, "question": "q"} for i in range(3)], preds, teacher=["7", None, "9"])
    assert window.generative and window.labels == ["words<=15", "words<=40", "words<=5"]
    assert window.answers == ["7", None, "8"]
    # math's agreement: the same number; two unreadable answers do not agree
    assert window.disagreement(get_kind("math").agree) == Disagreement(2, 3)
    assert window.disagreement() == Disagreement(1, 3)  # plain label equality (a classifier's rule)

    labels = Window([{"id": 0}], [{"label": "positive", "confidence": 0.8}], teacher=["negative"])
    assert not labels.generative and labels.labels == ["positive"]
    assert labels.disagreement(get_kind("classification").agree) == Disagreement(1, 1)


def test_answer_length_plot_keeps_bucket_order(tmp_path: Path):
    from potstill.operations.monitoring import length_bucket_names, plot_label_shares

    names = length_bucket_names()
    assert names[0] == "words<=0" and names[-1] == "words>100" and len(names) == len(set(names))
    path = plot_label_shares(["words<=5", "words<=15"], ["words>100"], tmp_path / "p.png", order=names)
    assert path.stat().st_size > 0


def test_a_generative_new_slice_takes_any_reference_answer():
    from potstill.operations.retrain import gold_slice

    rows = [
        {"id": "a", "label": "#### 7"},
        {"id": "b", "label": 12},
        {"id": "c", "label": " "},
        {"id": "d"},
        {"id": "e", "label": float("nan")},
        {"id": "f", "label": True},
    ]
    assert gold_slice(rows, []) == [{"id": "a", "label": "#### 7"}, {"id": "b", "label": "12"}]
    assert gold_slice([{"id": "x", "label": "positive"}, {"id": "y", "label": "7"}], ["positive"]) == [
        {"id": "x", "label": "positive"}
    ]
