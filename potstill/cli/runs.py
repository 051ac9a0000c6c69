"""`potstill run`, `step`, `predict`, `review sync` and `deploy`: the commands that start flows. Each
imports Prefect (and MLflow) only when called, after the project's env defaults are applied."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from potstill.catalog import Catalog
from potstill.config import RunConfig


def run(cfg: RunConfig, root: Path) -> int:
    from flows.distill import distill  # imports Prefect: after apply_defaults
    from potstill.summary import render

    summary = distill(params=cfg.model_dump(mode="json"), project=str(root))
    render(summary)
    return 0


def step(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    from flows.steps import distill_step  # imports Prefect: after apply_defaults

    result = distill_step(args.name, params=cfg.model_dump(mode="json"), project=str(root))
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, default=str))
    return 0


def predict(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    from tasks.predict import predict_batch  # imports Prefect and MLflow: after apply_defaults
    from tasks.tracking import configure

    configure(root)
    mon = cfg.monitor
    try:
        out = predict_batch(
            Catalog.from_file(root / "catalog" / "catalog.yaml", cfg.catalog),
            mon.incoming,
            mon.predictions,
            cfg.registry.model_name,
            args.alias or mon.alias,
            args.batch,
        )
    except LookupError as exc:
        print(f"potstill: {exc}", file=sys.stderr)
        return 2
    served = out["model"]
    print(
        f"{served.name}@{served.alias} (version {served.version}) predicted "
        f"{len(out['predictions'])} rows of {mon.incoming} {out['batch']} -> "
        f"{mon.predictions} {out['predictions_version']}"
    )
    return 0


def review(cfg: RunConfig, root: Path) -> int:
    from flows.review_sync import ReviewNotConfigured, review_sync  # imports Prefect
    from potstill.review import ReviewServerError

    try:
        result = review_sync(params=cfg.model_dump(mode="json"), project=str(root))
    except (ReviewNotConfigured, ReviewServerError) as exc:
        print(f"potstill: {exc}", file=sys.stderr)
        return 2
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
    """Serve the deployments (flows/deployments.py) until SIGTERM/Ctrl-C."""
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "potstill: deploy needs a Prefect server that outlives this process: start one with "
            "`infra/prefect/server.sh start` (or `make prefect-ui`) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
        return 2
    try:
        every = {flow: float(sec) for flow, _, sec in (e.partition("=") for e in args.every)}
    except ValueError:
        print(f"potstill: --every takes FLOW=SECONDS, got {args.every}", file=sys.stderr)
        return 2
    from flows.deployments import build_deployments, serve_deployments  # imports Prefect: after defaults

    try:
        deployments = build_deployments(root, cfg.model_dump(mode="json"), args.only, every)
    except ValueError as exc:
        print(f"potstill: {exc}", file=sys.stderr)
        return 2
    serve_deployments(deployments, limit=args.limit)
    return 0
