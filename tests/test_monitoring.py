"""The drift monitor: the pure retrain rule, then the whole monitor_drift flow against a real Prefect API,
a real SQLite MLflow registry and DVC-versioned catalog, with a tiny distilled champion.

Batches: held-out movie-review sentences (the champion's own domain: no drift), then GSM8K questions and
e-SNLI premises (another domain: input drift the MMD check must catch).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from potstill.operations.drift import DriftCheck, DriftReport
from potstill.operations.monitoring import (
    RetrainDecision,
    decide_retrain,
    new_batches,
    record_batch,
    seeded_sample,
)

# The benchmark data beside the checkout, as on this project's machines; a user's clone has none (skip).
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DRIFT = DriftReport([DriftCheck("mmd", 0.2, 0.002, 0.05, True, "MMD² 0.2, p 0.002 < α 0.05")])
CLEAN = DriftReport([DriftCheck("mmd", 0.0, 0.6, 0.05, False, "MMD² 0.0, p 0.6 ≥ α 0.05")])


# --- pure ---------------------------------------------------------------------------------------------


def test_first_drift_ever_triggers():
    d = decide_retrain(DRIFT, None, NOW, 3600)
    assert d.trigger and any("no retrain was triggered before" in r for r in d.reasons)
    assert any(r.startswith("drift: mmd") for r in d.reasons)


def test_drift_outside_cooldown_triggers():
    d = decide_retrain(DRIFT, NOW - timedelta(seconds=3601), NOW, 3600)
    assert d.trigger and any("outside the cooldown" in r for r in d.reasons)


def test_drift_inside_cooldown_waits_and_says_until_when():
    last = NOW - timedelta(seconds=600)
    d = decide_retrain(DRIFT, last, NOW, 3600)
    assert not d.trigger
    ends = (last + timedelta(seconds=3600)).isoformat()
    assert any("inside the cooldown" in r and ends in r and "3000s from now" in r for r in d.reasons)


def test_cooldown_boundary_is_outside():
    assert decide_retrain(DRIFT, NOW - timedelta(seconds=3600), NOW, 3600).trigger


def test_no_drift_never_triggers():
    for last in (None, NOW - timedelta(days=10), NOW - timedelta(seconds=1)):
        d = decide_retrain(CLEAN, last, NOW, 3600)
        assert d == RetrainDecision(False, d.reasons) and d.reasons[0].startswith("no drift")


def test_negative_cooldown_is_refused():
    with pytest.raises(ValueError, match="cooldown_s"):
        decide_retrain(DRIFT, None, NOW, -1)


def test_state_marks_batches_and_trigger_time():
    state = record_batch({}, "v1", {"drifted": False}, RetrainDecision(False, ["no drift"]), NOW, "none")
    assert new_batches(["v1", "v2"], state) == ["v2"] and state["last_trigger"] is None
    later = NOW + timedelta(minutes=5)
    state = record_batch(state, "v2", {"drifted": True}, RetrainDecision(True, ["drift"]), later, "inline")
    assert new_batches(["v1", "v2"], state) == []
    assert state["last_trigger"] == later.isoformat() and state["triggers"][-1]["mode"] == "inline"


def test_seeded_sample_is_stable_and_ordered():
    rows = [{"id": i} for i in range(100)]
    a, b = seeded_sample(rows, 10, 3), seeded_sample(rows, 10, 3)
    assert a == b and [r["id"] for r in a] == sorted(r["id"] for r in a)
    assert seeded_sample(rows, 500, 3) == rows


# --- the flow -----------------------------------------------------------------------------------------


def _jsonl(path: Path, key: str, n: int) -> list[str]:
    seen: list[str] = []
    with path.open() as f:
        for line in f:
            text = json.loads(line)[key]
            if text not in seen:
                seen.append(text)
            if len(seen) == n:
                break
    return seen


def _params(project: Path, tiny_model_dir: Path) -> dict[str, Any]:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"]["model"] = str(tiny_model_dir)
    params["data"].update(max_prompts=160, max_eval_rows=16)
    params["student"].update(
        layers=[0, 3], batch_size=16, max_steps=6, eval_batch_size=32, learning_rate=1e-3
    )
    params["route"].update(threshold=None, budget=0.05)
    params["monitor"].update(
        reference_rows=128,
        teacher_sample_rows=32,
        n_permutations=200,
        trigger="none",
        cooldown_s=3600,
    )
    return params


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "gsm8k" / "train.jsonl").exists(), reason="needs ../shared/data")
def test_monitor_drift_flow(prefect_api, project: Path, tiny_model_dir: Path, capsys):
    from flows.distill import distill
    from flows.monitor_drift import monitor_drift
    from potstill.cli import main
    from potstill.data.catalog import Catalog

    params = _params(project, tiny_model_dir)
    trained = distill(params=params, project=str(project))
    assert "champion" in trained["registered"]["aliases"]
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    held_out = catalog.load("prompts")[160:224]  # never labeled, never trained on

    # A clean batch: same domain as the training data.
    catalog.save("incoming", [{"id": r["id"], "text": r["text"]} for r in held_out])
    clean = monitor_drift(params=params, project=str(project))
    [b1] = clean["batches"]
    assert b1["batch"] == "v1" and not b1["drifted"] and not b1["trigger"], b1["reasons"]
    assert b1["metrics"]["drift_detected"] == 0.0

    # Another domain: grade-school math questions.
    gsm = _jsonl(SHARED / "gsm8k" / "train.jsonl", "question", 64)
    catalog.save("incoming", [{"id": f"gsm-{i}", "text": t} for i, t in enumerate(gsm)])
    drifted = monitor_drift(params=params, project=str(project))
    [b2] = drifted["batches"]
    assert b2["batch"] == "v2" and b2["drifted"] and b2["trigger"], b2["reasons"]
    assert b2["metrics"]["drift_mmd_p_value"] < 0.05 and b2["retrain"] == {"triggered": True, "mode": "none"}

    # Further drift inside the cooldown: detected, but no second trigger.
    premises = _jsonl(SHARED / "esnli" / "esnli_dev.jsonl", "premise", 64)
    catalog.save("incoming", [{"id": f"esnli-{i}", "text": t} for i, t in enumerate(premises)])
    again = monitor_drift(params=params, project=str(project))
    [b3] = again["batches"]
    assert b3["drifted"] and not b3["trigger"]
    assert any("inside the cooldown" in r for r in b3["reasons"])

    # Never twice: asking again (all, or one batch by name) monitors nothing.
    assert monitor_drift(params=params, project=str(project))["batches"] == []
    repeat = monitor_drift(params=params, project=str(project), batch="v2")
    assert repeat["batches"] == [] and repeat["skipped"] == ["v2"]
    state = catalog.load_json("monitor_state")
    assert sorted(state["monitored"]) == ["v1", "v2", "v3"]
    assert [t["batch"] for t in state["triggers"]] == ["v2"]

    # Predictions: one version per batch, naming the batch and model version.
    records = catalog.versions.records("predictions")
    assert [r.name for r in records] == ["v1", "v2", "v3"]
    for version, batch in (("v1", "v1"), ("v2", "v2"), ("v3", "v3")):
        preds = catalog.load("predictions", version=version)
        assert len(preds) == 64 and {p["batch_version"] for p in preds} == {batch}
        assert {p["model_version"] for p in preds} == {trained["registered"]["version"]}
        assert all(abs(p["p_negative"] + p["p_positive"] - 1) < 1e-6 for p in preds)
        assert {p["label"] for p in preds} <= {"negative", "positive"}

    # MLflow: one run per batch with per-check metrics, the report and the plots.
    client = MlflowClient()
    run = client.get_run(b2["run_id"])
    assert run.data.tags["potstill.flow"] == "monitor_drift" and run.info.status == "FINISHED"
    for check in ("mmd", "chi2", "ks"):
        assert f"drift_{check}_statistic" in run.data.metrics and f"drift_{check}_p_value" in run.data.metrics
    assert "drift_psi_statistic" in run.data.metrics and "drift_disagreement_statistic" in run.data.metrics
    assert run.data.metrics["drift_detected"] == 1.0
    report = json.loads(Path(client.download_artifacts(b2["run_id"], "drift/report.json")).read_text())
    assert report["drifted"] and {c["name"] for c in report["checks"]} == {
        "mmd",
        "psi",
        "chi2",
        "ks",
        "disagreement",
    }
    plots = {a.path for a in client.list_artifacts(b2["run_id"], "plots")}
    assert plots == {"plots/label_shares.png", "plots/confidence.png"}

    # The CLI predicts a named batch with the champion.
    assert main(["--project", str(project), "predict", "--batch", "v1"]) == 0
    assert "predicted 64 rows of polarity/incoming v1" in capsys.readouterr().out
    assert main(["--project", str(project), "predict", "--batch", "v9"]) == 2


def test_deployment_trigger_starts_one_retrain_run_without_waiting(prefect_api):
    """`trigger: deployment` creates a flow run of the task's retrain deployment with the batch and project
    and returns at once (timeout=0): no worker has to pick it up for the monitor to go on."""
    from prefect.client.orchestration import get_client

    from tasks.monitor import retrain_deployment, trigger_retrain

    deployment = retrain_deployment("polarity")
    assert deployment == "retrain/polarity-retrain-on-drift"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("retrain")
        deployment_id = client.create_deployment(flow_id=flow_id, name="polarity-retrain-on-drift")
        fired = trigger_retrain(
            RetrainDecision(True, ["drift"]), "deployment", "v7", "/srv/potstill", deployment
        )
        assert fired["triggered"] and fired["mode"] == "deployment"
        run = client.read_flow_run(fired["flow_run_id"])
        assert run.deployment_id == deployment_id
        assert run.parameters == {"batch": "v7", "project": "/srv/potstill"}
        assert run.state.is_scheduled()
        quiet = trigger_retrain(
            RetrainDecision(False, ["no drift"]), "deployment", "v8", "/srv/potstill", deployment
        )
        assert quiet == {"triggered": False, "mode": "deployment"}


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "gsm8k" / "train.jsonl").exists(), reason="needs ../shared/data")
def test_inline_trigger_runs_the_retrain_flow_on_the_drifted_batch(
    prefect_api, project: Path, tiny_model_dir: Path
):
    from flows.distill import distill
    from flows.monitor_drift import monitor_drift
    from potstill.data.catalog import Catalog

    params = _params(project, tiny_model_dir)
    params["data"].update(max_prompts=96)
    params["monitor"].update(trigger="inline", reference_rows=96, checks=["mmd"])
    distill(params=params, project=str(project))
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    gsm = _jsonl(SHARED / "gsm8k" / "train.jsonl", "question", 48)
    catalog.save("incoming", [{"id": f"gsm-{i}", "text": t} for i, t in enumerate(gsm)])

    [out] = monitor_drift(params=params, project=str(project))["batches"]
    assert out["drifted"] and out["trigger"] and out["retrain"]["mode"] == "inline"
    retrained = out["retrain"]["result"]
    assert retrained["batch"] == "v1"
    run = MlflowClient().get_run(retrained["run_id"])
    assert run.data.tags["potstill.flow"] == "retrain" and run.info.status == "FINISHED"
