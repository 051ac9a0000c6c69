"""The review sync flow: deliver waiting review tasks, pull finished answers, version the verdicts.

Only wiring. Run it every few minutes (`potstill review sync`, or the deployment's schedule): a second
sync with no new answers imports nothing and writes the same `reviewed_labels` version. The next
distill run (or `dvc repro`, whose route stage depends on `reviewed_labels`) trains on the verdicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, runtime

from potstill.catalog import Catalog
from potstill.config import config_hash, validate
from potstill.env import find_project_root
from tasks.review import review_client, review_spec, sync_reviews
from tasks.tracking import configure, experiment_id, tracking_uri


class ReviewNotConfigured(RuntimeError):
    pass


@flow(name="review_sync")
def review_sync(params: dict[str, Any] | None = None, project: str | None = None) -> dict[str, Any]:
    """Sync the review project of the current prompts dataset and teacher prompt version."""
    cfg = validate(params or {})
    root = Path(project).resolve() if project else find_project_root()
    if review_client() is None:
        raise ReviewNotConfigured(
            "Label Studio is not configured: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or "
            "LABEL_STUDIO_API_KEY_BLOCK, a Prefect Secret block) "
            "(make review-server starts one on 127.0.0.1:8080)"
        )
    catalog = Catalog.from_file(root / "catalog" / "catalog.yaml", cfg.catalog)
    client = configure(root)
    run = client.create_run(
        experiment_id(client, cfg.registry.experiment, root),
        run_name=f"review-sync-{runtime.flow_run.name}",
        tags={
            "potstill.flow": "review_sync",
            "prefect.flow_run_id": str(runtime.flow_run.id),
            "potstill.config_hash": config_hash(cfg),
        },
    )
    run_id = run.info.run_id
    try:
        version = catalog.prompt_version(cfg.teacher.prompt, run_id).name
        spec = review_spec(
            catalog, cfg.data.prompts, version, cfg.teacher.model, cfg.review.annotators_per_row
        )
        result = sync_reviews(catalog, spec, cfg.review, run_id, tolerate_down=False)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return {
        "run_id": run_id,
        "tracking_uri": tracking_uri(root),
        "project": spec.title,
        "verdicts": len(result["rows"]),
        "version": result["version"],
        "delivered": result["delivered"],
        "pending": result["pending"],
        "stats": result["stats"],
    }
