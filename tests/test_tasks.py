"""Tasks declared once: `potstill task new` from a user's own files (their column names, label values and
formats), every run output derived from the declaration, several tasks side by side in one project, errors
a user can act on, and run-scoped model folders that two concurrent runs never share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import declare_args, tiny_overrides
from mlflow.tracking import MlflowClient

from potstill.cli import main
from potstill.data.catalog import Catalog
from potstill.data.readers import ColumnMap, read_rows
from potstill.data.tasks import TaskSpec, load_task
from potstill.errors import TaskError

POTSTILL = str(Path(sys.executable).with_name("potstill"))


def _spec(**fields) -> dict:
    base = {
        "kind": "classification",
        "labels": ["negative", "positive"],
        "prompts": {"path": "catalog/data/t/prompts.csv", "format": "csv"},
        "gold": {"path": "catalog/data/t/gold.csv", "format": "csv"},
        "templates": {"teacher": "a.txt", "student": "b.txt"},
    }
    return {**base, **fields}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "poetry"}, "unknown kind 'poetry'"),
        ({"labels": ["only"]}, "needs at least two labels"),
        ({"label_map": {"0": "neg"}}, "not among the labels"),
        ({"columns": {"txt": "sentence"}}, "unknown field"),
        ({"kind": "math", "labels": ["a", "b"]}, "no fixed label set"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_declaration_names_what_to_fix(tmp_path: Path, fields: dict, message: str):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(_spec(**fields)))
    with pytest.raises(TaskError, match=message) as err:
        load_task(path)
    assert str(path) in str(err.value)
    bad_name = tmp_path / "Bad-Name.yaml"
    bad_name.write_text(yaml.safe_dump(_spec()))
    with pytest.raises(TaskError, match="lowercase letters"):
        load_task(bad_name)


def test_nli_labels_default_and_names_are_derived():
    spec = TaskSpec.model_validate(_spec(name="pairs", kind="nli", labels=[]))
    assert spec.label_set == ["entailment", "neutral", "contradiction"]
    assert spec.registered_model == "pairs-student"
    entries = spec.entries()
    assert entries["train_set"]["path"] == "catalog/data/pairs/pipeline/train_set.jsonl"
    assert entries["prompts"]["id_prefix"] == "prompts-" and entries["gold"]["id_prefix"] == "gold-"
    assert set(entries) >= {"teacher_labels", "review_queue", "reviewed_labels", "incoming", "predictions",
                            "monitor_state", "eval_report", "models", "review_import"}  # fmt: skip


def test_user_files_are_read_in_their_format_with_their_columns(user_files):
    reviews, pairs = user_files["reviews"], user_files["pairs"]
    mapping = ColumnMap.of(
        {"text": "sentence", "label": "polarity"}, {"0": "negative", "1": "positive"}, "gold-"
    )
    gold = read_rows(reviews["gold"], "csv", ["id", "text", "label"], mapping)
    assert not gold.problems and len(gold.rows) == 48
    assert gold.rows[0]["id"] == "gold-1" and {r["label"] for r in gold.rows} == {"negative", "positive"}
    assert "sentence" not in gold.rows[0] and gold.rows[0]["text"]
    nli = ColumnMap.of({"premise": "sentence1", "hypothesis": "sentence2", "id": "pair_id", "label": "gold"})
    parquet = read_rows(pairs["gold"], "parquet", ["id", "premise", "hypothesis", "label"], nli)
    assert not parquet.problems and parquet.rows[0]["id"] == "p96" and parquet.row_numbers[:2] == [1, 2]
    assert {r["label"] for r in parquet.rows} == {"entailment", "neutral", "contradiction"}
    unmapped = read_rows(reviews["gold"], "csv", ["id", "text", "label"], ColumnMap.of(id_prefix="g"))
    assert not unmapped.rows and "missing required field 'text'" in str(unmapped.problems[0])
    wrong = read_rows(reviews["gold"], "csv", ["text"], ColumnMap.of({"text": "review"}))
    assert "missing required field 'text' (the file's column 'review')" in str(wrong.problems[0])


def test_task_new_copies_versions_and_derives_everything(project: Path, user_files, capsys):
    assert main(["--project", str(project), *declare_args("reviews", user_files["reviews"])]) == 0
    out = capsys.readouterr().out
    assert "declared task 'reviews'" in out and "potstill run --task reviews" in out
    spec = load_task(project / "catalog/tasks/reviews.yaml")
    assert spec.kind == "classification" and spec.label_map == {"0": "negative", "1": "positive"}
    assert spec.columns == {"text": "sentence", "label": "polarity"}
    # The data entered the catalog: copied byte for byte, versioned with DVC.
    copied = project / spec.gold.path
    assert copied.read_bytes() == user_files["reviews"]["gold"].read_bytes()
    assert (project / (spec.gold.path + ".dvc")).exists()
    catalog = Catalog.from_file(project / "catalog/catalog.yaml").for_task("reviews")
    assert catalog.current_version("gold").name == "v1" and catalog.current_version("prompts").rows == 96
    assert catalog.load("gold")[0]["label"] in ("negative", "positive")  # mapped on every read
    # Default prompts of the kind, with the task's labels; dvc.yaml stages for the task.
    teacher = catalog.prompt("teacher_prompt")
    assert "negative, positive" in teacher.text and teacher.fields == ["text"]
    assert "reviews-train" in (project / "dvc.yaml").read_text()
    assert main(["--project", str(project), "catalog", "list", "--task", "reviews"]) == 0
    listed = capsys.readouterr().out
    assert "reviews/gold" in listed and "reviews/train_set" in listed and "polarity/" not in listed
    assert main(["--project", str(project), "task", "new", "reviews", "--kind", "classification",
                 "--labels", "a,b", "--prompts", str(copied), "--gold", str(copied)]) == 2  # fmt: skip
    assert "task 'reviews' exists" in capsys.readouterr().err


def test_an_unmapped_column_stops_task_new_before_anything_is_written(project: Path, user_files, capsys):
    args = declare_args("reviews", user_files["reviews"])
    args = [a for a in args if a != "text=sentence"]
    args.remove("--column")  # drop the text mapping: the file has `sentence`, not `text`
    assert main(["--project", str(project), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("potstill: task 'reviews': the prompts file") and "no column 'text'" in err
    assert "--column text=COLUMN" in err and "Traceback" not in err
    assert not (project / "catalog/tasks/reviews.yaml").exists()
    assert not (project / "catalog/data/reviews").exists()


def test_a_missing_file_stops_the_run_naming_it_and_the_other_file_is_untouched(
    project: Path, user_files, capsys
):
    assert main(["--project", str(project), *declare_args("reviews", user_files["reviews"])]) == 0
    capsys.readouterr()
    prompts = project / "catalog/data/reviews/prompts.csv"
    before = prompts.read_bytes()
    (project / "catalog/data/reviews/gold.csv").unlink()
    for command in (["run"], ["step", "label"]):
        assert main(["--project", str(project), *command, "--task", "reviews"]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[0] == (
            "potstill: task 'reviews': the gold file catalog/data/reviews/gold.csv is missing. Restore it "
            "with `potstill catalog checkout --task reviews gold@vN` (its versions: `potstill catalog log "
            "--task reviews gold`), or declare the task again with `potstill task new`."
        )
    assert prompts.read_bytes() == before  # byte-identical: the demo data is never written over a task
    assert not (project / "catalog/data/reviews/gold.csv").exists()
    assert not (project / "catalog/data/polarity").exists()
    # The file comes back from its version, as the message says.
    assert main(["--project", str(project), "catalog", "checkout", "--task", "reviews", "gold@v1"]) == 0
    assert (project / "catalog/data/reviews/gold.csv").read_bytes() == user_files["reviews"][
        "gold"
    ].read_bytes()


def test_an_unknown_task_is_one_line_and_exit_2(project: Path, capsys):
    assert main(["--project", str(project), "run", "--task", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("potstill: unknown task 'nope'; declared tasks: polarity.")
    assert "Traceback" not in err
    log = Path(os.environ["POTSTILL_CACHE"]) / "logs" / "potstill.log"
    assert "TaskError" in log.read_text()  # the traceback went to the log


@pytest.mark.slow
def test_a_validation_stop_prints_the_reason_not_a_traceback(
    prefect_api, project: Path, user_files, tiny_model_dir: Path
):
    """A real flow run stopped by validation (the gold labels are 0/1 and nobody mapped them): one
    `potstill:` message saying how to fix it, exit 2, no traceback on the terminal."""
    args = [a for a in declare_args("reviews", user_files["reviews"]) if a != "0=negative,1=positive"]
    args.remove("--label-map")
    assert main(["--project", str(project), *args]) == 0
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    overrides = [x for o in tiny_overrides(tiny_model_dir) for x in ("-o", o)]
    done = subprocess.run(
        [POTSTILL, "--project", str(project), "run", "--task", "reviews", *overrides],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    message = done.stderr[done.stderr.index("potstill: ") :]
    assert "gold.csv: only 0 of 32 rows valid" in message and "label_map:" in message


@pytest.mark.slow
def test_two_declared_tasks_and_the_demo_live_in_one_project(
    prefect_api, project: Path, user_files, tiny_model_dir: Path, capsys
):
    """The demo, a classification task with 0/1 labels in CSV and an NLI task in JSONL + Parquet with its
    own column names: each runs end to end with the real stack, gets its own champion, and none touches
    another's."""
    base = ["--project", str(project)]
    overrides = [x for o in tiny_overrides(tiny_model_dir) for x in ("-o", o)]
    assert main([*base, "run", *overrides]) == 0  # the demo task, polarity
    client = MlflowClient()
    demo = client.get_model_version_by_alias("polarity-student", "champion")
    for name in ("reviews", "pairs"):
        assert main([*base, *declare_args(name, user_files[name])]) == 0
        assert main([*base, "run", "--task", name, *overrides]) == 0
    out = capsys.readouterr().out
    assert "potstill distill: task pairs done" in out

    for name, labels in (("reviews", {"negative", "positive"}),
                         ("pairs", {"entailment", "neutral", "contradiction"})):  # fmt: skip
        champion = client.get_model_version_by_alias(f"{name}-student", "champion")
        run = client.get_run(champion.run_id)
        assert run.data.tags["potstill.task"] == name and run.info.status == "FINISHED"
        assert champion.tags["lineage.task"] == name
        experiment = client.get_experiment(run.info.experiment_id)
        assert experiment.name == f"potstill-{name}"
        catalog = Catalog.from_file(project / "catalog/catalog.yaml").for_task(name)
        train = catalog.load("train_set")
        assert train and {r["label"] for r in train} <= labels
        gold_ids = {r["id"] for r in catalog.load("gold")}
        assert not {r["id"] for r in train} & gold_ids
        assert champion.tags["lineage.data.gold"] == (f"v1 md5:{catalog.current_version('gold').md5}")
        assert not list((project / f"catalog/data/{name}/runs").glob("*"))  # run folders removed
    pairs_model = mlflow.pyfunc.load_model("models:/pairs-student@champion")
    pred = pairs_model.predict(pd.DataFrame({"premise": ["A sad film."], "hypothesis": ["It was sad."]}))
    assert pred["label"][0] in ("entailment", "neutral", "contradiction")
    # The demo's champion is the one it had.
    assert client.get_model_version_by_alias("polarity-student", "champion").version == demo.version
    assert len(client.search_model_versions("name='polarity-student'")) == 1

    assert main([*base, "task", "list"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(listed) == {"polarity", "reviews", "pairs"}
    assert "pairs-student v1" in listed["pairs"] and "nli" in listed["pairs"]
    assert "reviews-student v1" in listed["reviews"] and "accuracy" in listed["reviews"]
    assert "polarity-student v1" in listed["polarity"]
    assert main([*base, "catalog", "list"]) == 0
    assert main([*base, "lineage", "--task", "pairs"]) == 0
    assert "pairs-student version 1 (@champion)" in capsys.readouterr().out

    # Batch predictions per task: the reviews champion predicts the reviews task's incoming batch.
    reviews = Catalog.from_file(project / "catalog/catalog.yaml").for_task("reviews")
    reviews.save("incoming", [{"id": "n1", "text": "a gorgeous film"}, {"id": "n2", "text": "a dull mess"}])
    assert main([*base, "predict", "--task", "reviews"]) == 0
    assert "reviews/incoming v1 -> reviews/predictions v1" in capsys.readouterr().out
    assert [p["model_name"] for p in reviews.load("predictions")] == ["reviews-student"] * 2
    pairs = Catalog.from_file(project / "catalog/catalog.yaml").for_task("pairs")
    assert not pairs.exists("predictions")


@pytest.mark.slow
def test_two_concurrent_runs_register_their_own_weights(
    prefect_api, project: Path, user_files, tiny_model_dir: Path
):
    """Two `potstill run` processes at once on one project and task, with different student.layers: each
    trains in its own run folder, and each registered version holds the layer count of its own run."""
    assert main(["--project", str(project), *declare_args("reviews", user_files["reviews"])]) == 0
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # one Prefect API for both processes
    base = [x for o in tiny_overrides(tiny_model_dir, prompts=48, gold=16) for x in ("-o", o)]
    layouts = {"1": "[0]", "3": "[0, 1, 3]"}
    procs = {
        n: subprocess.Popen(
            [
                POTSTILL,
                "--project",
                str(project),
                "run",
                "--task",
                "reviews",
                *base,
                "-o",
                f"student.layers={lay}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n, lay in layouts.items()
    }
    for n, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{n} layers:\n{out[-4000:]}"

    from tasks.tracking import configure

    client = configure(project)  # this project's store, for the client and for models:/ URIs
    versions = client.search_model_versions("name='reviews-student'")
    assert len(versions) == 2
    seen = set()
    for mv in versions:
        run = client.get_run(mv.run_id)
        layers = yaml.safe_load(run.data.params["student.layers"])
        assert mv.tags["lineage.mlflow_run"] == mv.run_id
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/reviews-student/{mv.version}", dst_path=str(project / "dl" /
                str(mv.version)),
            )
        )  # fmt: skip
        config = json.loads(next(local.rglob("config.json")).read_text())
        assert config["num_hidden_layers"] == len(layers), (mv.version, layers)
        assert run.data.metrics["student_params"] > 0
        seen.add(len(layers))
    assert seen == {1, 3}
    assert not list((project / "catalog/data/reviews/runs").glob("*"))  # each run removed its own folder


def test_every_kind_has_a_student_and_a_kind_without_an_evaluation_says_so_before_labeling(monkeypatch):
    from dataclasses import replace

    import potstill.kinds as kinds
    from flows.pipeline import require_student

    for kind, k in kinds.KINDS.items():
        labels = ["a", "b"] if k.fixed_labels and not k.default_labels else []
        require_student(TaskSpec.model_validate(_spec(name="t", kind=kind, labels=labels)))
    monkeypatch.setitem(kinds.KINDS, "math", replace(kinds.KINDS["math"], score=None))
    spec = TaskSpec.model_validate(_spec(name="sums", kind="math", labels=[]))
    with pytest.raises(
        TaskError, match=r"kind math, which has no student evaluation.*step label --task sums"
    ):
        require_student(spec)
