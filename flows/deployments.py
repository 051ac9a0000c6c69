"""Deployments of the four flows for one task, served by one long-running process (`potstill deploy`).

Only wiring. Schedules, for task <task>:

| deployment                                  | when                                   |
|---------------------------------------------|----------------------------------------|
| `distill/<task>-distill-nightly`            | cron `0 2 * * *` (02:00 every night)   |
| `review_sync/<task>-review-sync`            | every 10 minutes                       |
| `monitor_drift/<task>-monitor-drift-hourly` | every hour                             |
| `retrain/<task>-retrain-on-drift`           | no schedule: the task's monitor starts it with
`run_deployment` |

Every deployment gets the project root and the run config resolved at deploy time (params.yaml plus
`-o` overrides, `task` included) as default parameters, so a scheduled run uses the same config as
`potstill run --task <task>`; after editing params.yaml, restart `potstill deploy`. A trigger's
parameters (e.g. `batch`) are merged over them. Each task's deployments have their own names, so several
tasks can be served at once (one `potstill deploy --task NAME` each, or `--task` repeated).

Served runs need a Prefect server (`PREFECT_API_URL`): the ephemeral API of `potstill run` lives only
as long as its process. `serve` pauses the schedules and exits 0 on SIGTERM or Ctrl-C; runs that have
not started stay `Scheduled` and are picked up when the deployments are served again.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class Schedule:
    """One deployment: the flow (module `flows.<flow>`, function `<flow>`), its name and its schedule
    (cron, or interval in seconds, or neither for a deployment that is only triggered)."""

    flow: str
    name: str
    cron: str | None = None
    interval_s: float | None = None
    description: str = ""


SCHEDULES: tuple[Schedule, ...] = (
    Schedule(
        "distill", "distill-nightly", cron="0 2 * * *", description="relabel, distill, register nightly"
    ),
    Schedule("review_sync", "review-sync", interval_s=600, description="pull finished reviews"),
    Schedule("monitor_drift", "monitor-drift-hourly", interval_s=3600, description="drift on new batches"),
    Schedule("retrain", "retrain-on-drift", description="started by monitor_drift on drift"),
)
FLOWS = tuple(s.flow for s in SCHEDULES)


def deployment_name(task: str, schedule: Schedule) -> str:
    """`<task>-<name>`: tasks served side by side never share a deployment."""
    return f"{task}-{schedule.name}"


def build_deployments(
    project: Path,
    params: dict[str, Any],
    only: list[str] | None = None,
    every: dict[str, float] | None = None,
) -> list[Any]:
    """RunnerDeployments for `serve`, for the task `params["task"]`. only: serve just these flows; every:
    flow -> interval in seconds, replacing its schedule (short intervals for tests and trials)."""
    task = str(params.get("task") or "polarity")
    unknown = sorted((set(only or []) | set(every or {})) - set(FLOWS))
    if unknown:
        raise ValueError(f"unknown flow(s) {unknown}; the deployable flows are {list(FLOWS)}")
    out = []
    for s in SCHEDULES:
        if only and s.flow not in only:
            continue
        flow = getattr(importlib.import_module(f"flows.{s.flow}"), s.flow)  # Prefect: after apply_defaults
        schedule: dict[str, Any] = {}
        if every and s.flow in every:
            schedule["interval"] = timedelta(seconds=every[s.flow])
        elif s.cron:
            schedule["cron"] = s.cron
        elif s.interval_s:
            schedule["interval"] = timedelta(seconds=s.interval_s)
        out.append(
            flow.to_deployment(
                name=deployment_name(task, s),
                parameters={"params": params, "project": str(project)},
                description=f"{task}: {s.description}",
                tags=["potstill", f"task:{task}"],
                **schedule,
            )
        )
    return out


def serve_deployments(deployments: list[Any], limit: int | None = 1) -> None:
    """Serve until SIGTERM or Ctrl-C, then pause the schedules and return. limit: flow runs at a time;
    one by default, since two trainings on a small machine only slow each other down and the catalog's
    workspace files are shared.

    Why not `prefect.serve`: in Prefect 3.8.8 its runner answers SIGTERM with `sys.exit(0)` from inside the
    event loop (its `stop()` call fails with "coroutine 'Runner.astop' was never awaited"), so the
    shutdown that pauses the schedules is cut off and the server keeps creating runs nobody serves. Here
    SIGTERM schedules the runner's own `astop()` on its loop: runs in flight are cancelled (state
    Cancelled, not left Running), the polling loops end, and the runner's exit pauses the schedules."""
    import asyncio

    from prefect.runner import Runner

    class _Runner(Runner):
        _stopping: ClassVar[set[asyncio.Task[None]]] = set()  # keeps the stop task referenced

        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            self._logger.info("SIGTERM received: cancelling runs in flight, pausing the schedules")
            loop = asyncio.get_running_loop()  # the handler runs in the main thread, inside the loop
            loop.call_soon_threadsafe(lambda: self._stopping.add(loop.create_task(self.astop())))

    runner = _Runner(pause_on_shutdown=True, limit=limit)
    for deployment in deployments:
        runner.add_deployment(deployment)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    print(f"serving {names}; SIGTERM or Ctrl-C stops (schedules are paused)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: asyncio cancels the runner, which pauses too
        asyncio.run(runner.start())
