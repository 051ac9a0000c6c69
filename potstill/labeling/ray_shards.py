"""Labeling on a Ray cluster: the pure parts (no Prefect, no MLflow) that run in the driver and in Ray
workers. The Prefect task and the RayTaskRunner wiring are in `tasks/label_ray.py`.

- Where Ray runs: `teacher.ray.address`, else `RAY_ADDRESS`, else a local Ray started for the run. A
  local or loopback cluster is kept on 127.0.0.1: Ray advertises the first non-loopback address unless
  `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, which must then be set before `ray.init`.
- One teacher replica per Ray worker process: `replica(cfg)` loads the backend on the first shard a worker
  runs and keeps it for the next ones (a worker that switches teacher drops the old one). On GPU clusters
  each replica asks for `teacher.ray.num_gpus`; a teacher larger than one GPU uses the vllm backend's own
  tensor parallelism inside its replica (`teacher.vllm.tensor_parallel_size: N` with `num_gpus: N`).
- A shard task is idempotent: Ray re-runs its body when a worker dies mid-task, so `label_shard` returns
  at once when the shard file already exists, and writes through `ShardRun.write` (temp file, fsync,
  rename): a killed attempt leaves at most a temp file, never a half shard, and no row is labeled twice
  into the folder.
- The run folder must be visible to every worker at the same path: one machine, or `POTSTILL_CACHE` on a
  shared filesystem. A worker that cannot see the folder's manifest fails its shard with that message.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potstill.kinds import Labeled
from potstill.labeling.shards import MANIFEST, ShardError, ShardRun

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Environment the Ray workers need to behave like this process: offline hub, quiet telemetry, the same
# model cache (converted GGUF weights live there). An explicit list, no prefixes: a prefix such as `HF_`
# also matched HF_TOKEN. Secrets (API keys, hub tokens) are not forwarded: set them on the cluster, they
# would show in Ray's job metadata.
FORWARDED_ENV = (
    "POTSTILL_CACHE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "DO_NOT_TRACK",
    "MLFLOW_DISABLE_TELEMETRY",
    "GX_ANALYTICS_ENABLED",
    "DVC_NO_ANALYTICS",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "PYTHONPATH",  # the project's tasks/ and flows/ (potstill.env.use_project_code)
)

_REPLICA: tuple[str, Any] | None = None  # (config key, backend) of this worker process


def resolve_address(configured: str | None) -> str | None:
    """The cluster to join: the config's address, else RAY_ADDRESS, else None (start a local Ray)."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def is_loopback(address: str | None) -> bool:
    """True for a local Ray (None) or an address on 127.0.0.0/8 / localhost."""
    if address is None:
        return True
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_env() -> dict[str, str]:
    """The environment variables forwarded to Ray workers through the job's runtime_env."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def init_kwargs(address: str | None) -> dict[str, Any]:
    """`ray.init` keyword arguments for `address` (None: a local Ray bound to 127.0.0.1).

    Side effect: sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for loopback clusters (and Ray's constant, if
    Ray is already imported): without it Ray rewrites `127.0.0.1:port` to the machine's first interface
    and advertises that. A remote cluster needs the real interface, so it is left alone."""
    if is_loopback(address):
        os.environ[LOOPBACK_ENV] = "0"
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None:  # Ray was imported before: it read the variable at import time
            constants.ENABLE_RAY_CLUSTER = False
        env = {**worker_env(), LOOPBACK_ENV: "0"}
    else:
        env = worker_env()
    kwargs: dict[str, Any] = {
        "namespace": "potstill",
        "runtime_env": {"env_vars": env},
        "log_to_driver": True,
        "configure_logging": False,
    }
    if address is None:
        kwargs.update(_node_ip_address="127.0.0.1", include_dashboard=False)
    return kwargs


def _settings(cfg: Any) -> dict[str, Any]:
    """The backend settings of a teacher config (`TeacherConfig.backend_settings`) or a plain mapping."""
    return cfg.backend_settings() if hasattr(cfg, "backend_settings") else dict(cfg)


def replica_key(cfg: Any) -> str:
    """What identifies a loaded replica: the backend settings, not the Ray placement fields."""
    return json.dumps(_settings(cfg), sort_keys=True, default=str)


def replica(cfg: Any) -> tuple[Any, float]:
    """This worker's teacher backend for `cfg` and the seconds spent loading it now (0 when cached).

    torch gets `num_cpus` threads (Ray only reserves CPUs, it does not pin threads), and a GPU replica
    defaults to `cuda`: Ray sets CUDA_VISIBLE_DEVICES to the worker's GPUs."""
    global _REPLICA
    key = replica_key(cfg)
    if _REPLICA is not None and _REPLICA[0] == key:
        return _REPLICA[1], 0.0
    _REPLICA = None  # one replica per worker: drop the old teacher before loading the new one
    import torch

    from potstill.labeling.teacher import load_backend

    placement = getattr(cfg, "ray", None)
    torch.set_num_threads(max(1, int(getattr(placement, "num_cpus", 1) or 1)))
    settings = _settings(cfg)
    on_gpu = getattr(placement, "num_gpus", 0)
    if on_gpu and settings.get("backend", "transformers") == "transformers" and not settings.get("device"):
        settings["device"] = "cuda"  # the worker's GPU; vLLM places itself
    start = time.perf_counter()
    backend = load_backend(settings)
    _REPLICA = (key, backend)
    return backend, time.perf_counter() - start


@dataclass(frozen=True)
class ShardOutcome:
    """What a shard task reports back: which process ran it, and how long labeling and loading took."""

    index: int
    rows: int
    pid: int
    host: str
    skipped: bool  # the shard file already existed (a re-run of a finished shard)
    label_s: float
    load_s: float


def open_shard(folder: Path, index: int) -> ShardRun:
    """The run folder's plan, read from its manifest; a clear error when this process cannot see it."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        raise ShardError(
            f"{manifest} is not visible on this Ray worker ({os.uname().nodename}): the shard folder must "
            "be on a filesystem every worker shares (set POTSTILL_CACHE to a shared path)"
        )
    shards = json.loads(manifest.read_text())["shards"]
    if not 0 <= index < len(shards):
        raise ShardError(f"shard {index} is not in the plan of {folder} ({len(shards)} shards)")
    return ShardRun(folder, shards)


LabelFn = Callable[[Any, list[dict[str, Any]]], list[Labeled]]  # (backend, shard rows) -> labeled rows


def label_shard(
    folder: Path,
    index: int,
    rows: list[dict[str, Any]],
    cfg: Any,
    label_fn: LabelFn,
    signals_top_k: int | None = None,
    before_commit: Callable[[int], None] | None = None,
) -> ShardOutcome:
    """Label shard `index` of the run in `folder` with this worker's replica and commit it atomically.

    `label_fn(backend, rows)` is what the local path runs per shard (e.g. `functools.partial(label_rows,
    template=..., spec=...)`): picklable, so Ray ships it to the worker. Returns at once when the shard
    is already committed (Ray re-ran a finished task). `before_commit(i)` runs after labeling, before
    the commit (tests use it to kill the worker with the work in flight). Signals are written first, so
    the `.jsonl` rename stays the commit point, as in `label_sharded`.
    """
    run = open_shard(folder, index)
    host = os.uname().nodename
    if run.shard_path(index).exists():
        return ShardOutcome(index, len(rows), os.getpid(), host, True, 0.0, 0.0)
    backend, load_s = replica(cfg)
    start = time.perf_counter()
    items = label_fn(backend, rows)
    label_s = time.perf_counter() - start
    if len(items) != len(rows):
        raise ShardError(f"shard {index}: labeler returned {len(items)} records for {len(rows)} rows")
    if before_commit is not None:
        before_commit(index)
    if signals_top_k:
        from potstill.labeling.signals import from_tokens, write_signals

        sig = [from_tokens(r["id"], it.tokens, signals_top_k) for r, it in zip(rows, items, strict=True)]
        write_signals(run.signals_path(index), sig)
    run.write(index, [it.record for it in items])
    return ShardOutcome(index, len(rows), os.getpid(), host, False, label_s, load_s)
