"""Review in the flows, against the real Label Studio server and Prefect API of the test session.

The distill flow sends its uncertain rows to Label Studio; people answer them through the REST API as
the UI does (a correction, an agreement, a reject); the review sync flow versions their verdicts and
logs the numbers to MLflow; the next run trains on the corrected labels and leaves the rejected row out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.distill import distill
from flows.review_sync import ReviewNotConfigured, review_sync
from potstill.data.catalog import Catalog

if TYPE_CHECKING:
    from conftest import LabelStudioServer


def _params(project: Path, tiny_model_dir: Path) -> dict[str, Any]:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"]["model"] = str(tiny_model_dir)
    params["data"].update(max_prompts=40, max_eval_rows=16)
    params["student"].update(layers=[0], batch_size=8, max_steps=2, eval_batch_size=16)
    params["route"].update(threshold=None, budget=0.1, audit_rows=1)  # 4 lowest-confidence + 1 audit row
    return params


def _choice(value: str, name: str = "answer") -> dict[str, Any]:
    return {"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [value]}}


REASON = {
    "from_name": "reason",
    "to_name": "text",
    "type": "textarea",
    "value": {"text": ["not a movie review"]},
}


@pytest.mark.slow
def test_corrections_reach_the_next_training_set_and_mlflow(
    prefect_api, project: Path, tiny_model_dir: Path, label_studio: LabelStudioServer, monkeypatch
):
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    params = _params(project, tiny_model_dir)
    first = distill(params=params, project=str(project))
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    queue = catalog.load("review_queue")
    assert first["review"]["target"] == "label-studio" and first["review"]["created"] == 5 == len(queue)
    assert sum(bool(r.get("audit")) for r in queue) == 1
    assert not {r["id"] for r in queue} & {r["id"] for r in catalog.load("train_set")}

    # Reviewers: correct one row, confirm one, reject one with a reason; two stay unanswered.
    client = label_studio.client()
    pid = first["review"]["project_id"]
    tasks = {t.data["row_id"]: t for t in client._sdk.tasks.list(project=pid)}
    assert set(tasks) == {r["id"] for r in queue}
    by_conf = sorted(queue, key=lambda r: r["confidence"])
    fix, keep, drop = by_conf[0], by_conf[1], by_conf[2]
    flipped = "negative" if fix["label"] == "positive" else "positive"
    with label_studio.http() as http:
        for row, result in (
            (fix, [_choice(flipped)]),
            (keep, [_choice(keep["label"])]),
            (drop, [_choice("reject", "verdict"), REASON]),
        ):
            r = http.post(
                f"/api/tasks/{tasks[row['id']].id}/annotations/", json={"result": result, "lead_time": 4}
            )
            assert r.status_code == 201, r.text

    synced = review_sync(params=params, project=str(project))
    assert (
        synced["verdicts"] == 3 and synced["pending"] == 2 and synced["version"].startswith("v2 ")
    )  # v1: none yet, at the first run
    verdicts = {r["id"]: r for r in catalog.load("reviewed_labels")}
    assert verdicts[fix["id"]]["label"] == flipped and verdicts[fix["id"]]["review_status"] == "corrected"
    assert verdicts[keep["id"]]["review_status"] == "agreed"
    assert verdicts[drop["id"]]["review_status"] == "rejected"
    assert verdicts[drop["id"]]["reject_reasons"] == ["not a movie review"]
    metrics = MlflowClient().get_run(synced["run_id"]).data.metrics
    assert metrics["review_reviewed"] == 3 and metrics["review_corrected"] == 1
    assert metrics["review_agreed"] == 1 and metrics["review_rejected"] == 1
    assert metrics["review_total_lead_time_s"] == 12

    again = review_sync(params=params, project=str(project))  # nothing new: same version, nothing imported
    assert again["version"] == synced["version"] and again["delivered"] == 0
    assert sum(1 for _ in client._sdk.tasks.list(project=pid)) == 5

    second = distill(params=params, project=str(project))
    train = {r["id"]: r for r in catalog.load("train_set")}
    assert train[fix["id"]]["label"] == flipped and train[fix["id"]]["label_source"] == "human"
    assert train[keep["id"]]["label_source"] == "human"
    assert drop["id"] not in train
    assert {r["id"] for r in catalog.load("review_queue")} == {r["id"] for r in queue} - {
        fix["id"],
        keep["id"],
        drop["id"],
    }
    assert second["review"]["human_rows"] == 2 and second["review"]["rejected_rows"] == 1
    assert second["review"]["created"] == 0  # the two unanswered rows are in the project already
    tags = MlflowClient().get_model_version("polarity-student", second["registered"]["version"]).tags
    assert tags["lineage.data.reviewed_labels"] == synced["version"]


def test_review_sync_without_label_studio_says_how_to_configure(prefect_api, project: Path):
    with pytest.raises(ReviewNotConfigured, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        review_sync(project=str(project))


@pytest.mark.slow
def test_without_label_studio_the_run_writes_an_import_file(prefect_api, project: Path, tiny_model_dir: Path):
    from potstill.cli.summary import review_line

    out = distill(params=_params(project, tiny_model_dir), project=str(project))
    path = project / "catalog/data/polarity/review/label_studio_import.json"
    assert out["review"]["target"] == "file" and out["review"]["location"] == str(path)
    tasks = json.loads(path.read_text())
    assert len(tasks) == out["rows_to_review"] == 5
    assert all(t["predictions"][0]["score"] == t["data"]["confidence"] for t in tasks)
    assert (path.parent / "label_studio_import.label_config.xml").exists()
    assert "make review-server" in review_line(out["review"])


def test_wait_until_done_returns_when_a_reviewer_answers(prefect_api, label_studio, monkeypatch):
    """`review.wait: until_done` polls Label Studio until every routed row has its answer; `timeout`
    gives up after `timeout_s` and says how many rows are still open."""
    import threading
    import time

    from prefect import flow

    from potstill.config import ReviewConfig
    from potstill.review import ReviewProjectSpec, push_rows
    from tasks.review import wait_for_reviews

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    spec = ReviewProjectSpec("wait", "p@v1", labels=("negative", "positive"), teacher="t")
    rows = [{"id": f"w{i}", "text": f"text {i}", "label": "positive", "confidence": 0.5} for i in range(2)]
    client = label_studio.client()
    pid = push_rows(client, spec, rows).project_id
    task_ids = {t.data["row_id"]: t.id for t in client._sdk.tasks.list(project=pid)}

    @flow(validate_parameters=False)
    def wait(cfg, ids):  # untyped: Prefect cannot resolve the test-local annotations
        return wait_for_reviews(ids, spec, cfg)

    timed_out = wait(ReviewConfig(wait="timeout", timeout_s=1, poll_s=0.5), ["w0", "w1"])
    assert timed_out["pending"] == 2 and timed_out["waited_s"] >= 1

    def reviewer() -> None:  # answers one row after the wait has started
        time.sleep(2)
        with label_studio.http() as http:
            http.post(f"/api/tasks/{task_ids['w0']}/annotations/", json={"result": [_choice("negative")]})

    threading.Thread(target=reviewer, daemon=True).start()
    done = wait(ReviewConfig(wait="until_done", poll_s=0.5), ["w0"])
    assert done["pending"] == 0 and done["waited_s"] >= 1.5


def test_api_key_from_a_prefect_secret_block(prefect_api, label_studio, monkeypatch):
    from prefect.blocks.system import Secret

    from tasks.review import review_client

    Secret(value=label_studio.token).save("ls-token-test", overwrite=True)
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY_BLOCK", "ls-token-test")
    client = review_client()
    assert client is not None and client.whoami()["email"]
    assert label_studio.token not in repr(client)
