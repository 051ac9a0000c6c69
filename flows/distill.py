"""The distill flow: load -> label -> route -> build student -> train -> evaluate -> register.

Only wiring. One MLflow parent run per flow run holds the resolved config, dataset digests, step
metrics, plots and the registered student. `python -m flows.distill` and `potstill run` both run it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, runtime

from potstill.catalog import Catalog
from potstill.config import config_hash, flatten, to_yaml, validate
from potstill.env import find_project_root
from potstill.validation import ValidationLimits, from_read_result
from potstill.versioning import git_commit_of
from tasks.evaluate import evaluate, predict_gold
from tasks.label import label_with_teacher
from tasks.load_data import load_data
from tasks.register import register_student
from tasks.review import review_spec, send_for_review, sync_reviews, wait_for_reviews
from tasks.route import route_labels
from tasks.store import store_entry
from tasks.tracking import configure, experiment_id, tracking_uri
from tasks.train import build_student, train_student
from tasks.validate import validate_dataset


@flow(name="distill")
def distill(params: dict[str, Any] | None = None, project: str | None = None) -> dict[str, Any]:
    """Distill the teacher into a student for the catalog's task and register it in MLflow."""
    cfg = validate(params or {})
    root = Path(project).resolve() if project else find_project_root()
    catalog = Catalog.from_file(root / "catalog" / "catalog.yaml", cfg.catalog)
    client = configure(root)
    teacher_prompt, student_prompt = catalog.prompt(cfg.teacher.prompt), catalog.prompt(cfg.student.prompt)
    # The training prompts' labeling gives what the method needs (logit_offline: signals; step_by_step:
    # rationales); the gold split is labeled as configured.
    teacher = cfg.teacher.for_method(cfg.distill.method)
    rationale_prompt = catalog.prompt(teacher.rationale_prompt) if teacher.rationale else None
    run = client.create_run(
        experiment_id(client, cfg.registry.experiment, root),
        run_name=str(runtime.flow_run.name or "distill"),
        tags={
            "potstill.flow": "distill",
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
    client.log_text(run_id, teacher_prompt.text, f"prompts/{teacher_prompt.name}.txt")
    try:
        limits = ValidationLimits(cfg.validation.max_text_chars, cfg.validation.max_parse_failure_rate)
        keep = cfg.validation.min_valid_fraction
        inputs = load_data(catalog, cfg.data, run_id, [teacher_prompt, student_prompt])
        prompts = validate_dataset(
            catalog,
            cfg.data.prompts,
            inputs.prompts.rows,
            run_id,
            limits,
            keep,
            inputs.prompts.row_numbers,
            from_read_result(inputs.prompts),
        )
        gold = validate_dataset(
            catalog,
            cfg.data.gold,
            inputs.gold.rows,
            run_id,
            limits,
            keep,
            inputs.gold.row_numbers,
            from_read_result(inputs.gold),
        )
        labeled = label_with_teacher(
            prompts.rows, teacher, teacher_prompt, inputs.labels, "prompts", rationale_prompt
        )
        teacher_gold = label_with_teacher(gold.rows, cfg.teacher, teacher_prompt, inputs.labels, "gold")
        checked = validate_dataset(catalog, "teacher_labels", labeled["rows"], run_id, limits, keep)
        version = prompt_versions[teacher_prompt.name].name
        spec = review_spec(
            catalog, cfg.data.prompts, version, cfg.teacher.model, cfg.review.annotators_per_row
        )
        reviews = sync_reviews(catalog, spec, cfg.review, run_id)  # answers given since the last run
        routed = route_labels(catalog, checked.rows, cfg.route, run_id, reviews["rows"])
        review = send_for_review(
            catalog, routed["review_list"], spec, inputs.versions[cfg.data.prompts], run_id
        )
        if cfg.review.wait != "none" and review["target"] == "label-studio":
            wait_for_reviews([str(r["id"]) for r in routed["review_list"]], spec, cfg.review)
            reviews = sync_reviews(catalog, spec, cfg.review, run_id)
            routed = route_labels(catalog, checked.rows, cfg.route, run_id, reviews["rows"])
        train_set = validate_dataset(
            catalog,
            "train_set",
            routed["train_rows"],
            run_id,
            limits,
            keep,
            eval_rows=gold.rows,
            eval_name=cfg.data.gold,
        )
        stored = {
            "teacher_gold_labels": store_entry(catalog, "teacher_gold_labels", teacher_gold["rows"], run_id)
        }
        base = build_student(cfg, student_prompt, inputs.labels, catalog.path("student_base"))
        base_eval = predict_gold(base, gold.rows, cfg.student.eval_batch_size, "student (untrained)")
        trained = train_student(
            base,
            train_set.rows,
            cfg,
            catalog.path("student"),
            run_id,
            teacher_prompt,  # online methods prompt the teacher as it labeled
            labeled.get("signals_dir"),  # logit_offline: the teacher's stored top-k shards
        )
        student_eval = predict_gold(trained["folder"], gold.rows, cfg.student.eval_batch_size, "student")
        metrics = evaluate(gold.rows, inputs.labels, teacher_gold, base_eval, student_eval, run_id)
        stored["eval_report"] = store_entry(catalog, "eval_report", {"metrics": metrics}, run_id)
        lineage = {
            **{f"data.{n}": v for n, v in inputs.versions.items()},
            **{f"data.{n}": v for n, v in routed["versions"].items()},
            **{f"data.{n}": v for n, v in stored.items()},
            **({"data.reviewed_labels": reviews["version"]} if reviews["version"] else {}),
            **{f"prompt.{n}": f"{r.name} md5:{r.md5}" for n, r in prompt_versions.items()},
            "git_commit": git_commit_of(root) or "none",
            "config_hash": config_hash(cfg),
            "mlflow_run": run_id,
        }
        registered = register_student(trained["folder"], gold.rows, cfg, metrics, run_id, lineage)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return {
        "run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": tracking_uri(root),
        "rows_labeled": len(labeled["rows"]),
        "rows_to_review": routed["review_rows"],
        "review_queue": routed["review_path"],
        "review": {
            **review,
            "human_rows": routed["human_rows"],
            "rejected_rows": routed["rejected_rows"],
            "stats": reviews["stats"],
            "reviewed_version": reviews["version"],
        },
        "rows_trained_on": len(train_set.rows),
        "train_steps": trained["steps"],
        "train_tokens_per_s": trained["tokens_per_s"],
        "gold_rows": len(gold.rows),
        "validation": [v.summary for v in (prompts, gold, checked, train_set)],
        "metrics": metrics,
        "registered": registered,
    }


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value[:6000])


if __name__ == "__main__":
    from potstill.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
