"""One step of the distill pipeline per run, reading and writing catalog entries: what `dvc.yaml` calls.

`potstill step <name>` runs this flow for one step, so `dvc repro` executes the same tasks as the
`distill` flow, stage by stage, with every hand-off through a catalog entry. Each step is its own
MLflow run tagged `potstill.step`; the register step carries the metrics and the lineage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, runtime

from potstill.catalog import Catalog
from potstill.config import RunConfig, config_hash, flatten, to_yaml, validate
from potstill.env import find_project_root
from potstill.pipeline import STEPS
from potstill.validation import ValidationLimits, from_read_result
from potstill.versioning import git_commit_of
from tasks.evaluate import evaluate, predict_gold
from tasks.label import label_with_teacher
from tasks.load_data import Inputs, load_data
from tasks.register import register_student
from tasks.review import load_reviewed, review_spec, send_for_review
from tasks.route import route_labels
from tasks.store import store_entry
from tasks.tracking import configure, experiment_id, log_metrics
from tasks.train import build_student, train_student
from tasks.validate import Validated, validate_dataset


def _inputs(catalog: Catalog, cfg: RunConfig, run_id: str) -> tuple[Inputs, Validated, Validated]:
    limits = ValidationLimits(cfg.validation.max_text_chars, cfg.validation.max_parse_failure_rate)
    keep = cfg.validation.min_valid_fraction
    templates = [catalog.prompt(cfg.teacher.prompt), catalog.prompt(cfg.student.prompt)]
    inputs = load_data(catalog, cfg.data, run_id, templates)
    prompts = validate_dataset(
        catalog, cfg.data.prompts, inputs.prompts.rows, run_id, limits, keep,
        inputs.prompts.row_numbers, from_read_result(inputs.prompts),
    )  # fmt: skip
    gold = validate_dataset(
        catalog, cfg.data.gold, inputs.gold.rows, run_id, limits, keep,
        inputs.gold.row_numbers, from_read_result(inputs.gold),
    )  # fmt: skip
    return inputs, prompts, gold


@flow(name="distill-step")
def distill_step(
    step: str, params: dict[str, Any] | None = None, project: str | None = None
) -> dict[str, Any]:
    """Run one pipeline step; the previous steps' outputs must be in the catalog."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    cfg = validate(params or {})
    root = Path(project).resolve() if project else find_project_root()
    catalog = Catalog.from_file(root / "catalog" / "catalog.yaml", cfg.catalog)
    client = configure(root)
    run = client.create_run(
        experiment_id(client, cfg.registry.experiment, root),
        run_name=f"{step}-{runtime.flow_run.name}",
        tags={
            "potstill.flow": "distill-step",
            "potstill.step": step,
            "prefect.flow_run_id": str(runtime.flow_run.id),
            "potstill.config_hash": config_hash(cfg),
            "git_commit": git_commit_of(root) or "none",
        },
    )
    run_id = run.info.run_id
    client.log_text(run_id, to_yaml(cfg), "config/params.resolved.yaml")
    limits = ValidationLimits(cfg.validation.max_text_chars, cfg.validation.max_parse_failure_rate)
    keep = cfg.validation.min_valid_fraction
    out: dict[str, Any] = {"step": step, "run_id": run_id}
    try:
        inputs, prompts, gold = _inputs(catalog, cfg, run_id)
        labels = inputs.labels
        if step == "prepare":
            out.update(prompts=len(prompts.rows), gold=len(gold.rows))
        elif step == "label":
            labeled = _label_prompts(catalog, cfg, prompts.rows, labels)
            teacher_prompt = catalog.prompt(cfg.teacher.prompt)
            teacher_gold = label_with_teacher(gold.rows, cfg.teacher, teacher_prompt, labels, "gold")
            checked = validate_dataset(catalog, "teacher_labels", labeled["rows"], run_id, limits, keep)
            store_entry(catalog, "teacher_labels", checked.rows, run_id)
            store_entry(catalog, "teacher_gold_labels", teacher_gold["rows"], run_id)
            log_metrics(
                run_id, {f"teacher_{k}": teacher_gold[k] for k in ("rows_per_s", "latency_ms", "params")}
            )
            out.update(labeled=len(checked.rows))
        elif step == "route":
            checked = validate_dataset(
                catalog, "teacher_labels", catalog.load("teacher_labels"), run_id, limits, keep
            )
            routed = route_labels(catalog, checked.rows, cfg.route, run_id, load_reviewed(catalog))
            version = catalog.prompt_version(cfg.teacher.prompt, run_id).name
            spec = review_spec(
                catalog, cfg.data.prompts, version, cfg.teacher.model, cfg.review.annotators_per_row
            )
            review = send_for_review(
                catalog, routed["review_list"], spec, inputs.versions[cfg.data.prompts], run_id
            )
            out.update(
                train_rows=len(routed["train_rows"]),
                review_rows=routed["review_rows"],
                review=review["message"],
            )
        elif step == "train":
            train_set = validate_dataset(
                catalog, "train_set", catalog.load("train_set"), run_id, limits, keep,
                eval_rows=gold.rows, eval_name=cfg.data.gold,
            )  # fmt: skip
            base = build_student(
                cfg, catalog.prompt(cfg.student.prompt), labels, catalog.path("student_base")
            )
            # logit_offline reads the label step's signal shards: labeling again finds every shard done
            signals = (
                _label_prompts(catalog, cfg, prompts.rows, labels)["signals_dir"]
                if cfg.distill.method == "logit_offline"
                else None
            )
            trained = train_student(
                base, train_set.rows, cfg, catalog.path("student"), run_id,
                catalog.prompt(cfg.teacher.prompt), signals,
            )  # fmt: skip
            out.update(steps=trained["steps"], tokens_per_s=trained["tokens_per_s"])
        elif step == "evaluate":
            by_id = {r["id"]: r["label"] for r in catalog.load("teacher_gold_labels")}
            teacher = {"pred": [by_id[r["id"]] for r in gold.rows]}
            batch = cfg.student.eval_batch_size
            base_eval = predict_gold(catalog.path("student_base"), gold.rows, batch, "student (untrained)")
            student_eval = predict_gold(catalog.path("student"), gold.rows, batch, "student")
            metrics = evaluate(gold.rows, labels, teacher, base_eval, student_eval, run_id)
            store_entry(catalog, "eval_report", {"metrics": metrics}, run_id)
            out.update(metrics=metrics)
        else:  # register
            metrics = catalog.load_json("eval_report")["metrics"]
            log_metrics(run_id, metrics)
            client.log_batch(run_id, params=[_param(k, v) for k, v in flatten(cfg).items()])
            lineage = {f"data.{n}": _version(catalog, n) for n, e in catalog.datasets.items() if e.versioned}
            lineage |= {
                f"prompt.{n}": f"{r.name} md5:{r.md5}"
                for n in (cfg.teacher.prompt, cfg.student.prompt)
                for r in [catalog.prompt_version(n, run_id)]
            }
            lineage |= {"git_commit": git_commit_of(root) or "none", "config_hash": config_hash(cfg),
                        "mlflow_run": run_id}  # fmt: skip
            out["registered"] = register_student(
                catalog.path("student"), gold.rows, cfg, metrics, run_id, lineage
            )
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return out


def _label_prompts(
    catalog: Catalog, cfg: RunConfig, rows: list[dict[str, Any]], labels: list[str]
) -> dict[str, Any]:
    """Label the training prompts with what `distill.method` needs (signals, rationales), like the flow."""
    teacher = cfg.teacher.for_method(cfg.distill.method)
    rationale_prompt = catalog.prompt(teacher.rationale_prompt) if teacher.rationale else None
    return label_with_teacher(
        rows, teacher, catalog.prompt(cfg.teacher.prompt), labels, "prompts", rationale_prompt
    )


def _version(catalog: Catalog, name: str) -> str:
    record = catalog.current_version(name)
    return f"{record.name} md5:{record.md5}" if record else "unversioned"


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value[:6000])
