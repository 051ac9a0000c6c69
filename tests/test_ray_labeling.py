"""Teacher labeling on a real Ray cluster (teacher.executor: ray) through prefect-ray's RayTaskRunner,
reporting to a real Prefect server: the same labels and shard files as the local path, and a worker
SIGKILLed mid-shard loses no row and labels none twice.

The cluster is this test's own (`ray start --head --block` on 127.0.0.1, 2 CPUs, free ports, its own temp
dir), stopped by its process group, never by `ray stop` (which would stop every Ray on the machine). The
Prefect server comes from the project's infra/prefect/server.sh on a free port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from benchmarks.support.ray_head import LocalRayHead
from potstill.config import TeacherConfig
from potstill.kinds import KindSpec, label_rows
from potstill.labeling.ray_shards import is_loopback, resolve_address
from potstill.labeling.shards import label_sharded
from potstill.labeling.teacher.transformers_backend import TransformersBackend
from potstill.prompts import PromptTemplate

ROOT = Path(__file__).resolve().parents[1]
SERVER_SH = ROOT / "infra" / "prefect" / "server.sh"
PROMPT = PromptTemplate("sentiment", "Decide if the review is positive or negative.\nReview: {text}\nAnswer:")
LABELS = ["positive", "negative"]
SHARD_ROWS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(n: int, offset: int = 0) -> list[dict]:
    words = ["great", "awful", "fine", "boring", "lovely", "broken"]
    return [
        {"id": f"r{i}", "text": f"The {words[i % 6]} film number {i} had a {words[(i * 5) % 6]} ending."}
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalRayHead]:
    """A Ray head with 2 worker CPUs on 127.0.0.1, owned by this test session (stopped by its PID)."""
    head = LocalRayHead.start(num_cpus=2)
    try:
        yield head
    finally:
        import ray

        from tasks import label_ray

        if ray.is_initialized():
            ray.shutdown()
        label_ray._CONNECTED.clear()
        head.stop()


@pytest.fixture(scope="session")
def ray_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server (infra/prefect/server.sh) that this process and the Ray workers report to."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {
        **os.environ,
        "PREFECT_SERVER_PORT": str(_free_port()),
        "POTSTILL_PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-server-ray")),
    }
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        ["bash", str(SERVER_SH), "start"], env=env, capture_output=True, text=True, timeout=180
    )
    if done.returncode != 0:
        pytest.fail(f"server.sh start failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    url = f"http://127.0.0.1:{env['PREFECT_SERVER_PORT']}/api"
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
            APILogHandler().flush()
    finally:
        subprocess.run(["bash", str(SERVER_SH), "stop"], env=env, capture_output=True, timeout=60)


def _local_labels(model_dir: Path, rows: list[dict], folder: Path) -> list[dict]:
    """The naive reference: the local shard runner on the same model, prompt and shard size."""
    backend = TransformersBackend.from_spec(str(model_dir), batch_size=8)
    spec = KindSpec(kind="classification", labels=tuple(LABELS))
    return label_sharded(rows, lambda s: label_rows(backend, s, PROMPT, spec), folder, SHARD_ROWS).records


def _rows_per_id(folder: Path) -> Counter:
    """How often each row id appears over the committed shard files (each must be exactly once)."""
    counts: Counter = Counter()
    for path in sorted(folder.glob("shard-[0-9][0-9][0-9][0-9][0-9].jsonl")):
        counts.update(json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip())
    return counts


def _mark_then_wait(marks: Path, seconds: float, index: int) -> None:
    """Test hook run in the Ray worker after labeling a shard, before its commit: record which process
    holds the shard, then stay there long enough to be killed."""
    (marks / f"{index}-{os.getpid()}").write_text("")
    time.sleep(seconds)


def test_address_resolution(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address(None) == "10.0.0.5:6379"
    assert resolve_address("127.0.0.1:7000") == "127.0.0.1:7000"  # the config wins over the environment
    assert is_loopback(None) and is_loopback("127.0.0.1:6379") and is_loopback("ray://localhost:10001")
    assert not is_loopback("10.0.0.5:6379") and not is_loopback("ray://head.example:10001")


def test_ray_executor_needs_a_prefect_server(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.label_ray import PrefectServerRequired, label_on_ray

    cfg = TeacherConfig(model="unused", executor="ray", shard_rows=SHARD_ROWS)
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(PrefectServerRequired):
        label_on_ray(_rows(4), cfg, partial(label_rows, template=PROMPT, spec=KindSpec()), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before planning or starting anything


def test_ray_labels_equal_local_labels(ray_cluster, ray_prefect_server, tiny_model_dir, tmp_path):
    """label_with_teacher with executor=ray in a flow: the local path's folder, records and result keys;
    each of the 6 shards is a completed `label_shard-<i>` task run on the Prefect server."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    from tasks.label import label_with_teacher

    rows = _rows(6 * SHARD_ROWS)
    base = {"model": str(tiny_model_dir), "transformers": {"batch_size": 8}, "shard_rows": SHARD_ROWS}
    local_cfg = TeacherConfig(**base)
    ray_cfg = TeacherConfig(**base, executor="ray", ray={"address": ray_cluster.address})

    @flow(name="label-test")
    def label(cfg: TeacherConfig) -> dict:
        task = label_with_teacher.with_options(refresh_cache=True)  # the executor is not in the cache key
        return task(rows, cfg, PROMPT, "classification", LABELS, "test")

    local = label(local_cfg)
    folder = Path(local["shards_folder"])
    for p in folder.iterdir():  # same run folder for both executors: clear it so Ray labels everything
        p.unlink()
    state = label(ray_cfg, return_state=True)
    remote = state.result()

    assert remote["shards_folder"] == local["shards_folder"]
    assert set(remote) == set(local)
    assert remote["rows"] == local["rows"]
    assert remote["resumed_rows"] == 0 and remote["parse_errors"] == local["parse_errors"]
    assert remote["params"] == local["params"] and remote["latency_ms"] > 0
    assert sorted(p.name for p in folder.glob("shard-*.jsonl")) == [f"shard-{i:05d}.jsonl" for i in range(6)]
    assert _rows_per_id(folder) == Counter({r["id"]: 1 for r in rows})

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
        )
    shard_runs = sorted(r.name for r in runs if r.name.startswith("label_shard-"))
    assert shard_runs == [f"label_shard-{i}" for i in range(6)]
    assert all(r.state.is_completed() for r in runs if r.name.startswith("label_shard-"))
    assert any(r.name.startswith("probe_teacher") for r in runs)

    # A second run finds every shard committed: nothing is submitted, the records are the same.
    again = label(ray_cfg)
    assert again["resumed_rows"] == len(rows) and again["rows"] == local["rows"]


def test_killed_ray_worker_loses_nothing_and_labels_nothing_twice(
    ray_cluster, ray_prefect_server, tiny_model_dir, tmp_path
):
    """SIGKILL the worker holding a labeled-but-uncommitted shard: Ray re-runs the task on another
    worker, and every row ends up in exactly one shard file, with the local path's labels."""
    import ray

    from tasks.label_ray import label_on_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook lives in this test module
    rows = _rows(6 * SHARD_ROWS, offset=100)
    reference = _local_labels(tiny_model_dir, rows, tmp_path / "local")
    cfg = TeacherConfig(
        model=str(tiny_model_dir),
        transformers={"batch_size": 8},
        shard_rows=SHARD_ROWS,
        executor="ray",
        ray={"address": ray_cluster.address},
    )
    spec = KindSpec(kind="classification", labels=tuple(LABELS))
    marks = tmp_path / "marks"
    marks.mkdir()
    killed: list[tuple[int, int]] = []  # (shard index, pid)

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            for mark in marks.iterdir():
                index, pid = (int(x) for x in mark.name.split("-"))
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                assert b"ray" in cmdline and pid != os.getpid(), cmdline  # only ever our Ray worker
                os.kill(pid, signal.SIGKILL)
                killed.append((index, pid))
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    out = label_on_ray(
        rows,
        cfg,
        partial(label_rows, template=PROMPT, spec=spec),
        tmp_path / "run",
        before_commit=partial(_mark_then_wait, marks, 1.0),
    )
    killer.join(timeout=5)

    assert len(killed) == 1, "the kill never happened"
    index, pid = killed[0]
    holders = sorted(int(m.name.split("-")[1]) for m in marks.glob(f"{index}-*"))
    assert pid in holders and len(holders) == 2, "the killed shard was re-run exactly once, elsewhere"
    assert pid not in {o.pid for o in out.outcomes}, "no outcome comes from the killed worker"
    assert sorted(o.index for o in out.outcomes) == list(range(6)) and not any(
        o.skipped for o in out.outcomes
    )
    assert _rows_per_id(tmp_path / "run") == Counter({r["id"]: 1 for r in rows})  # none lost, none twice
    assert not list((tmp_path / "run").glob(".*.tmp")), "a killed attempt leaves no temp file behind"
    assert out.result.records == reference
    assert out.result.labeled_rows == len(rows) and out.result.resumed_rows == 0


def test_only_listed_variables_reach_ray_workers_and_no_hub_token(monkeypatch):
    """`HF_` used to be forwarded as a prefix, and HF_TOKEN with it, into Ray's job metadata."""
    from potstill.labeling.ray_shards import FORWARDED_ENV, worker_env

    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_other_secret")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("POTSTILL_CACHE", "/tmp/potstill-cache")
    monkeypatch.setenv("POTSTILL_TEACHER_API_KEY", "sk-not-for-ray")
    env = worker_env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["POTSTILL_CACHE"] == "/tmp/potstill-cache"
    assert set(env) <= set(FORWARDED_ENV)
    assert not any("secret" in v or "sk-" in v for v in env.values())
