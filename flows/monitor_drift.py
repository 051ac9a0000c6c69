"""The drift monitor flow: for each new incoming batch, predict with the champion, compare the batch with
the champion's training data, log the drift report, and start a retrain when the drift is real and no
retrain was started for it already.

Only wiring. One MLflow run per batch (tag potstill.flow=monitor_drift). `monitor_state` records every
monitored batch and the last trigger, so a batch is never monitored twice and one drift event starts one
retrain (`monitor.cooldown_s`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import flow, runtime

from flows.pipeline import resolve
from potstill.config import config_hash
from potstill.operations.monitoring import decide_retrain, last_trigger_of, new_batches, record_batch
from tasks.label import label_with_teacher
from tasks.monitor import (
    Window,
    load_state,
    log_drift,
    measure_drift,
    now_utc,
    reference_window,
    retrain_deployment,
    save_state,
    teacher_sample,
    trigger_retrain,
)
from tasks.predict import batch_versions, predict_batch, resolve_batch
from tasks.tracking import configure, parent_run, resolve_registered, tracking_uri


@flow(name="monitor_drift")
def monitor_drift(
    params: dict[str, Any] | None = None, project: str | None = None, batch: str | None = None
) -> dict[str, Any]:
    """Monitor every incoming batch of the task not monitored yet (or only `batch`, when given and new)."""
    setup = resolve(params, project)
    catalog, spec, root = setup.catalog, setup.spec, setup.root
    configure(root)
    cfg = resolve_registered(setup.cfg)  # a registered teacher, downloaded once
    mon = cfg.monitor
    state = load_state(catalog)
    candidates = (
        [resolve_batch(catalog, mon.incoming, batch)] if batch else batch_versions(catalog, mon.incoming)
    )
    todo = new_batches(candidates, state)
    teacher_prompt = catalog.prompt("teacher_prompt")
    results = []
    for version in todo:
        tags = {
            "potstill.flow": "monitor_drift",
            "potstill.task": spec.name,
            "prefect.flow_run_id": str(runtime.flow_run.id),
            "potstill.config_hash": config_hash(setup.cfg),
            "potstill.batch": f"{catalog.full_name(mon.incoming)}@{version}",
        }
        with parent_run(root, setup.target.experiment, f"monitor-{spec.name}-{version}", tags) as run:
            run_id = run.run_id
            predicted = predict_batch(
                catalog, mon.incoming, mon.predictions, setup.target.model_name, mon.alias, version, run_id
            )
            served = predicted["model"]
            MlflowClient().set_tag(
                run_id, "potstill.model", f"{served.name}@{served.alias} v{served.version}"
            )
            reference = reference_window(catalog, served, mon.reference_rows, mon.seed)
            current = Window(predicted["rows"], predicted["predictions"])
            if mon.teacher_sample_rows and "disagreement" in mon.checks:
                teach = [
                    label_with_teacher(
                        teacher_sample(w.rows, mon.teacher_sample_rows),
                        cfg.teacher,
                        teacher_prompt,
                        spec.kind,
                        spec.label_set,
                        what,
                    )["pred"]
                    for w, what in ((reference, "monitor reference"), (current, f"monitor {version}"))
                ]
                reference, current = replace(reference, teacher=teach[0]), replace(current, teacher=teach[1])
            report = measure_drift(reference, current, served.fields, mon, spec.kind)
            now = now_utc()
            decision = decide_retrain(report, last_trigger_of(state), now, mon.cooldown_s)
            metrics = log_drift(run_id, report, decision, reference, current)
            params_now = setup.cfg.model_dump(mode="json")
            if decision.trigger and mon.trigger == "inline":  # a subflow: the flow runs the other flow
                from flows.retrain import retrain

                result = retrain(params=params_now, project=str(root), batch=version)
                fired = {"triggered": True, "mode": "inline", "result": result}
            else:
                fired = trigger_retrain(
                    decision, mon.trigger, version, str(root), retrain_deployment(spec.name)
                )
            summary = {
                "run_id": run_id,
                "drifted": report.drifted,
                "trigger": decision.trigger,
                "reasons": decision.reasons,
                "model_version": served.version,
                "predictions_version": predicted["predictions_version"],
            }
            state = record_batch(state, version, summary, decision, now, mon.trigger)
            save_state(catalog, state)
        results.append({"batch": version, **summary, "metrics": metrics, "retrain": fired})
    return {
        "task": spec.name,
        "tracking_uri": tracking_uri(root),
        "batches": results,
        "skipped": [v for v in candidates if v not in todo],
        "last_trigger": state.get("last_trigger"),
    }
