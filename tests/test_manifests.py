"""infra/compose.yaml and infra/k8s, checked structurally: no Docker daemon, image or cluster is needed (where
a Compose or kubectl is installed, `docker compose config` and `kubectl kustomize` run too). Every server
asks for credentials (MLflow's basic-auth app, Prefect's API auth string, Ray's token, vLLM's API key, a
PostgreSQL role per service), placeholder secrets are refused at start (the check scripts are run here with
sh), Kubernetes pods run as non-root, and ingress is denied but for what each service needs."""

from __future__ import annotations

import configparser
import functools
import os
import re
import shutil
import stat
import subprocess
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"
K8S = INFRA / "k8s"
SECRET = "potstill-secrets"
PREFLIGHT = "preflight"
# Real-looking values for every secret compose.yaml requires (`${VAR:?...}`).
COMPOSE_SECRETS = {
    "POSTGRES_PASSWORD": "pg-superuser-0a1b2c",
    "POSTGRES_MLFLOW_PASSWORD": "pg-mlflow-3d4e5f",
    "POSTGRES_PREFECT_PASSWORD": "pg-prefect-6a7b8c",
    "MINIO_ROOT_PASSWORD": "minio-secret-9d0e1f",
    "MLFLOW_ADMIN_PASSWORD": "mlflow-admin-2a3b4c",
    "MLFLOW_FLASK_SECRET_KEY": "flask-5d6e7f",
    "PREFECT_API_AUTH_STRING": "admin:prefect-8a9b0c",
    "RAY_AUTH_TOKEN": "ray-token-1d2e3f",
    "LABEL_STUDIO_PASSWORD": "ls-4a5b6c",
    "LABEL_STUDIO_API_KEY": "f" * 40,
    "VLLM_API_KEY": "sk-vllm-7d8e9f",
}
# What a placeholder looks like: the check scripts must refuse each of these.
PLACEHOLDERS = ("", "change-me", "change-me-too", "admin:change-me-prefect")
LEGACY_EXAMPLE_TOKEN = "0123456789abcdef0123456789abcdef01234567"  # the old example's Label Studio key


# ---------------------------------------------------------------------------------------------- helpers


class MissingVariable(Exception):
    pass


_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation on a parsed compose file: `$$` is a literal `$`, `${VAR:-x}` and
    `${VAR-x}` default, `${VAR:?msg}` and `${VAR?msg}` are required (MissingVariable names the variable)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        current = env.get(name)
        missing = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if missing else current
        if op in (":?", "?"):
            if missing:
                raise MissingVariable(name)
            return current
        return current or ""

    return _VAR.sub(sub, value)


@functools.cache
def compose_text() -> str:
    return (INFRA / "compose.yaml").read_text()


def compose_raw() -> dict:
    return yaml.safe_load(compose_text())


def compose_resolved(env: dict[str, str] | None = None) -> dict:
    return interpolate(compose_raw(), COMPOSE_SECRETS if env is None else env)


def required_compose_variables() -> set[str]:
    return set(re.findall(r"\$\{(\w+):\?", compose_text()))


def example_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (INFRA / "compose.env.example").read_text().splitlines())
    return {k.strip(): v.strip() for k, v in (p for p in pairs if len(p) == 2) if not k.startswith("#")}


def run_check(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """A check script exactly as its container runs it (`sh -c SCRIPT NAME VAR...`), with only `env`."""
    assert argv[:2] == ["sh", "-c"], argv
    return subprocess.run(
        argv, env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=30
    )


def assert_check_refuses_placeholders(argv: list[str], names: list[str], good: dict[str, str]) -> None:
    done = run_check(argv, good)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    for name in names:
        for bad in (*PLACEHOLDERS, LEGACY_EXAMPLE_TOKEN):
            done = run_check(argv, {**good, name: bad})
            assert done.returncode != 0, (name, bad)
            assert name in done.stderr and "change-me" in done.stderr, done.stderr
            others = [n for n in names if n != name]
            assert not any(f": {n} is" in done.stderr for n in others), done.stderr  # names only the bad one
        unset = {k: v for k, v in good.items() if k != name}
        assert run_check(argv, unset).returncode != 0, name
    everything_bad = run_check(argv, {**good, **dict.fromkeys(names, "change-me")})
    assert everything_bad.returncode != 0
    assert all(name in everything_bad.stderr for name in names), everything_bad.stderr


def _runs(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def k8s_files() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))


@functools.cache
def k8s_text() -> str:
    return "".join((K8S / f).read_text() for f in k8s_files())


def k8s_docs() -> list[dict]:
    return [d for f in k8s_files() for d in yaml.safe_load_all((K8S / f).read_text()) if d]


def k8s_kinds() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs()}


RAY_LABELS = {"ray.io/cluster": "potstill-ray"}  # what KubeRay adds to its pods (and ray.io/node-type)
# The flow-run Jobs' pods, labelled by the work pool's base job template (see prefect-worker.yaml).
FLOW_RUN_LABELS = {"app.kubernetes.io/name": "potstill-flow-run", "app.kubernetes.io/part-of": "potstill"}


def pod_templates() -> dict[str, dict]:
    """Every Pod template in the manifests, by a name: Deployments, StatefulSets, Jobs, the RayCluster's head
    and worker groups. The labels are those the pods get (KubeRay adds its own to the Ray pods')."""
    pods = {}
    for doc in k8s_docs():
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            pods[doc["metadata"]["name"]] = doc["spec"]["template"]
        elif doc["kind"] == "RayCluster":
            name = doc["metadata"]["name"]
            head = doc["spec"]["headGroupSpec"]["template"]
            pods["ray-head"] = _with_labels(head, {**RAY_LABELS, "ray.io/node-type": "head"})
            groups = doc["spec"]["workerGroupSpecs"]
            for group in groups:
                labels = {**RAY_LABELS, "ray.io/node-type": "worker"}
                key = "ray-worker" if len(groups) == 1 else f"ray-worker-{group['groupName']}"
                pods[key] = _with_labels(group["template"], labels)
            assert name == "potstill-ray", name
    return pods


def _with_labels(template: dict, labels: dict[str, str]) -> dict:
    metadata = template.get("metadata") or {}
    return {**template, "metadata": {**metadata, "labels": {**(metadata.get("labels") or {}), **labels}}}


def containers(pod: dict) -> list[dict]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def secret_refs(container: dict, *, optional: bool = True) -> dict[str, str]:
    """env name -> key in potstill-secrets, for the container's env from the Secret."""
    refs = {}
    for var in container.get("env", []):
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref and (optional or not ref.get("optional")):
            assert ref["name"] == SECRET, var
            refs[var["name"]] = ref["key"]
    return refs


def k8s_env(container: dict, secret: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: secretKeyRef values from `secret`, `$(VAR)`
    references to earlier variables expanded."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            if ref["key"] in secret:
                env[var["name"]] = secret[ref["key"]]
            continue
        env[var["name"]] = re.sub(
            r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(var.get("value", ""))
        )
    return env


def _container(pod: dict, name: str) -> dict:
    return next(c for c in containers(pod) if c["name"] == name)


def main_container(pod: dict) -> dict:
    return pod["spec"]["containers"][0]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a pod's labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def admitted(policies: list[dict], pods: dict[str, dict[str, str]], target: str) -> dict[str, set]:
    """Which pods (by name) may open a connection to `target`, and on which ports (None: any)."""
    found: dict[str, set] = {}
    for policy in policies:
        spec = policy["spec"]
        if not selects(spec["podSelector"], pods[target]) or "Ingress" not in spec["policyTypes"]:
            continue
        for rule in spec.get("ingress", []):
            assert rule.get("from"), policy  # a rule without `from` admits every pod and every address
            ports = {p["port"] for p in rule.get("ports", [])} or {None}
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, peer  # no ipBlock, no other namespace
                for name, labels in pods.items():
                    if selects(peer["podSelector"], labels):
                        found.setdefault(name, set()).update(ports)
    return found


# ---------------------------------------------------------------------------------------------- compose


def test_compose_file_describes_the_same_services_on_loopback():
    """The services of infra/services/services.sh and more, every published port on the host's loopback."""
    services = compose_raw()["services"]
    assert set(services) >= {
        PREFLIGHT,
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
    mlflow = compose_resolved()["services"]["mlflow"]
    assert "--serve-artifacts" in " ".join(mlflow["command"])
    assert "s3://" in mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"]
    url = services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://")
    init = "./compose/postgres-init.sh:/docker-entrypoint-initdb.d/10-roles.sh:ro"
    assert init in services["postgres"]["volumes"]
    assert (INFRA / "compose" / "postgres-init.sh").exists()
    assert (INFRA.parent / services["prefect-worker"]["build"]["dockerfile"]).exists()


def test_compose_config_resolves_with_docker_compose():
    """`docker compose config` where a Compose is installed (the v2 plugin or Debian's docker-compose)."""
    tool = next(
        (cmd for cmd in (["docker", "compose"], ["docker-compose"]) if _runs([*cmd, "version"])), None
    )
    if tool is None:
        pytest.skip("no docker compose here: the structural checks of this file only")
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
    assert resolved["postgres"]["environment"]["POSTGRES_PASSWORD"] == COMPOSE_SECRETS["POSTGRES_PASSWORD"]
    missing = {k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"}
    failed = subprocess.run(
        [*tool, "-f", str(INFRA / "compose.yaml"), "config", "-q"],
        env=missing,
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "POSTGRES_PASSWORD" in failed.stderr  # secrets are required


def test_compose_secrets_are_required_and_all_checked_by_the_preflight():
    """Every secret is `${VAR:?...}` wherever it is used, the preflight checks exactly those, and the example
    env file has a refused change-me placeholder for each."""
    required = required_compose_variables()
    assert required == set(COMPOSE_SECRETS)
    for name in required:  # never used without `:?` (a default or a bare ${VAR} would let it through)
        uses = re.findall(rf"\$\{{{name}(?!\w)(\W.)?", compose_text())
        assert uses and all(u == ":?" for u in uses), (name, uses)
        with pytest.raises(MissingVariable, match=name):
            compose_resolved({k: v for k, v in COMPOSE_SECRETS.items() if k != name})
        with pytest.raises(MissingVariable, match=name):
            compose_resolved({**COMPOSE_SECRETS, name: ""})
    assert not re.search(r"\$\{[A-Z]", yaml.safe_dump(compose_resolved()))  # every ${VAR} resolved

    preflight = compose_raw()["services"][PREFLIGHT]
    assert set(preflight["command"]) == required
    assert set(preflight["environment"]) == required
    for name, value in preflight["environment"].items():
        assert value.startswith(f"${{{name}:?"), (name, value)

    example = example_env()
    assert required <= set(example)
    used = set(re.findall(r"\$\{(\w+)", compose_text()))
    assert set(example) <= used, set(example) - used  # nothing in the example that compose ignores
    for name in required:
        assert example[name].startswith("change-me") or ":change-me" in example[name], name
    assert "refused" in (INFRA / "compose.env.example").read_text()


def test_every_compose_service_waits_for_the_preflight():
    services = compose_raw()["services"]
    preflight = services[PREFLIGHT]
    assert preflight["restart"] == "no" and not preflight.get("ports") and not preflight.get("depends_on")
    others = {svc["image"] for name, svc in services.items() if name != PREFLIGHT}
    assert preflight["image"] in others  # an image the stack pulls anyway
    for name, svc in services.items():
        if name == PREFLIGHT:
            continue
        assert svc["depends_on"][PREFLIGHT] == {"condition": "service_completed_successfully"}, name


def compose_preflight_argv(env: dict[str, str] | None = None) -> list[str]:
    preflight = compose_resolved(env)["services"][PREFLIGHT]
    return [*preflight["entrypoint"], *preflight["command"]]


def test_compose_preflight_refuses_placeholder_secrets():
    """The preflight's own script, run with sh as its container runs it: real values pass, an empty,
    unset or change-me value (or the old example's Label Studio token) fails naming the variable."""
    argv = compose_preflight_argv()
    names = compose_raw()["services"][PREFLIGHT]["command"]
    assert_check_refuses_placeholders(argv, names, COMPOSE_SECRETS)
    example = example_env()
    done = run_check(argv, example)  # the example env file as it is: refused, every secret named
    assert done.returncode != 0
    assert all(name in done.stderr for name in names), done.stderr


def test_compose_servers_require_credentials():
    services = compose_resolved()["services"]
    raw = compose_raw()["services"]

    mlflow = services["mlflow"]
    script = " ".join(mlflow["command"])
    assert "--app-name basic-auth" in script
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == COMPOSE_SECRETS["MLFLOW_ADMIN_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == COMPOSE_SECRETS["MLFLOW_FLASK_SECRET_KEY"]
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"
    assert "/health" in " ".join(raw["mlflow"]["healthcheck"]["test"])  # unauthenticated

    server, worker = services["prefect-server"]["environment"], services["prefect-worker"]["environment"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == COMPOSE_SECRETS["PREFECT_API_AUTH_STRING"]
    assert worker["PREFECT_API_AUTH_STRING"] == server["PREFECT_SERVER_API_AUTH_STRING"]
    assert worker["MLFLOW_TRACKING_USERNAME"] == env["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert worker["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]

    head = services["ray-head"]
    assert head["environment"]["RAY_AUTH_MODE"] == "token"
    assert head["environment"]["RAY_AUTH_TOKEN"] == COMPOSE_SECRETS["RAY_AUTH_TOKEN"]
    assert worker["RAY_AUTH_MODE"] == "token"
    assert worker["RAY_AUTH_TOKEN"] == head["environment"]["RAY_AUTH_TOKEN"]
    command = head["command"]
    assert "--include-dashboard=false" in command or "--dashboard-host=127.0.0.1" in command, command
    assert not any("dashboard-host=0.0.0.0" in arg for arg in command)
    assert not any(str(p).rsplit(":", 1)[-1] == "8265" for p in head.get("ports", []))  # not published

    vllm = services["vllm-openai"]["command"]
    assert vllm[vllm.index("--api-key") + 1] == COMPOSE_SECRETS["VLLM_API_KEY"]
    assert worker["POTSTILL_TEACHER_API_KEY"] == COMPOSE_SECRETS["VLLM_API_KEY"]
    assert worker["POTSTILL_TEACHER_API_HOSTS"] == "vllm-openai"


def test_compose_services_connect_to_postgres_with_their_own_role():
    services = compose_resolved()["services"]
    mlflow = services["mlflow"]["environment"]
    prefect = services["prefect-server"]["environment"]
    for url, role, database in (
        (mlflow["MLFLOW_BACKEND_STORE_URI"], "mlflow", "mlflow"),
        (mlflow["MLFLOW_AUTH_DATABASE_URI"], "mlflow", "mlflow_auth"),
        (prefect["PREFECT_SERVER_DATABASE_CONNECTION_URL"], "prefect", "prefect"),
    ):
        parts = urlsplit(url)
        assert parts.username == role, url  # not the superuser
        assert parts.password == COMPOSE_SECRETS[f"POSTGRES_{role.upper()}_PASSWORD"]
        assert (parts.hostname, parts.port, parts.path) == ("postgres", 5432, f"/{database}")
    postgres = services["postgres"]["environment"]
    assert postgres["POSTGRES_USER"] == "potstill"
    assert postgres["POSTGRES_MLFLOW_PASSWORD"] == COMPOSE_SECRETS["POSTGRES_MLFLOW_PASSWORD"]
    assert postgres["POSTGRES_PREFECT_PASSWORD"] == COMPOSE_SECRETS["POSTGRES_PREFECT_PASSWORD"]


def test_postgres_init_script_gives_each_service_its_own_role():
    path = INFRA / "compose" / "postgres-init.sh"
    script = path.read_text()
    assert subprocess.run(["sh", "-n", str(path)], capture_output=True).returncode == 0
    sql = " ".join(script.split())
    for role in ("mlflow", "prefect"):
        create = re.search(rf"CREATE ROLE {role} ([^;]*);", sql)
        assert create, role
        options = create.group(1).split()
        assert {"LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE"} <= set(options), options
        assert options[options.index("PASSWORD") + 1] == f":'{role}_password'"  # a psql variable, quoted
        assert f'{role}_password="$POSTGRES_{role.upper()}_PASSWORD"' in sql
    for database, owner in (("mlflow", "mlflow"), ("mlflow_auth", "mlflow"), ("prefect", "prefect")):
        assert f"CREATE DATABASE {database} OWNER {owner};" in sql
    revoke = re.search(r"REVOKE CONNECT[^;]* ON DATABASE ([^;]*) FROM PUBLIC;", sql)
    assert revoke and {d.strip() for d in revoke.group(1).split(",")} == {"mlflow", "mlflow_auth", "prefect"}
    assert "ON_ERROR_STOP=1" in sql
    # Kubernetes runs the same script.
    init = k8s_kinds()[("ConfigMap", "postgres-init")]["data"]
    assert list(init.values()) == [script]


def test_mlflow_server_image_is_the_client_version():
    expected = f"ghcr.io/mlflow/mlflow:v{version('mlflow')}-full"
    assert compose_raw()["services"]["mlflow"]["image"] == expected
    pod = pod_templates()["mlflow"]
    assert {c["image"] for c in containers(pod)} == {expected}
    # Likewise the Prefect server and Ray (the Ray client must match the cluster exactly).
    prefect = f"prefecthq/prefect:{version('prefect')}-"
    assert compose_raw()["services"]["prefect-server"]["image"].startswith(prefect)
    for name in ("prefect-server", "prefect-worker"):
        assert all(c["image"].startswith(prefect) for c in containers(pod_templates()[name])), name
    assert compose_raw()["services"]["ray-head"]["image"].startswith(f"rayproject/ray:{version('ray')}-")
    assert k8s_kinds()[("RayCluster", "potstill-ray")]["spec"]["rayVersion"] == version("ray")


def fake_mlflow(tmp_path: Path) -> Path:
    """A `mlflow` on PATH that records its arguments instead of serving."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "mlflow"
    exe.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\n')
    exe.chmod(0o755)
    return bin_dir


def assert_mlflow_start_writes_its_auth_config(argv: list[str], env: dict[str, str], tmp_path: Path):
    ini = tmp_path / "basic_auth.ini"
    env = {**env, "MLFLOW_AUTH_CONFIG_PATH": str(ini)}
    path = f"{fake_mlflow(tmp_path)}:{os.environ['PATH']}"
    done = subprocess.run(argv, env={**env, "PATH": path}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "args").read_text().split("\n")
    assert args[:3] == ["server", "--app-name", "basic-auth"], args
    assert "--serve-artifacts" in args
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600  # it holds the auth store's password
    config = configparser.ConfigParser()  # as mlflow.server.auth.config reads it (with % interpolation)
    assert config.read(ini) == [str(ini)]
    section = config["mlflow"]
    assert section["database_uri"] == env["MLFLOW_AUTH_DATABASE_URI"]
    assert urlsplit(section["database_uri"]).path == "/mlflow_auth"
    assert section["admin_username"] == env["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert "admin_password" not in section  # only in the environment
    assert section["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert section["default_permission"] in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}


def test_compose_mlflow_writes_its_auth_config_at_start(tmp_path: Path):
    mlflow = compose_resolved()["services"]["mlflow"]
    assert mlflow["command"][:2] == ["sh", "-c"]
    assert_mlflow_start_writes_its_auth_config(mlflow["command"], mlflow["environment"], tmp_path)


# ------------------------------------------------------------------------------------------- kubernetes

K8S_SECRET = {  # a potstill-secrets with real-looking values for every key the manifests read
    "postgres-password": "pg-superuser-0a1b2c",
    "postgres-mlflow-password": "pg-mlflow-3d4e5f",
    "postgres-prefect-password": "pg-prefect-6a7b8c",
    "s3-access-key": "potstill",
    "s3-secret-key": "minio-secret-9d0e1f",
    "mlflow-admin-password": "mlflow-admin-2a3b4c",
    "mlflow-flask-secret-key": "flask-5d6e7f",
    "prefect-api-auth-string": "admin:prefect-8a9b0c",
    "ray-auth-token": "ray-token-1d2e3f",
    "vllm-api-key": "sk-vllm-7d8e9f",
}


def test_k8s_manifests_are_well_formed():
    """Validated only (no cluster here): every document has apiVersion, kind and a name; the kustomization
    lists every file; selectors match their workloads; secrets come from one Secret."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = list(k8s_files())
    assert "networkpolicy.yaml" in files
    assert sorted(kustomization["resources"]) == files
    docs = k8s_docs()
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    kinds = k8s_kinds()
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
    refs = {m.group(1) for m in re.finditer(r"secretKeyRef: \{name: ([\w-]+)", k8s_text())}
    assert refs == {SECRET}
    keys = {k for pod in pod_templates().values() for c in containers(pod) for k in secret_refs(c).values()}
    assert keys == set(K8S_SECRET) | {"hf-token"}
    assert all(d["kind"] != "Secret" for d in docs)  # created by hand, see infra/README.md

    if shutil.which("kubectl"):  # kustomize is built into kubectl and needs no cluster
        done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        built = [d for d in yaml.safe_load_all(done.stdout) if d]
        assert len(built) == len(docs)
        assert all(d["metadata"].get("namespace") == "potstill" for d in built if d["kind"] != "Namespace")


def test_readme_creates_the_secret_the_manifests_read():
    readme = (INFRA / "README.md").read_text()
    command = re.search(r"kubectl -n potstill create secret generic potstill-secrets(.*?)```", readme, re.S)
    assert command, "infra/README.md lost its `kubectl create secret` command"
    literal = set(re.findall(r"^\s*--from-literal=([\w-]+)=", command.group(1), re.M))
    assert literal == set(K8S_SECRET)  # hf-token, the optional one, is mentioned in a comment
    for name in COMPOSE_SECRETS:
        assert f"`{name}`" in readme, name


def test_k8s_pods_run_as_non_root():
    pods = pod_templates()
    assert {
        "postgres",
        "minio",
        "minio-buckets",
        "mlflow",
        "prefect-server",
        "prefect-worker",
        "vllm-openai",
        "ray-head",
        "ray-worker",
    } <= set(pods)
    for name, pod in pods.items():
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True, name
        for key in ("runAsUser", "runAsGroup", "fsGroup"):
            assert isinstance(security[key], int) and security[key] > 0, (name, key)
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in containers(pod):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert not context.get("privileged") and "add" not in context["capabilities"]
            assert context.get("runAsUser", 1) != 0 and context.get("runAsNonRoot", True) is True
    assert pods["postgres"]["spec"]["securityContext"]["runAsUser"] == 999  # the image's postgres user
    assert pods["ray-head"]["spec"]["securityContext"]["runAsUser"] == 1000  # the image's user
    dockerfile = (INFRA / "compose" / "potstill.Dockerfile").read_text()
    # The potstill image (the Ray pods, the flow runs) runs as uid 1000 too.
    assert dockerfile.rstrip().splitlines()[-1] == "USER 1000:1000"
    # Images that write to HOME or a cache get a writable emptyDir there (uid 1000 has no home in them).
    for name in ("mlflow", "prefect-server", "prefect-worker", "minio", "minio-buckets", "vllm-openai"):
        pod = pods[name]
        main = main_container(pod)
        home = k8s_env(main, K8S_SECRET)["HOME"]
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert home in mounts and "emptyDir" in volumes[mounts[home]], name
    vllm = k8s_env(main_container(pods["vllm-openai"]), K8S_SECRET)
    assert vllm["HF_HOME"].startswith(vllm["HOME"] + "/")


def test_k8s_network_policies_deny_ingress_but_what_each_service_needs():
    policies = [d for d in k8s_docs() if d["kind"] == "NetworkPolicy"]
    assert all(d["apiVersion"] == "networking.k8s.io/v1" for d in policies)
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]  # default-deny ingress, every pod

    pods = {name: pod["metadata"]["labels"] for name, pod in pod_templates().items()}
    pods["flow-run"] = FLOW_RUN_LABELS
    pods["outsider"] = {"app.kubernetes.io/name": "something-else"}  # any other pod in the namespace

    postgres = admitted(policies, pods, "postgres")
    assert set(postgres) == {"mlflow", "prefect-server"}
    assert all(ports == {5432} for ports in postgres.values())
    minio = admitted(policies, pods, "minio")
    assert set(minio) == {"mlflow", "minio-buckets", "flow-run", "ray-head", "ray-worker"}
    for server in ("mlflow", "prefect-server", "vllm-openai", "ray-head"):
        sources = admitted(policies, pods, server)
        assert "flow-run" in sources and "outsider" not in sources, server
        assert all(pods[s].get("app.kubernetes.io/part-of") == "potstill" for s in sources), server
    assert {"prefect-worker", "ray-worker"} <= set(admitted(policies, pods, "prefect-server"))
    assert "ray-worker" in admitted(policies, pods, "ray-head")
    assert set(admitted(policies, pods, "ray-worker")) == {"ray-head", "ray-worker"}
    for name in ("prefect-worker", "minio-buckets", "flow-run"):
        assert admitted(policies, pods, name) == {}, name  # nothing calls them
    # Every Service stays reachable on its port from something.
    for service in (d for d in k8s_docs() if d["kind"] == "Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        target = next(n for n, labels in pods.items() if selects(selector, labels))
        sources = admitted(policies, pods, target)
        ports = {p["port"] for p in service["spec"]["ports"]}
        assert sources and any(s & ports or None in s for s in sources.values()), service["metadata"]["name"]
    # The flow-run Jobs get these labels from the work pool's base job template: documented there.
    lines = (K8S / "prefect-worker.yaml").read_text().splitlines()
    comments = " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))
    for key, value in FLOW_RUN_LABELS.items():
        assert f"{key}: {value}" in comments, key


def test_k8s_servers_require_credentials():
    pods = pod_templates()
    mlflow = main_container(pods["mlflow"])
    mlflow_env = k8s_env(mlflow, K8S_SECRET)
    assert "--app-name basic-auth" in " ".join(mlflow["command"])
    assert secret_refs(mlflow)["MLFLOW_AUTH_ADMIN_PASSWORD"] == "mlflow-admin-password"
    assert secret_refs(mlflow)["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "mlflow-flask-secret-key"
    assert mlflow["readinessProbe"]["httpGet"]["path"] == "/health"  # unauthenticated

    server = main_container(pods["prefect-server"])
    assert secret_refs(server)["PREFECT_SERVER_API_AUTH_STRING"] == "prefect-api-auth-string"
    assert server["readinessProbe"]["httpGet"]["path"] == "/api/health"
    assert secret_refs(main_container(pods["prefect-worker"]))["PREFECT_API_AUTH_STRING"] == (
        "prefect-api-auth-string"
    )

    cluster = k8s_kinds()[("RayCluster", "potstill-ray")]["spec"]
    params = cluster["headGroupSpec"]["rayStartParams"]
    assert params.get("dashboard-host") == "127.0.0.1" or params.get("include-dashboard") == "false"
    for name in ("ray-head", "ray-worker"):
        ray = main_container(pods[name])
        assert k8s_env(ray, K8S_SECRET)["RAY_AUTH_MODE"] == "token", name
        assert secret_refs(ray)["RAY_AUTH_TOKEN"] == "ray-auth-token", name
        ports = ray.get("ports", [])
        assert all(p["containerPort"] != 8265 and p["name"] != "dashboard" for p in ports), name
    worker = k8s_env(main_container(pods["ray-worker"]), K8S_SECRET)
    assert worker["MLFLOW_TRACKING_PASSWORD"] == K8S_SECRET["mlflow-admin-password"]
    assert worker["PREFECT_API_AUTH_STRING"] == K8S_SECRET["prefect-api-auth-string"]

    vllm = main_container(pods["vllm-openai"])
    args = vllm["args"]
    assert args[args.index("--api-key") + 1] == "$(VLLM_API_KEY)"
    assert secret_refs(vllm)["VLLM_API_KEY"] == "vllm-api-key"
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"

    # PostgreSQL: each server with its own role, the superuser's password only in postgres itself.
    prefect_env = k8s_env(server, K8S_SECRET)
    for url, role, database in (
        (mlflow_env["MLFLOW_BACKEND_STORE_URI"], "mlflow", "mlflow"),
        (mlflow_env["MLFLOW_AUTH_DATABASE_URI"], "mlflow", "mlflow_auth"),
        (prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"], "prefect", "prefect"),
    ):
        parts = urlsplit(url)
        assert parts.username == role, url
        assert parts.password == K8S_SECRET[f"postgres-{role}-password"]
        assert (parts.hostname, parts.path) == ("postgres", f"/{database}")
    postgres = k8s_env(main_container(pods["postgres"]), K8S_SECRET)
    assert postgres["POSTGRES_USER"] == "potstill"
    assert postgres["POSTGRES_MLFLOW_PASSWORD"] == K8S_SECRET["postgres-mlflow-password"]
    assert postgres["POSTGRES_PREFECT_PASSWORD"] == K8S_SECRET["postgres-prefect-password"]
    readers = {
        name
        for name, pod in pods.items()
        for c in containers(pod)
        if "postgres-password" in secret_refs(c).values()
    }
    assert readers == {"postgres"}


def test_k8s_mlflow_writes_its_auth_config_at_start(tmp_path: Path):
    mlflow = main_container(pod_templates()["mlflow"])
    assert_mlflow_start_writes_its_auth_config(mlflow["command"], k8s_env(mlflow, K8S_SECRET), tmp_path)


def test_k8s_init_containers_refuse_placeholder_secrets():
    """Every workload that reads potstill-secrets first runs check-secrets over every secret its containers
    read: the script compose's preflight runs, run here with sh as the kubelet would."""
    compose_script = compose_preflight_argv()[2]
    for name, pod in pod_templates().items():
        main = pod["spec"]["containers"]
        needed = {key for c in main for key in secret_refs(c, optional=False).values()}
        if not needed:
            continue
        check = _container(pod, "check-secrets")
        assert check in pod["spec"]["initContainers"], name
        assert check["image"] == main[0]["image"], name  # no other image to pull
        assert check["command"][:2] == ["sh", "-c"] and check["command"][2] == compose_script, name
        refs = secret_refs(check)
        assert set(check["args"]) == set(refs), name  # checks every variable it gets
        assert set(refs.values()) == needed, name  # every secret the workload reads, no other
        argv = [*check["command"], *check["args"]]
        good = k8s_env(check, K8S_SECRET)
        assert_check_refuses_placeholders(argv, check["args"], good)
