"""`potstill run`, `step`, `predict`, `monitor`, `review sync` and `deploy`: the commands that start flows.
Each imports Prefect (and MLflow) only when called, after the project's env defaults are applied."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from potstill.config import RunConfig
from potstill.data.catalog import Catalog
from potstill.data.task_files import missing_task_data
from potstill.errors import UserError
from potstill.files import atomic_write_text
from potstill.operations.deployment import SERVED_CONFIG_ENV


def task_catalog(cfg: RunConfig, root: Path) -> Catalog:
    """The catalog seen from the run config's task (an unknown task fails here, listing the known)."""
    return Catalog.from_file(root / "catalog" / "catalog.yaml", cfg.catalog).for_task(cfg.task)


def check_task(cfg: RunConfig, root: Path) -> None:
    """Before Prefect starts: the task exists and its data files are there and fit the declaration."""
    missing_task_data(task_catalog(cfg, root))


def _flows() -> None:
    """After the flows imported Prefect (which configures logging only when the root logger has no handler
    of the user's yet): every record also goes to the log file, and the terminal handlers drop user
    errors' tracebacks."""
    from potstill.cli.logs import quiet_user_tracebacks, start_file_log

    start_file_log()
    quiet_user_tracebacks()


def run(cfg: RunConfig, root: Path) -> int:
    from flows.distill import distill  # imports Prefect: after apply_defaults
    from potstill.cli.summary import render

    _flows()
    summary = distill(params=cfg.model_dump(mode="json"), project=str(root))
    render(summary)
    return 0


def step(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    from flows.steps import distill_step  # imports Prefect: after apply_defaults

    _flows()
    result = distill_step(args.name, params=cfg.model_dump(mode="json"), project=str(root))
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, default=str))
    return 0


def predict(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    from potstill.data.tasks import registry_target
    from tasks.predict import predict_batch  # imports Prefect and MLflow: after apply_defaults
    from tasks.tracking import configure

    _flows()
    configure(root)
    mon, catalog = cfg.monitor, task_catalog(cfg, root)
    target = registry_target(catalog.task(), cfg.registry)
    try:
        alias = args.alias or mon.alias
        out = predict_batch(catalog, mon.incoming, mon.predictions, target.model_name, alias, args.batch)
    except LookupError as exc:
        raise UserError(str(exc)) from exc
    served = out["model"]
    print(
        f"{served.name}@{served.alias} (version {served.version}) predicted "
        f"{len(out['predictions'])} rows of {catalog.full_name(mon.incoming)} {out['batch']} -> "
        f"{catalog.full_name(mon.predictions)} {out['predictions_version']}"
    )
    return 0


def monitor(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    from flows.monitor_drift import monitor_drift  # imports Prefect

    _flows()
    result = monitor_drift(params=cfg.model_dump(mode="json"), project=str(root), batch=args.batch)
    for b in result["batches"]:
        verdict = "drift" if b["drifted"] else "no drift"
        retrain = "retrain triggered" if b["trigger"] else "no retrain"
        print(f"{result['task']} incoming {b['batch']}: {verdict}, {retrain} ({'; '.join(b['reasons'])})")
    if not result["batches"]:
        print(
            f"{result['task']}: no new incoming batch "
            f"(monitored already: {', '.join(result['skipped']) or '-'})"
        )
    print(f"MLflow runs in {result['tracking_uri']}")
    return 0


def review(cfg: RunConfig, root: Path) -> int:
    from flows.review_sync import review_sync  # imports Prefect
    from potstill.review import ReviewServerError

    _flows()
    try:
        result = review_sync(params=cfg.model_dump(mode="json"), project=str(root))
    except ReviewServerError as exc:
        raise UserError(str(exc)) from exc
    stats = result["stats"] or {}
    print(
        f"{result['project']}: {result['verdicts']} rows with a verdict -> reviewed_labels "
        f"{result['version']}; {int(stats.get('review_reviewed', 0))} reviewed, "
        f"{int(stats.get('review_corrected', 0))} corrected, {int(stats.get('review_rejected', 0))} "
        f"rejected, {result['pending']} waiting; {result['delivered']} delivered from the outbox"
    )
    print(f"MLflow run {result['run_id']} in {result['tracking_uri']}")
    return 0


def deploy(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    """Serve the deployments (flows/deployments.py) of one or more tasks until SIGTERM/Ctrl-C."""
    if not os.environ.get("PREFECT_API_URL"):
        raise UserError(
            "deploy needs a Prefect server that outlives this process: start one with "
            "`infra/prefect/server.sh start` (or `make prefect-ui`) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    try:
        every = {flow: float(sec) for flow, _, sec in (e.partition("=") for e in args.every)}
    except ValueError:
        raise UserError(f"--every takes FLOW=SECONDS, got {args.every}") from None
    tasks = args.tasks or [cfg.task]
    for name in tasks:
        check_task(cfg.model_copy(update={"task": name}), root)
    from flows.deployments import build_deployments, serve_deployments  # imports Prefect: after defaults

    _flows()
    deployments: list[Any] = []
    for name in tasks:
        params = cfg.model_copy(update={"task": name}).model_dump(mode="json")
        try:
            deployments += build_deployments(root, params, args.only, every)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    served = {
        d.name: {"project": d.parameters["project"], "params": d.parameters["params"]} for d in deployments
    }
    served_file = root / ".cache" / "deploy" / f"served-{os.getpid()}.json"
    served_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(served_file, json.dumps(served))
    os.environ[SERVED_CONFIG_ENV] = str(served_file)  # the flow runs' processes check against it
    try:
        serve_deployments(deployments, limit=args.limit)
    finally:
        served_file.unlink(missing_ok=True)
    return 0
