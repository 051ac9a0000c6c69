"""The retrain flow: label a new incoming batch, route it like the distill flow, continue training the
champion on the next train_set, evaluate on the old gold set and the new slice, register through the gate.

Only wiring. One MLflow run per retrain (tags `potstill.flow=retrain`, `potstill.batch=<version>`). The
monitor flow starts it through the `retrain/retrain-on-drift` deployment with `batch` and `project`.
In this run's metrics `student_base_*` is the champion it started from (the untrained student of a distill
run), `student_*` the retrained student, and `new_slice_before_*` / `new_slice_after_*` the same two on the
batch rows that carry a gold label.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow, runtime

from potstill.catalog import Catalog
from potstill.config import config_hash, flatten, to_yaml, validate
from potstill.env import find_project_root
from potstill.models import default_cache_dir
from potstill.retrain import gold_slice
from potstill.validation import ValidationLimits, from_read_result
from potstill.versioning import git_commit_of
from tasks.evaluate import evaluate, predict_gold
from tasks.label import label_with_teacher
from tasks.load_data import read_entry, version_of
from tasks.register import register_student
from tasks.retrain import evaluate_slice, fetch_champion, load_batch, merge_train_set
from tasks.review import review_spec, send_for_review, sync_reviews, wait_for_reviews
from tasks.route import route_labels
from tasks.store import store_entry
from tasks.tracking import configure, experiment_id, tracking_uri
from tasks.train import train_student
from tasks.validate import validate_dataset


@flow(name="retrain")
def retrain(
    params: dict[str, Any] | None = None, project: str | None = None, batch: str | None = None
) -> dict[str, Any]:
    """Retrain the champion on incoming batch `batch` (e.g. "v3"; default: the latest)."""
    cfg = validate(params or {})
    root = Path(project).resolve() if project else find_project_root()
    catalog = Catalog.from_file(root / "catalog" / "catalog.yaml", cfg.catalog)
    client = configure(root)
    teacher_prompt, student_prompt = catalog.prompt(cfg.teacher.prompt), catalog.prompt(cfg.student.prompt)
    # As in the distill flow: the new rows are labeled with what the method trains on (logit_offline:
    # signals, step_by_step: rationales). Rows carried over from the champion's train_set keep their
    # rationales; logit_offline trains them on their labels alone (their signals were another run's).
    teacher = cfg.teacher.for_method(cfg.distill.method)
    rationale_prompt = catalog.prompt(teacher.rationale_prompt) if teacher.rationale else None
    run = client.create_run(
        experiment_id(client, cfg.registry.experiment, root),
        run_name=f"retrain-{runtime.flow_run.name}",
        tags={
            "potstill.flow": "retrain",
            "prefect.flow_run_id": str(runtime.flow_run.id),
            "potstill.config_hash": config_hash(cfg),
            "git_commit": git_commit_of(root) or "none",
        },
    )
    run_id = run.info.run_id
    prompt_versions = {
        p.name: catalog.prompt_version(p.name, run_id)
        for p in (teacher_prompt, student_prompt, rationale_prompt)
        if p is not None
    }
    for name, record in prompt_versions.items():
        client.set_tag(run_id, f"prompt.{name}", f"{record.name} md5:{record.md5}")
    client.log_batch(run_id, params=[_param(k, v) for k, v in flatten(cfg).items()])
    client.log_text(run_id, to_yaml(cfg), "config/params.resolved.yaml")
    champion_dir = default_cache_dir() / "retrain" / run_id
    try:
        limits = ValidationLimits(cfg.validation.max_text_chars, cfg.validation.max_parse_failure_rate)
        keep = cfg.validation.min_valid_fraction
        incoming = load_batch(catalog, cfg.monitor.incoming, batch, run_id)
        client.set_tag(run_id, "potstill.batch", incoming["batch"])
        labels = list(catalog.dataset(cfg.data.gold).labels)
        gold_read = read_entry(catalog, cfg.data.gold, cfg.data.max_eval_rows)
        gold = validate_dataset(
            catalog,
            cfg.data.gold,
            gold_read.rows,
            run_id,
            limits,
            keep,
            gold_read.row_numbers,
            from_read_result(gold_read),
        )
        new = validate_dataset(catalog, cfg.monitor.incoming, incoming["rows"], run_id, limits, keep)
        labeled = label_with_teacher(new.rows, teacher, teacher_prompt, labels, "incoming", rationale_prompt)
        teacher_gold = label_with_teacher(gold.rows, cfg.teacher, teacher_prompt, labels, "gold")
        checked = validate_dataset(catalog, "teacher_labels", labeled["rows"], run_id, limits, keep)
        version = prompt_versions[teacher_prompt.name].name
        spec = review_spec(
            catalog, cfg.monitor.incoming, version, cfg.teacher.model, cfg.review.annotators_per_row
        )
        reviews = sync_reviews(catalog, spec, cfg.review, run_id)
        routed = route_labels(catalog, checked.rows, cfg.route, run_id, reviews["rows"])
        review = send_for_review(catalog, routed["review_list"], spec, incoming["version"], run_id)
        if cfg.review.wait != "none" and review["target"] == "label-studio":
            wait_for_reviews([str(r["id"]) for r in routed["review_list"]], spec, cfg.review)
            reviews = sync_reviews(catalog, spec, cfg.review, run_id)
            routed = route_labels(catalog, checked.rows, cfg.route, run_id, reviews["rows"])
        accepted = validate_dataset(
            catalog,
            "train_set",
            routed["train_rows"],
            run_id,
            limits,
            keep,
            eval_rows=gold.rows,
            eval_name=cfg.data.gold,
        )
        champion = fetch_champion(cfg.registry.model_name, champion_dir, run_id)
        merged = merge_train_set(
            catalog,
            champion["train_set"],
            accepted.rows,
            student_prompt.fields,
            cfg.retrain.train_on,
            cfg.retrain.replay_rows,
            cfg.data.seed,
            run_id,
        )
        stored = {
            "train_set": store_entry(catalog, "train_set", merged["rows"], run_id),
            "teacher_gold_labels": store_entry(catalog, "teacher_gold_labels", teacher_gold["rows"], run_id),
        }
        continued = cfg.model_copy(
            update={
                "student": cfg.retrain.student_settings(cfg.student),
                "distill": cfg.distill.model_copy(update={"missing_signals": "label"}),
            }
        )
        batch_size = cfg.student.eval_batch_size
        before = predict_gold(champion["folder"], gold.rows, batch_size, "champion")
        trained = train_student(
            champion["folder"],
            merged["train_rows"],
            continued,
            catalog.path("student"),
            run_id,
            teacher_prompt,
            labeled.get("signals_dir"),  # logit_offline: the new rows' stored top-k shards
        )
        after = predict_gold(trained["folder"], gold.rows, batch_size, "retrained student")
        metrics = evaluate(gold.rows, labels, teacher_gold, before, after, run_id)
        new_slice = gold_slice(incoming["rows"], labels)
        if new_slice:
            slice_before = predict_gold(champion["folder"], new_slice, batch_size, "champion, new slice")
            slice_after = predict_gold(trained["folder"], new_slice, batch_size, "retrained, new slice")
            metrics |= evaluate_slice(new_slice, labels, slice_before, slice_after, run_id)
        stored["eval_report"] = store_entry(catalog, "eval_report", {"metrics": metrics}, run_id)
        lineage = {
            f"data.{cfg.data.gold}": version_of(catalog, cfg.data.gold, run_id),
            f"data.{cfg.monitor.incoming}": incoming["version"],
            **{f"data.{n}": v for n, v in routed["versions"].items()},
            **{f"data.{n}": v for n, v in stored.items()},  # the merged train_set, not the routed one
            **({"data.reviewed_labels": reviews["version"]} if reviews["version"] else {}),
            **{f"prompt.{n}": f"{r.name} md5:{r.md5}" for n, r in prompt_versions.items()},
            "retrained_from": champion["init_from"],
            "data.previous_train_set": champion["train_set"] or "none",
            "git_commit": git_commit_of(root) or "none",
            "config_hash": config_hash(cfg),
            "mlflow_run": run_id,
        }
        registered = register_student(trained["folder"], gold.rows, cfg, metrics, run_id, lineage)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    finally:
        shutil.rmtree(champion_dir, ignore_errors=True)
    client.set_terminated(run_id, "FINISHED")
    return {
        "run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": tracking_uri(root),
        "batch": incoming["batch"],
        "batch_version": incoming["version"],
        "init_from": champion["init_from"],
        "previous_train_set": champion["train_set"],
        "train_set": stored["train_set"],
        "rows_labeled": len(labeled["rows"]),
        "rows_to_review": routed["review_rows"],
        "review": {**review, "human_rows": routed["human_rows"], "rejected_rows": routed["rejected_rows"]},
        "rows": merged["counts"],
        "train_steps": trained["steps"],
        "new_slice_rows": len(new_slice),
        "validation": [v.summary for v in (gold, new, checked, accepted)],
        "metrics": metrics,
        "registered": registered,
    }


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value[:6000])
