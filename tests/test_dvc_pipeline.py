"""dvc.yaml mirrors the distill flow: it agrees with the catalog, `dvc repro` runs it, then skips it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from potstill.catalog import Catalog
from potstill.config import RunConfig
from potstill.pipeline import STEPS, load_stages

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_agrees_with_the_catalog():
    stages = load_stages(ROOT)
    assert list(stages) == list(STEPS)
    catalog = Catalog.from_file(ROOT / "catalog" / "catalog.yaml")
    data_paths = {e.path for e in catalog.datasets.values() if e.produced_by is None}
    external = {e.path for e in catalog.datasets.values() if e.produced_by is not None}
    catalog_paths = data_paths | {p.path for p in catalog.prompts.values()} | {"catalog/catalog.yaml"}
    produced = set()
    for name, stage in stages.items():
        assert stage["cmd"] == f"potstill step {name}"
        for dep in stage.get("deps", []):
            assert dep in catalog_paths | external, f"{name}: dep {dep} is not a catalog path"
        for out in stage.get("outs", []):
            assert out in data_paths, f"{name}: out {out} is not a catalog entry a stage produces"
            produced.add(out)
        for param in stage.get("params", []):
            node = RunConfig().model_dump()
            for part in param.split("."):
                assert part in node, f"{name}: params {param} is not in the run config"
                node = node[part]
    assert produced == data_paths, f"entries no stage produces: {data_paths - produced}"


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_then_skips_it(prefect_api, project, tiny_model_dir):
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
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

    first = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for step in STEPS:
        assert f"Running stage '{step}'" in first.stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STEPS)
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml")
    report = catalog.load_json("eval_report")
    assert 0 <= report["metrics"]["student_accuracy"] <= 1
    assert catalog.versions.latest("eval_report").name == "v1"
    lock_md5 = next(
        o["md5"] for o in lock["stages"]["route"]["outs"] if o["path"].endswith("train_set.jsonl")
    )
    assert catalog.versions.latest("train_set").md5 == lock_md5  # the catalog and DVC name the same content

    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"  # both: earlier tests set another registry
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        "potstill-student", "champion"
    )
    assert mv.tags["lineage.data.train_set"] == f"v1 md5:{lock_md5}"

    second = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Running stage" not in second.stdout
    assert "didn't change, skipping" in second.stdout or "up to date" in second.stdout
