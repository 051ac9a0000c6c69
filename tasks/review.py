"""Human review: send routed rows to Label Studio (or an import file), wait for answers, pull them back.

Thin: the catalog names every file, `potstill.review` talks to Label Studio, `potstill.review.merge`
decides what the answers mean. The API token is read from the environment inside `ReviewClient` and
never passes through a task parameter, so it cannot reach Prefect's stored parameters or results.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.config import ReviewConfig
from potstill.data.catalog import Catalog
from potstill.review import (
    Outbox,
    ReviewClient,
    ReviewProjectSpec,
    ReviewServerUnavailable,
    ReviewSettings,
    route_to_review,
    sync_outbox,
)
from potstill.review.merge import HumanAnnotation, merge_reviews
from tasks.tracking import log_json, log_metrics


def review_client() -> ReviewClient | None:
    """Label Studio from LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or, for deployments that keep
    secrets in Prefect, the key from the Secret block named by LABEL_STUDIO_API_KEY_BLOCK. None when
    no server is configured (review rows go to an import file)."""
    block = os.environ.get("LABEL_STUDIO_API_KEY_BLOCK")
    url = os.environ.get("LABEL_STUDIO_URL")
    if block and url and not os.environ.get("LABEL_STUDIO_API_KEY"):
        from prefect.blocks.system import Secret

        return ReviewClient(ReviewSettings(url=url.rstrip("/"), api_key=Secret.load(block).get()))
    return ReviewClient.from_env()


def review_spec(
    catalog: Catalog, dataset: str, prompt_version: str, teacher: str, per_row: int = 1
) -> ReviewProjectSpec:
    """One Label Studio project per dataset (named with its task: `polarity/prompts`) + teacher prompt
    version."""
    entry = catalog.dataset(dataset)
    return ReviewProjectSpec(
        dataset=entry.name,
        prompt_version=prompt_version,
        kind=entry.kind or "classification",
        labels=tuple(entry.labels),
        teacher=teacher,
        annotators_per_row=per_row,
    )


def load_reviewed(catalog: Catalog) -> list[dict[str, Any]]:
    """Human verdicts so far ([] before the first sync)."""
    return catalog.load("reviewed_labels") if catalog.exists("reviewed_labels") else []


@task(name="send_for_review", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def send_for_review(
    catalog: Catalog, rows: list[dict[str, Any]], spec: ReviewProjectSpec, version: str | None, run_id: str
) -> dict[str, Any]:
    """Rows go to Label Studio when it is configured (to the outbox while it is unreachable), else to a
    Label Studio import file; the result says where, for the summary."""
    logger = get_run_logger()
    result = route_to_review(
        rows,
        spec,
        import_file=catalog.file("review_import"),
        outbox=catalog.file("review_outbox"),
        dataset_version=version,
    )
    logger.info("review: %s", result.message)
    if result.rejected:
        kept = Outbox(catalog.file("review_outbox")).rejected_path
        logger.warning(
            "review: %d tasks refused by Label Studio, kept with its answer in %s", result.rejected, kept
        )
    log_metrics(
        run_id,
        {
            "review_tasks_created": result.created,
            "review_outbox_rows": result.queued,
            "review_tasks_refused": result.rejected,
        },
    )
    return asdict(result)


def finished_row_ids(annotations: list[HumanAnnotation], per_row: int) -> set[str]:
    """Rows with at least `per_row` finished answers (a reject counts as an answer)."""
    counts: dict[str, int] = {}
    for a in annotations:
        counts[a.row_id] = counts.get(a.row_id, 0) + 1
    return {rid for rid, n in counts.items() if n >= per_row}


@task(name="wait_for_reviews", cache_policy=NO_CACHE)
def wait_for_reviews(row_ids: list[str], spec: ReviewProjectSpec, cfg: ReviewConfig) -> dict[str, Any]:
    """Poll Label Studio until every row has its answers (`until_done`) or the timeout passes."""
    logger = get_run_logger()
    client = review_client()
    if client is None or cfg.wait == "none" or not row_ids:
        return {"waited_s": 0.0, "pending": 0}
    start, wanted = time.monotonic(), set(row_ids)
    while True:
        pending = wanted - finished_row_ids(client.pull(spec), cfg.annotators_per_row)
        waited = time.monotonic() - start
        if not pending:
            logger.info("review: all %d rows answered after %.0fs", len(wanted), waited)
            return {"waited_s": waited, "pending": 0}
        if cfg.wait == "timeout" and waited >= cfg.timeout_s:
            logger.info("review: %d of %d rows unanswered after %.0fs", len(pending), len(wanted), waited)
            return {"waited_s": waited, "pending": len(pending)}
        logger.info("review: waiting for %d of %d rows", len(pending), len(wanted))
        time.sleep(cfg.poll_s)


@task(name="sync_reviews", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def sync_reviews(
    catalog: Catalog, spec: ReviewProjectSpec, cfg: ReviewConfig, run_id: str, tolerate_down: bool = True
) -> dict[str, Any]:
    """Deliver the outbox, pull finished answers, and write the merged verdicts as a new version of
    `reviewed_labels` (the same answers give the same content, so the same version: idempotent).

    tolerate_down: an unreachable server leaves the verdicts as they were (a distill run goes on with
    them); False raises (the scheduled sync flow should show as failed)."""
    logger = get_run_logger()
    client = review_client()
    reviewed = load_reviewed(catalog)
    unchanged = {"rows": reviewed, "delivered": 0, "stats": None, "version": None, "pending": 0}
    if client is None:
        return {"configured": False, **unchanged}
    try:
        delivered = sync_outbox(client, catalog.file("review_outbox"))
        annotations = client.pull(spec)
    except ReviewServerUnavailable as exc:
        if not tolerate_down:
            raise
        logger.warning("review: %s; going on with the %d verdicts synced before", exc, len(reviewed))
        return {"configured": True, **unchanged}
    queue = catalog.load("review_queue") if catalog.exists("review_queue") else []
    known = {str(r["id"]): r for r in queue}
    for r in reviewed:  # rows reviewed earlier stay answerable even when no longer in the queue
        known.setdefault(str(r["id"]), {k: v for k, v in r.items() if k not in VERDICT_FIELDS} | _teacher(r))
    merged = merge_reviews(list(known.values()), annotations, tie_rule=cfg.tie_rule, include_pending=False)
    by_id = {str(r["id"]): r for r in reviewed}
    for row in merged.rows:
        res = merged.resolved[str(row["id"])]
        by_id[str(row["id"])] = _verdict(row, res.status, res.votes, res.disagreement, ())
    for rid, reasons in merged.rejected.items():
        res = merged.resolved[rid]
        by_id[rid] = _verdict(known[rid], "rejected", res.votes, res.disagreement, reasons)
    for rid in merged.held_back:
        by_id.pop(rid, None)  # a tie is no verdict: the row waits for another answer
    rows = [by_id[k] for k in sorted(by_id)]
    saved = catalog.save("reviewed_labels", rows, run_id=run_id)
    stats = merged.stats.as_metrics()
    log_metrics(run_id, {**stats, "review_delivered_from_outbox": delivered})
    log_json(
        run_id,
        {
            "project": spec.title,
            "stats": stats,
            "rejected": {k: list(v) for k, v in merged.rejected.items()},
            "held_back": merged.held_back,
            "pending": len(merged.pending),
        },
        "review/sync.json",
    )
    logger.info(
        "review sync: %d answers, %d rows with a verdict (%s), %d delivered from the outbox",
        len(annotations),
        len(rows),
        saved.version or "unversioned",
        delivered,
    )
    return {
        "configured": True,
        "rows": rows,
        "delivered": delivered,
        "stats": stats,
        "version": f"{saved.version} md5:{saved.md5}" if saved.version else "unversioned",
        "pending": len(merged.pending),
    }


VERDICT_FIELDS = ("label", "teacher_label", "label_source", "review_status", "votes", "disagreement",
                  "reject_reasons")  # fmt: skip


def _teacher(row: dict[str, Any]) -> dict[str, Any]:
    return {"label": row.get("teacher_label")}


def _verdict(
    row: dict[str, Any], status: str, votes: dict[str, int], disagreement: bool, reasons: tuple[str, ...]
) -> dict[str, Any]:
    """The row as `reviewed_labels` keeps it: text, human label (None when rejected), the teacher's."""
    teacher = row.get("teacher_label", row.get("label")) if status != "rejected" else row.get("label")
    out = {k: v for k, v in row.items() if k not in ("distribution", "route_reason", "label_source")}
    out.update(
        label=row.get("label") if status != "rejected" else None,
        teacher_label=teacher,
        review_status=status,
        votes=votes,
        disagreement=disagreement,
        reject_reasons=list(reasons),
    )
    return out
