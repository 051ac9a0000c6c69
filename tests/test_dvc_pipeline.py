"""dvc.yaml is rendered from the pipeline declaration (potstill/pipeline.py) for every declared task: the
committed file agrees with it, and `dvc repro` runs a declared task, then skips it, and re-runs training
when the distillation method changes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import declare_args
from mlflow.tracking import MlflowClient

from potstill.cli import main
from potstill.config import RunConfig
from potstill.data.catalog import Catalog
from potstill.pipeline import STEPS, dvc_text, load_stages, stage_name

ROOT = Path(__file__).resolve().parents[1]
STAGED = [s for s in STEPS if s.stage]


def test_dvc_yaml_is_the_pipeline_declaration():
    catalog = Catalog.from_file(ROOT / "catalog" / "catalog.yaml")
    assert (ROOT / "dvc.yaml").read_text() == dvc_text(catalog), "run `potstill dvc` and commit dvc.yaml"
    stages = load_stages(ROOT)
    assert list(stages) == [stage_name(t, s.name) for t in sorted(catalog.tasks) for s in STAGED]
    for task in catalog.tasks:
        view = catalog.for_task(task)
        templates = {view.prompts[view.full_name(p)].path for p in view.visible_prompts()}
        entries = {view.dataset(n).path: n for n in view.visible_datasets()}
        for s in STAGED:
            stage = stages[stage_name(task, s.name)]
            assert stage["cmd"] == f"potstill step {s.name} --task {task}"
            for dep in stage.get("deps", []):
                assert dep in entries or dep in templates or dep == f"catalog/tasks/{task}.yaml", dep
            assert [entries[o] for o in stage.get("outs", [])] == list(s.writes)
            for param in stage["params"]:
                node = RunConfig().model_dump()
                for part in param.split("."):
                    assert part in node, f"{s.name}: params {param} is not in the run config"
                    node = node[part]
    # Training re-runs when any distill or student setting changes.
    assert {"distill", "student"} <= set(stages["polarity-train"]["params"])


def test_potstill_dvc_check_says_when_dvc_yaml_is_stale(project, capsys):
    assert main(["--project", str(project), "dvc", "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--project", str(project), "dvc"]) == 0
    assert main(["--project", str(project), "dvc", "--check"]) == 0
    assert (project / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()


@pytest.mark.slow
def test_dvc_repro_runs_a_declared_task_then_skips_and_retrains_on_a_new_method(
    prefect_api, project, tiny_model_dir, user_files, capsys
):
    assert main(["--project", str(project), *declare_args("reviews", user_files["reviews"])]) == 0
    assert "reviews-register" in (project / "dvc.yaml").read_text()  # `task new` rendered its stages
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"]["model"] = str(tiny_model_dir)
    params["data"].update(max_prompts=32, max_eval_rows=16)
    params["student"].update(layers=[0], batch_size=8, max_steps=2, eval_batch_size=16)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    # mlflow.set_tracking_uri/set_registry_uri of earlier in-process tests export both variables
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    from prefect.settings import PREFECT_API_URL

    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the session's test server, not one per stage
    for cmd in (["git", "init", "-q"], ["potstill", "init"]):
        subprocess.run(cmd, cwd=project, env=env, check=True, capture_output=True)

    def repro() -> str:
        done = subprocess.run(
            ["dvc", "repro", "reviews-register"], cwd=project, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    first = repro()
    for s in STAGED:
        assert f"Running stage 'reviews-{s.name}'" in first, s.name
    assert "polarity-" not in first  # the demo task's stages are not upstream of this one
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert {f"reviews-{s.name}" for s in STAGED} <= set(lock["stages"])
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("reviews")
    report = catalog.load_json("eval_report")
    assert 0 <= report["metrics"]["student_accuracy"] <= 1
    models = catalog.load_json("models")
    assert Path(models["student"]).is_relative_to(project / "catalog/data/reviews/runs")  # run-scoped
    lock_md5 = next(
        o["md5"] for o in lock["stages"]["reviews-route"]["outs"] if o["path"].endswith("train_set.jsonl")
    )
    assert catalog.versions.latest("train_set").md5 == lock_md5  # the catalog and DVC name the same content
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"  # both: earlier tests set another registry
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        "reviews-student", "champion"
    )
    assert mv.tags["lineage.data.train_set"] == f"v1 md5:{lock_md5}" and mv.tags["lineage.task"] == "reviews"

    capsys.readouterr()
    assert main(["--project", str(project), "catalog", "list", "--task", "reviews"]) == 0
    assert main(["--project", str(project), "catalog", "show", "--task", "reviews", "models"]) == 0
    assert models["run_id"] in capsys.readouterr().out

    second = repro()
    assert "Running stage" not in second
    assert "didn't change, skipping" in second or "up to date" in second

    params["distill"]["method"] = "logit_online"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    third = repro()
    for name in ("train", "evaluate", "register"):
        assert f"Running stage 'reviews-{name}'" in third, name
    assert "Running stage 'reviews-route'" not in third  # same teacher labels: routing is unchanged
    old_run = models["run_id"]
    assert not (project / "catalog/data/reviews/runs" / old_run).exists()  # the replaced train's folders
