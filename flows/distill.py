"""The distill flow: every step of the pipeline (potstill/pipeline.py) in order, for one task.

Only wiring. One MLflow parent run per flow run holds the resolved config, dataset digests, step metrics,
plots and the registered student. `potstill run --task NAME` runs it.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, runtime

from flows.pipeline import (
    RunContext,
    new_data,
    open_run,
    remove_run_models,
    require_student,
    resolve,
    run_steps,
)
from tasks.tracking import tracking_uri


@flow(name="distill")
def distill(params: dict[str, Any] | None = None, project: str | None = None) -> dict[str, Any]:
    """Distill the teacher into a student for the run config's task and register it in MLflow."""
    setup = resolve(params, project)
    require_student(setup.spec)  # before any labeling: a kind without a student stops here
    with open_run(setup, "distill", str(runtime.flow_run.name or "distill")) as ctx:
        data = run_steps(ctx, new_data())
        remove_run_models(ctx)
        return summary(ctx, data)


def summary(ctx: RunContext, data: dict[str, Any]) -> dict[str, Any]:
    """What the terminal summary (potstill/cli/summary.py) shows."""
    routed, reviews, trained = data["routed"], data["reviews"], data["trained"]
    return {
        "task": ctx.spec.name,
        "kind": ctx.spec.kind,
        "run_id": ctx.run_id,
        "experiment_id": ctx.experiment_id,
        "tracking_uri": tracking_uri(ctx.root),
        "rows_labeled": len(data["labeled"]["rows"]),
        "rows_to_review": routed["review_rows"],
        "review_queue": routed["review_path"],
        "review": {
            **data["review"],
            "human_rows": routed["human_rows"],
            "rejected_rows": routed["rejected_rows"],
            "stats": reviews["stats"],
            "reviewed_version": reviews["version"],
        },
        "rows_trained_on": len(data["train_set"].rows),
        "train_steps": trained["steps"],
        "train_tokens_per_s": trained["tokens_per_s"],
        "gold_rows": len(data["gold"].rows),
        "validation": [data[n].summary for n in ("prompts", "gold", "teacher_labels", "train_set")],
        "metrics": data["metrics"],
        "registered": data["registered"],
    }
