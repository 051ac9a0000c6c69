"""Step 3: route teacher labels: accepted rows and human verdicts become the training set, the rest the
review queue."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.config import RouteConfig
from potstill.data.catalog import Catalog
from potstill.review.routing import build_policies, merge_verdicts, route_with
from tasks.tracking import log_json, log_metrics


@task(name="route_labels", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def route_labels(
    catalog: Catalog,
    labeled: list[dict[str, Any]],
    cfg: RouteConfig,
    run_id: str,
    reviewed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`reviewed`: rows of `reviewed_labels`; a human verdict overrides routing (a corrected label is
    trained on, a rejected row is left out, and neither goes back to the review queue)."""
    policies = build_policies(
        threshold=cfg.threshold,
        budget=cfg.budget,
        budget_rows=cfg.budget_rows,
        per_class=cfg.per_class,
        audit=cfg.audit,
        audit_rows=cfg.audit_rows,
        audit_seed=cfg.audit_seed,
    )
    decision = route_with(labeled, policies)
    plan = merge_verdicts(labeled, decision, reviewed or [])
    saved = {
        "review_queue": catalog.save("review_queue", plan.review_rows, run_id=run_id),
        "train_set": catalog.save("train_set", plan.train_rows, run_id=run_id),
    }
    log_metrics(
        run_id,
        {
            "rows_labeled": len(labeled),
            "rows_to_review": len(plan.review_rows),
            "rows_audit": len(decision.audit),
            "rows_trained_on": len(plan.train_rows),
            "rows_human_labeled": plan.human,
            "rows_rejected_by_review": len(plan.rejected),
        },
    )
    outputs = {
        n: {"rows": s.rows, "digest": s.digest, "version": s.version, "md5": s.md5} for n, s in saved.items()
    }
    log_json(run_id, {"outputs": outputs, "rejected_by_review": plan.rejected}, "data/outputs.json")
    get_run_logger().info(
        "routing: %s; %d human labels in training, %d rows rejected by reviewers (review queue: %s)",
        decision.summary,
        plan.human,
        len(plan.rejected),
        saved["review_queue"].path,
    )
    return {
        "train_rows": plan.train_rows,
        "review_rows": len(plan.review_rows),
        "review_list": plan.review_rows,
        "human_rows": plan.human,
        "rejected_rows": len(plan.rejected),
        "versions": {n: f"{s.version} md5:{s.md5}" if s.version else "unversioned" for n, s in saved.items()},
        "review_path": str(saved["review_queue"].path),
    }
