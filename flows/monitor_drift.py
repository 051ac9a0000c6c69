"""The drift monitor flow: for each new incoming batch, predict with the champion, compare the batch with
the champion's training data, log the drift report, and start a retrain when the drift is real and no
retrain was started for it already.

Only wiring. One MLflow run per batch (tag potstill.flow=monitor_drift). `monitor_state` records every
monitored batch and the last trigger, so a batch is never monitored twice and one drift event starts one
retrain (`monitor.cooldown_s`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, runtime

from potstill.catalog import Catalog
from potstill.config import config_hash, validate
from potstill.env import find_project_root
from potstill.monitoring import decide_retrain, last_trigger_of, new_batches, record_batch
from tasks.label import label_with_teacher
from tasks.monitor import (
    Window,
    load_state,
    log_drift,
    measure_drift,
    now_utc,
    reference_window,
    save_state,
    teacher_sample,
    trigger_retrain,
)
from tasks.predict import batch_versions, predict_batch, resolve_batch
from tasks.tracking import configure, experiment_id, tracking_uri


@flow(name="monitor_drift")
def monitor_drift(
    params: dict[str, Any] | None = None, project: str | None = None, batch: str | None = None
) -> dict[str, Any]:
    """Monitor every incoming batch not monitored yet (or only `batch`, when given and new)."""
    cfg = validate(params or {})
    mon = cfg.monitor
    root = Path(project).resolve() if project else find_project_root()
    catalog = Catalog.from_file(root / "catalog" / "catalog.yaml", cfg.catalog)
    client = configure(root)
    state = load_state(catalog)
    candidates = (
        [resolve_batch(catalog, mon.incoming, batch)] if batch else batch_versions(catalog, mon.incoming)
    )
    todo = new_batches(candidates, state)
    labels = catalog.dataset(mon.incoming).labels
    teacher_prompt = catalog.prompt(cfg.teacher.prompt)
    results = []
    for version in todo:
        run = client.create_run(
            experiment_id(client, cfg.registry.experiment, root),
            run_name=f"monitor-{mon.incoming}-{version}",
            tags={
                "potstill.flow": "monitor_drift",
                "prefect.flow_run_id": str(runtime.flow_run.id),
                "potstill.config_hash": config_hash(cfg),
                "potstill.batch": f"{mon.incoming}@{version}",
            },
        )
        run_id = run.info.run_id
        try:
            predicted = predict_batch(
                catalog, mon.incoming, mon.predictions, cfg.registry.model_name, mon.alias, version, run_id
            )
            served = predicted["model"]
            client.set_tag(run_id, "potstill.model", f"{served.name}@{served.alias} v{served.version}")
            reference = reference_window(catalog, served, mon.reference_rows, mon.seed)
            current = Window(predicted["rows"], predicted["predictions"])
            if mon.teacher_sample_rows and "disagreement" in mon.checks:
                teach = [
                    label_with_teacher(
                        teacher_sample(w.rows, mon.teacher_sample_rows),
                        cfg.teacher,
                        teacher_prompt,
                        labels,
                        what,
                    )["pred"]
                    for w, what in ((reference, "monitor reference"), (current, f"monitor {version}"))
                ]
                reference, current = replace(reference, teacher=teach[0]), replace(current, teacher=teach[1])
            report = measure_drift(reference, current, served.fields, mon)
            now = now_utc()
            decision = decide_retrain(report, last_trigger_of(state), now, mon.cooldown_s)
            metrics = log_drift(run_id, report, decision, reference, current)
            fired = trigger_retrain(decision, mon.trigger, version, str(root), cfg.model_dump(mode="json"))
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
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        results.append({"batch": version, **summary, "metrics": metrics, "retrain": fired})
    return {
        "tracking_uri": tracking_uri(root),
        "batches": results,
        "skipped": [v for v in candidates if v not in todo],
        "last_trigger": state.get("last_trigger"),
    }
