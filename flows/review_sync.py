"""The review sync flow: deliver waiting review tasks, pull finished answers, version the verdicts.

Only wiring. Run it every few minutes (`potstill review sync --task NAME`, or the deployment's schedule):
a second sync with no new answers imports nothing and writes the same `reviewed_labels` version. The next
distill run (or `dvc repro`, whose route stage depends on `reviewed_labels`) trains on the verdicts.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, runtime

from flows.pipeline import open_run, resolve
from potstill.errors import UserError
from tasks.review import review_client, review_spec, sync_reviews
from tasks.tracking import tracking_uri


class ReviewNotConfigured(UserError, RuntimeError):
    pass


@flow(name="review_sync")
def review_sync(params: dict[str, Any] | None = None, project: str | None = None) -> dict[str, Any]:
    """Sync the review project of the task's prompts and current teacher prompt version."""
    if review_client() is None:
        raise ReviewNotConfigured(
            "Label Studio is not configured: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or "
            "LABEL_STUDIO_API_KEY_BLOCK, a Prefect Secret block) "
            "(make review-server starts one on 127.0.0.1:8080)"
        )
    setup = resolve(params, project)
    cfg = setup.cfg
    with open_run(setup, "review_sync", f"review-sync-{runtime.flow_run.name}") as ctx:
        version = ctx.prompt_versions["teacher_prompt"].name
        spec = review_spec(ctx.catalog, "prompts", version, cfg.teacher.model, cfg.review.annotators_per_row)
        result = sync_reviews(ctx.catalog, spec, cfg.review, ctx.run_id, tolerate_down=False)
        return {
            "task": ctx.spec.name,
            "run_id": ctx.run_id,
            "tracking_uri": tracking_uri(ctx.root),
            "project": spec.title,
            "verdicts": len(result["rows"]),
            "version": result["version"],
            "delivered": result["delivered"],
            "pending": result["pending"],
            "stats": result["stats"],
        }
