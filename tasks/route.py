"""Step 3: route teacher labels: accepted rows become the training set, the rest the review queue."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.catalog import Catalog
from potstill.config import RouteConfig
from potstill.routing import route
from tasks.tracking import log_json, log_metrics


@task(name="route_labels", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def route_labels(
    catalog: Catalog, labeled: list[dict[str, Any]], cfg: RouteConfig, run_id: str
) -> dict[str, Any]:
    decision = route(labeled, threshold=cfg.threshold, budget=cfg.budget)
    by_id = {r["id"]: r for r in labeled}
    review_rows = [{**by_id[i], "route_reason": decision.reasons[i]} for i in decision.review]
    train_rows = [{"id": i, "text": by_id[i]["text"], "label": by_id[i]["label"]} for i in decision.accepted]
    saved = {
        "teacher_labels": catalog.save("teacher_labels", labeled, run_id=run_id),
        "review_queue": catalog.save("review_queue", review_rows, run_id=run_id),
        "train_set": catalog.save("train_set", train_rows, run_id=run_id),
    }
    log_metrics(
        run_id,
        {
            "rows_labeled": len(labeled),
            "rows_to_review": len(review_rows),
            "rows_trained_on": len(train_rows),
        },
    )
    outputs = {
        n: {"rows": s.rows, "digest": s.digest, "version": s.version, "md5": s.md5} for n, s in saved.items()
    }
    log_json(run_id, outputs, "data/outputs.json")
    get_run_logger().info("routing: %s (review queue: %s)", decision.summary, saved["review_queue"].path)
    return {
        "train_rows": train_rows,
        "review_rows": len(review_rows),
        "versions": {n: f"{s.version} md5:{s.md5}" if s.version else "unversioned" for n, s in saved.items()},
        "review_path": str(saved["review_queue"].path),
    }
