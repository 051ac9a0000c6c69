"""The retrain flow: label a new incoming batch, route it like the distill flow, continue training the
champion on the next train_set, evaluate on the gold set and the new slice, register through the gate.

Only wiring: after its own start (the batch, the champion, the merged train_set) it runs the pipeline's
shared steps (flows/pipeline.py). One MLflow run per retrain (tags `potstill.flow=retrain`,
`potstill.batch=<version>`). The monitor flow starts it through the `<task>-retrain-on-drift` deployment
with `batch` and `project`. In this run's metrics `student_base_*` is the champion it started from (the
untrained student of a distill run), `student_*` the retrained student, and `new_slice_before_*` /
`new_slice_after_*` the same two on the batch rows that carry a gold label.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import flow, runtime

from flows.pipeline import (
    evaluate,
    label,
    new_data,
    open_run,
    prepare,
    register,
    require_student,
    resolve,
    route,
    train,
)
from potstill.operations.retrain import gold_slice
from tasks.retrain import fetch_champion, load_batch, merge_train_set
from tasks.store import store_entry
from tasks.tracking import tracking_uri


@flow(name="retrain")
def retrain(
    params: dict[str, Any] | None = None, project: str | None = None, batch: str | None = None
) -> dict[str, Any]:
    """Retrain the task's champion on incoming batch `batch` (e.g. "v3"; default: the latest)."""
    setup = resolve(params, project)
    require_student(setup.spec)
    catalog = setup.catalog
    with open_run(setup, "retrain", f"retrain-{runtime.flow_run.name}") as ctx:
        cfg = ctx.cfg  # registered-model sources downloaded
        data = new_data()
        prepare(ctx, data, which=("gold",))
        incoming = load_batch(catalog, cfg.monitor.incoming, batch, ctx.run_id)
        MlflowClient().set_tag(ctx.run_id, "potstill.batch", incoming["batch"])
        # As in the distill flow, the new rows are labeled with what the method trains on. Rows carried
        # over from the champion's train_set keep their rationales; logit_offline trains them on their
        # labels alone (their signals were another run's).
        data.update(
            prompts=ctx.validate(cfg.monitor.incoming, incoming["rows"]),
            source=(cfg.monitor.incoming, incoming["version"]),
            what="incoming",
        )
        data["lineage"][f"data.{cfg.monitor.incoming}"] = incoming["version"]
        label(ctx, data)
        route(ctx, data)
        champion_dir = ctx.run_dir / "champion"
        try:
            champion = fetch_champion(ctx.target.model_name, champion_dir, ctx.run_id)
            merged = merge_train_set(
                catalog, champion["train_set"], data["train_set"].rows,
                ctx.templates["student_prompt"].fields,
                cfg.retrain.train_on, cfg.retrain.replay_rows, cfg.data.seed, ctx.run_id,
            )  # fmt: skip
            data["lineage"] |= {
                "data.train_set": store_entry(catalog, "train_set", merged["rows"], ctx.run_id),
                "retrained_from": champion["init_from"],
                "data.previous_train_set": champion["train_set"] or "none",
            }
            data.update(
                train_set=replace(data["train_set"], rows=merged["train_rows"]),
                student_base=champion["folder"],
                train_cfg=cfg.model_copy(
                    update={
                        "student": cfg.retrain.student_settings(cfg.student),
                        "distill": cfg.distill.with_options(missing_signals="label")
                        if cfg.distill.method == "logit_offline"
                        else cfg.distill,
                    }
                ),
                eval_names=("champion", "retrained student"),
                new_slice=gold_slice(incoming["rows"], ctx.spec.label_set),
            )
            train(ctx, data)
            evaluate(ctx, data)
            register(ctx, data)
        finally:
            shutil.rmtree(ctx.run_dir, ignore_errors=True)
        routed = data["routed"]
        return {
            "task": ctx.spec.name,
            "run_id": ctx.run_id,
            "experiment_id": ctx.experiment_id,
            "tracking_uri": tracking_uri(ctx.root),
            "batch": incoming["batch"],
            "batch_version": incoming["version"],
            "init_from": champion["init_from"],
            "previous_train_set": champion["train_set"],
            "train_set": data["lineage"]["data.train_set"],
            "rows_labeled": len(data["labeled"]["rows"]),
            "rows_to_review": routed["review_rows"],
            "review": {
                **data["review"],
                "human_rows": routed["human_rows"],
                "rejected_rows": routed["rejected_rows"],
            },
            "rows": merged["counts"],
            "train_steps": data["trained"]["steps"],
            "new_slice_rows": len(data["new_slice"]),
            "validation": [data[n].summary for n in ("gold", "prompts", "teacher_labels", "train_set")],
            "metrics": data["metrics"],
            "registered": data["registered"],
        }
