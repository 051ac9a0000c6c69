"""Operating the student: scheduled deployments served against a real Prefect server, and the retrain flow
(new batch -> teacher labels -> next train_set -> continue from the champion -> gate), with rollback.

The Prefect server is started by the project's own `infra/prefect/server.sh` on a free port with a
temporary PREFECT_HOME; it is separate from the `prefect_api` test harness of the other flow tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from potstill.data.catalog import Catalog
from potstill.operations.retrain import normalise_text
from potstill.serving import find_student_folder

ROOT = Path(__file__).resolve().parents[1]
SERVER_SH = ROOT / "infra" / "prefect" / "server.sh"
MODEL = "polarity-student"  # the demo task's registered model
EXPERIMENT = "potstill-polarity"
POTSTILL = str(Path(sys.executable).with_name("potstill"))  # the console script of this venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server (server.sh start/stop); yields its API URL."""
    env = {
        **os.environ,
        "PREFECT_SERVER_PORT": str(_free_port()),
        "POTSTILL_PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-server")),
    }
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        ["bash", str(SERVER_SH), "start"], env=env, capture_output=True, text=True, timeout=180
    )
    if done.returncode != 0:
        pytest.fail(f"server.sh start failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    try:
        yield f"http://127.0.0.1:{env['PREFECT_SERVER_PORT']}/api"
    finally:
        subprocess.run(["bash", str(SERVER_SH), "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def on_server(prefect_server: str) -> Iterator[str]:
    """Flows called in this process report to the test's Prefect server."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield prefect_server
        APILogHandler().flush()  # send the queued run logs while the server is still up


def _copy_project(folder: Path) -> Path:
    import shutil

    shutil.copytree(ROOT / "catalog", folder / "catalog", ignore=shutil.ignore_patterns("data", "versions"))
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    return folder


# ---- (a) schedules: `potstill deploy` serves deployments; the scheduler runs them; SIGTERM stops cleanly


def _flow_runs(client: Any, deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )


@pytest.mark.slow
def test_deploy_serves_scheduled_runs_and_stops_on_sigterm(on_server: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    project = _copy_project(tmp_path)
    env = {**os.environ, "PREFECT_API_URL": on_server, "PREFECT_HOME": str(tmp_path / "prefect-client")}
    env.pop("LABEL_STUDIO_URL", None)
    log = (tmp_path / "deploy.log").open("w")
    cmd = [POTSTILL, "--project", str(project), "deploy"]
    cmd += ["--every", "monitor_drift=5", "--every", "review_sync=5"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 240
            names = (
                "distill/polarity-distill-nightly",
                "review_sync/polarity-review-sync",
                "monitor_drift/polarity-monitor-drift-hourly",
            )
            deployments: dict[str, Any] = {}
            while time.monotonic() < deadline and len(deployments) < 4:
                for name in (*names, "retrain/polarity-retrain-on-drift"):
                    with contextlib.suppress(ObjectNotFound):  # not registered yet
                        deployments[name] = client.read_deployment_by_name(name)
                assert proc.poll() is None, (tmp_path / "deploy.log").read_text()[-3000:]
                time.sleep(1)
            assert len(deployments) == 4, sorted(deployments)
            assert not deployments[
                "retrain/polarity-retrain-on-drift"
            ].schedules  # started by the monitor only
            crons = [s.schedule.cron for s in deployments["distill/polarity-distill-nightly"].schedules]
            assert crons == ["0 2 * * *"]
            assert deployments["distill/polarity-distill-nightly"].parameters["project"] == str(project)
            assert deployments["distill/polarity-distill-nightly"].parameters["params"]["task"] == "polarity"
            # What the served runs are checked against (flows.pipeline.check_served): the serving process's
            # own record of each deployment's project and config, the same as the server holds now.
            served = json.loads((project / ".cache" / "deploy" / f"served-{proc.pid}.json").read_text())
            assert served == {
                d.name: {"project": d.parameters["project"], "params": d.parameters["params"]}
                for d in deployments.values()
            }
            finals: dict[str, str] = {}
            while time.monotonic() < deadline and len(finals) < 2:
                for key in (
                    "monitor_drift/polarity-monitor-drift-hourly",
                    "review_sync/polarity-review-sync",
                ):
                    for run in _flow_runs(client, deployments[key].id):
                        if run.state and run.state.is_final():
                            finals[key] = run.state.type.value
                assert proc.poll() is None, (tmp_path / "deploy.log").read_text()[-3000:]
                time.sleep(1)
            # monitor_drift with no incoming batch completes; review_sync without Label Studio fails fast:
            # either way the scheduler created the run and the served process ran it.
            assert finals == {
                "monitor_drift/polarity-monitor-drift-hourly": "COMPLETED",
                "review_sync/polarity-review-sync": "FAILED",
            }, (tmp_path / "deploy.log").read_text()[-3000:]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            assert not list((project / ".cache" / "deploy").glob("served-*.json"))  # removed on exit
            for d in deployments.values():
                for run in _flow_runs(client, d.id):
                    assert run.state.type.value not in ("RUNNING", "PENDING"), (d.name, run.state)
                if d.schedules:
                    assert client.read_deployment(d.id).paused or not any(
                        s.active for s in client.read_deployment(d.id).schedules
                    ), d.name
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert (
        "needs a Prefect server"
        in subprocess.run(
            [POTSTILL, "--project", str(project), "deploy"],
            cwd=ROOT,
            env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
            capture_output=True,
            text=True,
            timeout=60,
        ).stderr
    )


# ---- (b)-(d) retrain


def _params(tiny_model_dir: Path, **promotion: Any) -> dict[str, Any]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["teacher"]["model"] = str(tiny_model_dir)
    params["data"].update(max_prompts=40, max_eval_rows=16)
    params["student"].update(
        layers=[0], batch_size=8, max_steps=2, eval_batch_size=16, learning_rate=1e-3, warmup_ratio=0.0
    )
    params["route"].update(threshold=None, budget=0.1)
    # A tiny learning rate: the retrained weights stay within ~1e-6 of where training started.
    params["retrain"].update(max_steps=2, learning_rate=1e-7)
    params["promotion"].update(promotion)
    return params


@pytest.fixture(scope="module")
def distilled(on_server: str, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A project after one tiny distill run (champion = version 1) and one incoming batch (v1)."""
    from flows.distill import distill

    project = _copy_project(tmp_path_factory.mktemp("retrain-project"))
    distill(params=_params(tiny_model_dir), project=str(project))
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    old = catalog.load("train_set")
    gold = catalog.load("gold")
    batch = [{"id": f"inc-{r['id']}", "text": r["text"], "label": r["label"]} for r in gold[300:330]]
    batch += [
        {"id": old[0]["id"], "text": old[0]["text"]},  # same id as a row of the previous train_set
        {"id": "inc-dup-text", "text": "  " + old[1]["text"].upper() + " "},  # same text, other id
        {"id": "inc-again", "text": gold[300]["text"]},  # a repeat inside the batch
    ]
    catalog.save("incoming", batch)
    return project


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _pruned_base(teacher: Path, folder: Path) -> dict[str, torch.Tensor]:
    """The untrained student of `_params` (layer 0 of the teacher), rebuilt: pruning is deterministic."""
    from potstill.models import load_model
    from potstill.training.student import prune_layers

    model, _ = load_model(str(teacher))
    prune_layers(model, [0]).save_pretrained(folder)
    return _weights(folder)


def _champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(MODEL, "champion").version)


@pytest.mark.slow
def test_retrain_continues_from_champion_and_a_failing_gate_keeps_it(
    distilled: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from flows.retrain import retrain

    client = MlflowClient()
    champion_before = _champion(client)
    champion_dir = find_student_folder(
        Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp_path)))
    )
    catalog = Catalog.from_file(distilled / "catalog" / "catalog.yaml").for_task("polarity")
    previous_tag = client.get_model_version(MODEL, champion_before).tags["lineage.data.train_set"]
    previous = catalog.load("train_set", previous_tag.split()[0])

    out = retrain(params=_params(tiny_model_dir, min_improvement=1.0), project=str(distilled))

    # The next train_set: previous + accepted new rows, de-duplicated by id and normalised text.
    assert out["batch"] == "v1" and out["previous_train_set"] == previous_tag.split()[0]
    merged = catalog.load("train_set", out["train_set"].split()[0])
    ids = [r["id"] for r in merged]
    texts = [normalise_text(r["text"]) for r in merged]
    assert len(ids) == len(set(ids)) and len(texts) == len(set(texts))
    new_ids = set(ids) - {r["id"] for r in previous}
    assert new_ids and all(i.startswith("inc-") for i in new_ids)
    batch = catalog.load("incoming")
    assert not {"inc-again", batch[0]["id"]} <= set(ids)  # same text twice in the batch: kept once at most
    assert out["rows"]["retrain_rows_duplicates"] >= 1
    assert (
        len(merged) == len(previous) - out["rows"]["retrain_rows_replaced"] + out["rows"]["retrain_rows_new"]
    )
    queue = {r["id"] for r in catalog.load("review_queue")}  # routed exactly as in the distill flow
    assert queue and queue <= {r["id"] for r in batch} and not queue & new_ids
    assert all("label" not in r or r["label"] in ("negative", "positive") for r in merged)
    # The batch's gold labels are for scoring only: every new training row carries the teacher's label.
    teacher = {r["id"]: r["label"] for r in catalog.load("teacher_labels")}
    assert {i: r["label"] for i, r in zip(ids, merged, strict=True) if i in new_ids} == {
        i: teacher[i] for i in new_ids
    }

    # Training started from the champion: tiny learning rate, so the result sits next to the champion's
    # weights and far from the fresh pruned student both were cut from.
    retrained_dir = find_student_folder(
        Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{out['registered']['version']}",
                                                 dst_path=str(tmp_path / "retrained")))
    )  # fmt: skip
    trained, champion_weights = _weights(retrained_dir), _weights(champion_dir)
    base = _pruned_base(tiny_model_dir, tmp_path / "base")  # what the distill run started from
    assert _max_diff(trained, champion_weights) < 1e-4 < _max_diff(champion_weights, base)
    assert not (distilled / "catalog/data/polarity/runs" / out["run_id"]).exists()  # run folder cleaned
    assert out["init_from"] == f"models:/{MODEL}@champion version {champion_before}"

    run = client.get_run(out["run_id"])
    assert run.data.tags["potstill.flow"] == "retrain" and run.data.tags["potstill.batch"] == "v1"
    assert run.data.params["retrain.init_from"] == out["init_from"]
    for name in (
        "student_accuracy",
        "student_base_accuracy",
        "teacher_accuracy",
        "new_slice_before_accuracy",
        "new_slice_after_accuracy",
        "new_slice_after_macro_f1",
        "retrain_rows_merged",
    ):
        assert name in run.data.metrics, name
    assert out["new_slice_rows"] == 30 and run.data.metrics["new_slice_rows"] == 30

    # (c) A gate that cannot pass: registered as challenger, the champion stays.
    reg = out["registered"]
    assert reg["promoted"] is False and reg["aliases"] == ["challenger"]
    assert _champion(client) == champion_before
    tags = client.get_model_version(MODEL, reg["version"]).tags
    assert tags["lineage.data.train_set"] == out["train_set"]
    assert tags["lineage.retrained_from"] == out["init_from"]
    assert tags["lineage.data.incoming"].startswith("v1 md5:")


@pytest.mark.slow
def test_promoted_retrain_then_rollback_restores_the_previous_champion(
    distilled: Path, tiny_model_dir: Path
) -> None:
    from flows.retrain import retrain
    from potstill.cli import main

    client = MlflowClient()
    before = _champion(client)
    out = retrain(params=_params(tiny_model_dir, min_improvement=None), project=str(distilled))
    assert out["registered"]["promoted"] is True  # no check enabled: promoted
    assert _champion(client) == out["registered"]["version"] != before
    assert str(client.get_model_version_by_alias(MODEL, "previous").version) == before

    assert main(["--project", str(distilled), "promote", "--rollback"]) == 0
    assert _champion(client) == before


@pytest.mark.slow
def test_logit_offline_retrain_labels_the_new_rows_with_signals(
    distilled: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A retrain with distill.method logit_offline: the new rows are labeled with stored top-k signals
    (teacher.store_signals is off in params.yaml; the method turns it on), and the rows carried over from
    the champion's train_set, which were labeled without signals, train on their labels."""
    from flows.retrain import retrain

    params = _params(tiny_model_dir, min_improvement=1.0)  # refused: the champion stays for other tests
    params["distill"]["method"] = "logit_offline"
    assert not params["teacher"].get("store_signals")
    champion = _champion(MlflowClient())
    out = retrain(params=params, project=str(distilled))
    run = MlflowClient().get_run(out["run_id"])
    assert run.data.tags["potstill.distill_method"] == "logit_offline"
    assert run.data.params["distill.method"] == "logit_offline"
    assert run.data.metrics["train_steps"] == 2
    assert _champion(MlflowClient()) == champion
    catalog = Catalog.from_file(distilled / "catalog" / "catalog.yaml").for_task("polarity")
    merged = catalog.load("train_set", out["train_set"].split()[0])
    new_ids = {r["id"] for r in merged if str(r["id"]).startswith("inc-")}
    from potstill.labeling.signals import load_signals, signal_key

    cache = Path(os.environ["POTSTILL_CACHE"])
    folders = [m.parent for m in (cache / "labels").glob("*/manifest.json") if any(m.parent.glob("*.npz"))]
    keys = {k for f in folders for k in load_signals(f)}
    assert new_ids and {signal_key(i) for i in new_ids} <= keys


def test_merge_rule_new_rows_win_and_replay_sample() -> None:
    from potstill.operations.retrain import continuation_rows, merge_train_sets

    old = [
        {"id": "a", "text": "A fine film.", "label": "positive"},
        {"id": "b", "text": "dull", "label": "negative"},
        {"id": "c", "text": "ok", "label": "positive"},
    ]
    new = [
        {"id": "a", "text": "A fine film.", "label": "negative"},  # same id: the newer label wins
        {"id": "x", "text": "  DULL ", "label": "positive"},  # same normalised text as b
        {"id": "y", "text": "new", "label": "positive"},
        {"id": "y2", "text": "NEW", "label": "negative"},  # repeat within the batch: first one wins
    ]
    merged = merge_train_sets(old, new, ["text"])
    assert [r["id"] for r in merged.rows] == ["c", "a", "x", "y"]
    assert merged.rows[1]["label"] == "negative"
    assert (merged.previous, merged.new, merged.replaced, merged.duplicates) == (3, 3, 2, 1)
    assert continuation_rows(merged, "merged", None, 0) == merged.rows
    replay = continuation_rows(merged, "new_plus_replay", 1, 0)
    assert [r["id"] for r in replay] == ["c", "a", "x", "y"] and len(replay) == 4
    assert len(continuation_rows(merged, "new_plus_replay", 0, 0)) == 3


# ---- (e) `monitor.trigger: deployment` end to end: the served retrain deployment runs the triggered run

SHARED = ROOT.parent / "shared" / "data"


def _questions(start: int, n: int) -> list[dict[str, str]]:
    """Distinct GSM8K questions: another domain than the movie reviews the champion was trained on."""
    import json

    with (SHARED / "gsm8k" / "train.jsonl").open() as f:
        texts = list(dict.fromkeys(json.loads(line)["question"] for line in f))
    return [{"id": f"gsm-{i}", "text": texts[i]} for i in range(start, start + n)]


def _wait_for(what: str, check: Any, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> Any:
    """Poll check() until it returns something truthy; fail with the served process's log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert proc.poll() is None, f"potstill deploy exited:\n{log.read_text()[-3000:]}"
        time.sleep(1)
    pytest.fail(f"{what}: not after {timeout_s:.0f}s\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "gsm8k" / "train.jsonl").exists(), reason="needs ../shared/data")
def test_drift_triggers_the_served_retrain_deployment_exactly_once(
    on_server: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """monitor_drift (trigger: deployment) creates a run of retrain/polarity-retrain-on-drift; the process of
    `potstill deploy` picks it up and runs it to COMPLETED (the retrain's MLflow run and model version
    exist); a second drifted batch inside the cooldown creates no second run."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.distill import distill
    from flows.monitor_drift import monitor_drift

    project = _copy_project(tmp_path / "project")
    params = _params(tiny_model_dir)
    params["monitor"].update(
        trigger="deployment", checks=["mmd"], reference_rows=40, n_permutations=200, cooldown_s=3600
    )
    # `potstill deploy` gives the deployment the config resolved from the project's params.yaml.
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    distill(params=params, project=str(project))
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    mlflow_client = MlflowClient()  # the project's store: distill configured it
    champion = _champion(mlflow_client)

    env = {
        **os.environ,
        "PREFECT_API_URL": on_server,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # pick the triggered run up within seconds
    }
    log_path = tmp_path / "deploy.log"
    log = log_path.open("w")
    cmd = [POTSTILL, "--project", str(project), "deploy", "--only", "retrain"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with get_client(sync_client=True) as client:

            def served_deployment() -> Any:
                with contextlib.suppress(ObjectNotFound):
                    d = client.read_deployment_by_name("retrain/polarity-retrain-on-drift")
                    # an earlier test may have registered the same name for another project
                    return d if d.parameters.get("project") == str(project) else None
                return None

            deployment = _wait_for("retrain deployment served", served_deployment, proc, log_path, 120)
            assert not deployment.schedules and deployment.parameters["params"]["retrain"]["max_steps"] == 2

            catalog.save("incoming", _questions(0, 40))
            [out] = monitor_drift(params=params, project=str(project))["batches"]
            assert out["batch"] == "v1" and out["drifted"] and out["trigger"], out["reasons"]
            assert out["retrain"]["mode"] == "deployment"
            flow_run_id = out["retrain"]["flow_run_id"]

            def finished() -> Any:
                run = client.read_flow_run(flow_run_id)
                return run if run.state is not None and run.state.is_final() else None

            run = _wait_for("triggered retrain run finished", finished, proc, log_path, 240)
            assert run.state.type.value == "COMPLETED", (run.state, log_path.read_text()[-3000:])
            assert run.deployment_id == deployment.id
            assert run.parameters["batch"] == "v1" and run.parameters["project"] == str(project)
            # The trigger sends batch and project only: the config is the deployment's (params.yaml's).
            assert run.parameters["params"] == deployment.parameters["params"]

            # The run did the retrain: its MLflow run is tagged with the Prefect flow run and the batch,
            # and it registered a new model version continued from the champion.
            [retrain_run] = mlflow_client.search_runs(
                [mlflow_client.get_experiment_by_name(EXPERIMENT).experiment_id],
                f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
            )
            assert retrain_run.data.tags["potstill.flow"] == "retrain"
            assert retrain_run.data.tags["potstill.batch"] == "v1"
            assert retrain_run.info.status == "FINISHED"
            assert retrain_run.data.params["retrain.init_from"].endswith(f"version {champion}")
            versions = mlflow_client.search_model_versions(f"run_id = '{retrain_run.info.run_id}'")
            assert len(versions) == 1 and versions[0].tags["lineage.data.incoming"].startswith("v1 md5:")

            # The same drift event goes on: detected again, but inside the cooldown no second run.
            catalog.save("incoming", _questions(40, 40))
            [again] = monitor_drift(params=params, project=str(project))["batches"]
            assert again["batch"] == "v2" and again["drifted"] and not again["trigger"]
            assert any("inside the cooldown" in r for r in again["reasons"])
            ours = [
                r for r in _flow_runs(client, deployment.id) if r.parameters.get("project") == str(project)
            ]
            assert [str(r.id) for r in ours] == [flow_run_id]
            assert [t["batch"] for t in catalog.load_json("monitor_state")["triggers"]] == ["v1"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
