"""Step 2 on a Ray cluster (`teacher.executor: ray`): every labeling shard is a Prefect task submitted
through prefect-ray's `RayTaskRunner`, so each shard is a task run in the Prefect UI (`label_shard-<i>`,
under `label_with_teacher`), and Ray spreads them over its workers, one teacher replica per worker.

The shard plan and files are the local path's (`potstill.labeling.shards`): the driver opens the run folder
and its manifest, submits only unfinished shards, and merges, so a run resumes across executors and a shard
is never labeled twice into the folder. A worker killed mid-shard (SIGKILL, OOM, preemption) makes Ray
re-run the task body (`max_retries`); the re-run finds either nothing (the commit is an atomic rename) or
the finished shard, which it returns without labeling again.

Prefect on Ray needs a real Prefect server: each Ray worker reports its task runs to PREFECT_API_URL;
without one, every worker would start its own ephemeral API (~30 s each on 2 cores) and the UI would
show nothing, so the run stops with a message instead.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import get_current_settings

from potstill.config import TeacherConfig
from potstill.labeling.ray_shards import (
    LabelFn,
    ShardOutcome,
    init_kwargs,
    label_shard,
    replica,
    resolve_address,
)
from potstill.labeling.shards import DEFAULT_SHARD_ROWS, ShardError, ShardResult, ShardRun
from potstill.models import count_parameters, folder_size_bytes, weights_location
from tasks.tracking import run_logger

RAY_TASK_RETRIES = 3  # Ray re-runs a shard whose worker died this many times before the run fails
_CONNECTED: list[str | None] = []  # the address this module connected Ray to (empty: not connected)


class PrefectServerRequired(RuntimeError):
    """teacher.executor=ray without PREFECT_API_URL."""


def require_prefect_server() -> str:
    """The Prefect API URL the Ray workers will report to; a clear error when there is none."""
    url = get_current_settings().api.url
    if not url:
        raise PrefectServerRequired(
            "teacher.executor=ray needs a Prefect server: every Ray worker reports its shard task runs to "
            "it, and with the ephemeral API each worker would start its own (~30 s each). Start one "
            "(infra/prefect/server.sh start, or make services) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    return url


def connect(address: str | None) -> None:
    """Join the cluster at `address` (None: start a local Ray on 127.0.0.1), once per process.

    Connecting here rather than in RayTaskRunner keeps the connection, and so the workers and their
    loaded teacher replicas, for the next labeling of the run (prompts, then gold); Ray disconnects at
    exit. A Ray already initialized by the caller is used as it is."""
    kwargs = init_kwargs(address)  # before `import ray`: it reads the loopback setting at import
    import ray

    if ray.is_initialized():
        if not _CONNECTED or _CONNECTED[0] == address:
            return
        ray.shutdown()  # this module connected elsewhere before: follow the new config
    _CONNECTED.clear()
    ray.init(address, **kwargs)
    _CONNECTED.append(address)


@task(
    name="label_shard",
    task_run_name="label_shard-{index}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=0,  # worker deaths are retried by Ray; a labeling error is a bug to see, not to repeat
)
def label_shard_task(
    folder: str,
    index: int,
    rows: list[dict[str, Any]],
    cfg: TeacherConfig,
    label_fn: LabelFn,
    signals_top_k: int | None = None,
    before_commit: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Label one shard on this Ray worker's teacher replica and commit it (see
    potstill.labeling.ray_shards)."""
    outcome = label_shard(Path(folder), index, rows, cfg, label_fn, signals_top_k, before_commit)
    get_run_logger().info(
        "shard %d: %d rows in %.2fs on pid %d@%s%s",
        index,
        outcome.rows,
        outcome.label_s,
        outcome.pid,
        outcome.host,
        " (already committed: skipped)" if outcome.skipped else "",
    )
    return asdict(outcome)


@task(name="probe_teacher", cache_policy=NO_CACHE, persist_result=False)
def probe_teacher(cfg: TeacherConfig, latency_fn: Callable[[Any], float] | None) -> dict[str, float]:
    """One-row latency and size of the teacher as a replica serves it: the local path measures these
    in the flow's process, but on Ray the teacher is loaded in the workers only."""
    import torch

    backend, _ = replica(cfg)
    model = getattr(backend, "model", None)
    model = model if isinstance(model, torch.nn.Module) else None  # in-process weights only
    return {
        "latency_ms": latency_fn(backend) if latency_fn is not None else math.nan,
        "params": count_parameters(model) if model is not None else math.nan,
        "size_mb": folder_size_bytes(Path(weights_location(cfg.model))) / 1e6
        if model is not None
        else math.nan,
    }


def _remote_options(cfg: TeacherConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_cpus": cfg.ray.num_cpus, "max_retries": RAY_TASK_RETRIES}
    if cfg.ray.num_gpus:
        # Ray's default for GPU tasks is one call per worker process, which would reload the teacher for
        # every shard: keep the worker (and its replica) for the next shard instead.
        opts.update(num_gpus=cfg.ray.num_gpus, max_calls=0)
    return opts


@dataclass
class RayLabeling:
    """A labeling on Ray: the merged shard result, what each shard task reported, the teacher probe."""

    result: ShardResult
    outcomes: list[ShardOutcome]
    probe: dict[str, float] = field(default_factory=dict)

    @property
    def workers(self) -> list[str]:
        """The Ray worker processes (pid@host) that ran shards."""
        return sorted({f"{o.pid}@{o.host}" for o in self.outcomes})


def label_on_ray(
    rows: list[dict[str, Any]],
    cfg: TeacherConfig,
    label_fn: LabelFn,
    folder: Path,
    identity: dict[str, Any] | None = None,
    signals_top_k: int | None = None,
    latency_fn: Callable[[Any], float] | None = None,
    before_commit: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RayLabeling:
    """Label `rows` (each with a unique `id`) into `folder` with one Prefect task per unfinished shard
    on Ray, then merge: the Ray counterpart of `potstill.labeling.shards.label_sharded`, same arguments and
    files. `seconds` in the result is wall time from the first submit to the last shard (replica loading
    included). With `latency_fn(backend)`, a `probe_teacher` task measures the teacher on a replica.

    Fails, after every submitted shard has settled (finished ones stay committed, a rerun resumes from
    them), when a shard raised or its worker died more than `RAY_TASK_RETRIES` times."""
    import ray
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    require_prefect_server()
    row_ids = [r["id"] for r in rows]
    run = ShardRun.open(folder, row_ids, int(cfg.shard_rows or DEFAULT_SHARD_ROWS), identity)
    by_id = {json.dumps(r["id"]): r for r in rows}
    done = set(run.finished())
    pending = [i for i in range(len(run.shards)) if i not in done]
    resumed = sum(len(run.shards[i]) for i in done)
    if progress is not None and resumed:
        progress(resumed)
    address = resolve_address(cfg.ray.address)
    connect(address)
    outcomes: list[ShardOutcome] = []
    errors: list[BaseException] = []
    probe: dict[str, float] = {}
    start = time.perf_counter()
    with RayTaskRunner(address=address) as runner, remote_options(**_remote_options(cfg)):
        futures = {}
        for index in pending:
            params = {
                "folder": str(folder),
                "index": index,
                "rows": [by_id[json.dumps(i)] for i in run.shards[index]],
                "cfg": cfg,
                "label_fn": label_fn,
                "signals_top_k": signals_top_k,
                "before_commit": before_commit,
            }
            future = runner.submit(label_shard_task, params)
            futures[future.wrapped_future] = future
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            future = futures.pop(ready[0])
            try:
                outcome = ShardOutcome(**future.result())
            except BaseException as exc:  # keep waiting: the other shards still commit their work
                errors.append(exc)
                continue
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome.rows)
        seconds = time.perf_counter() - start
        if errors:
            raise RuntimeError(
                f"{len(errors)} of {len(pending)} shard(s) failed on Ray; the {len(outcomes)} finished ones "
                f"are committed in {folder} and a rerun resumes from them. First error: {errors[0]!r}"
            ) from errors[0]
        if latency_fn is not None:
            probe = runner.submit(probe_teacher, {"cfg": cfg, "latency_fn": latency_fn}).result()
    unseen = [o.index for o in outcomes if not run.shard_path(o.index).exists()]
    if unseen:
        raise ShardError(
            f"shard(s) {unseen[:10]} were committed on the workers but are not in {folder} here: the shard "
            "folder must be on a filesystem every worker shares (set POTSTILL_CACHE to a shared path)"
        )
    records = run.merge(row_ids)
    labeled = sum(o.rows for o in outcomes if not o.skipped)
    tokens, size = run.signal_footprint() if signals_top_k else (0, 0)
    out = RayLabeling(
        ShardResult(records, folder, resumed, labeled, seconds if pending else 0.0, tokens, size),
        outcomes,
        probe,
    )
    run_logger(__name__).info(
        "Ray: %d shard(s) on %d worker(s) %s in %.1fs (teacher replicas loaded in %.1fs); %d row(s) resumed",
        len(outcomes),
        len(out.workers),
        out.workers,
        out.result.seconds,
        sum(o.load_s for o in outcomes),
        resumed,
    )
    return out
