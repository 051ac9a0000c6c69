"""Bad rows in the prompts entry: quarantined with row, field and reason; the run goes on or stops."""

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.distill import distill
from potstill.config import CatalogConfig
from potstill.data.catalog import Catalog
from potstill.data.demo import build_demo
from potstill.data.validation import DataValidationError
from potstill.models import default_cache_dir

BIG = "x" * 1_000_000


def corrupt_prompts(project: Path) -> Path:
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml", CatalogConfig(versioning=False))
    build_demo(catalog.for_task("polarity"), default_cache_dir())
    path = project / "catalog/data/polarity/prompts.jsonl"
    good = path.read_text().splitlines()
    first_id = json.loads(good[0])["id"]
    bad = [
        json.dumps({"id": first_id, "text": "a duplicate id"}),  # line 1
        json.dumps({"id": "huge", "text": BIG}),  # line 2: a single 1 MB row
        "[1, 2]",  # line 3: JSON, but not an object
        json.dumps({"id": "no-text"}),  # line 4: missing column
    ]
    path.write_text("\n".join(bad + good) + '\n{"id": "cut", "te')  # truncated last line
    return path


def params(project: Path, tiny_model_dir: Path, **validation) -> dict:
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["teacher"]["model"] = str(tiny_model_dir)
    p["data"].update(max_prompts=40, max_eval_rows=16)
    p["student"].update(layers=[0], batch_size=8, max_steps=2, eval_batch_size=16)
    p["validation"].update(validation)
    return p


@pytest.mark.slow
def test_bad_rows_are_quarantined_and_the_run_goes_on(prefect_api, project, tiny_model_dir):
    corrupt_prompts(project)
    summary = distill(params=params(project, tiny_model_dir, min_valid_fraction=0.8), project=str(project))
    v = summary["validation"][0]
    assert v["name"] == "prompts" and not v["passed"] and v["proceed"]
    quarantine = [json.loads(x) for x in Path(v["quarantine_file"]).read_text().splitlines()]
    by_row = {q["row"]: q for q in quarantine}
    # lines 1-4 are bad, line 5 is the original row whose id line 1 repeats, 3205 is the cut last line
    assert set(by_row) == {1, 2, 3, 4, 5, 3205}
    assert by_row[3205]["failures"][0]["expectation"] == "read"
    assert any("length" in f["expectation"] for f in by_row[2]["failures"])
    assert any(f["column"] == "id" for f in by_row[1]["failures"])
    assert by_row[3]["failures"][0]["expectation"] == "read"
    assert any(f["column"] == "text" for f in by_row[4]["failures"])
    assert v["quarantined_rows"] == len(quarantine)
    assert summary["tracking_uri"] == f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"  # this project's store
    run = MlflowClient().get_run(summary["run_id"])
    assert run.data.metrics["validation_prompts_quarantined_rows"] == len(quarantine)
    assert run.data.metrics["validation_prompts_passed"] == 0.0
    labeled_ids = {
        r["id"]
        for r in Catalog.from_file(project / "catalog/catalog.yaml")
        .for_task("polarity")
        .load("teacher_labels")
    }
    assert "huge" not in labeled_ids and len(labeled_ids) == summary["rows_labeled"]


@pytest.mark.slow
def test_too_many_bad_rows_stop_the_run_with_file_row_and_field(prefect_api, project, tiny_model_dir):
    corrupt_prompts(project)
    with pytest.raises(DataValidationError) as err:
        distill(params=params(project, tiny_model_dir, min_valid_fraction=0.99), project=str(project))
    message = str(err.value)
    assert "prompts.jsonl" in message and "row" in message
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("potstill-polarity").experiment_id],
        order_by=["start_time DESC"],
    )
    assert runs[0].info.status == "FAILED"
