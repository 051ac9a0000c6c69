"""The pipeline's steps as Prefect wiring: one function per step of `potstill.pipeline.STEPS`.

Only wiring, written once. The distill flow runs every step in order, `potstill step NAME` (a DVC stage)
runs one, and the retrain flow runs label, route, train, evaluate and register after its own start. A
step reads what earlier steps of the same run left in `data` (never a file another run may have replaced
meanwhile) and, run on its own (`standalone`), loads its inputs from the catalog instead; it always
writes its outputs to the catalog. Model folders live under the run's own folder
(`catalog/data/<task>/runs/<run_id>/`), so two runs at once never train, evaluate or register each
other's weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import runtime

from potstill.chat import chat_wrapped, check_student_prompt
from potstill.config import RunConfig, TeacherConfig, config_hash, flatten, to_yaml, validate
from potstill.data.catalog import Catalog
from potstill.data.tasks import RegistryTarget, TaskSpec, registry_target
from potstill.data.validation import ValidationLimits, from_read_result
from potstill.data.versioning import VersionRecord, git_commit_of
from potstill.env import find_project_root
from potstill.errors import TaskError, UserError
from potstill.operations.deployment import SERVED_CONFIG_ENV, check_deployment_run
from potstill.pipeline import STEP_NAMES
from potstill.prompts import PromptTemplate
from potstill.training.generator import saved_prompt
from tasks.evaluate import evaluate as evaluate_gold
from tasks.evaluate import judge_by_teacher, predict_gold
from tasks.label import label_with_teacher
from tasks.load_data import INPUTS, load_data
from tasks.register import register_student
from tasks.retrain import evaluate_slice
from tasks.review import load_reviewed, review_spec, send_for_review, sync_reviews, wait_for_reviews
from tasks.route import route_labels
from tasks.store import store_entry
from tasks.tracking import log_metrics, parent_run, resolve_registered
from tasks.train import build_student, train_student
from tasks.validate import Validated, validate_dataset


@dataclass(frozen=True)
class Setup:
    """What a flow resolves before it opens an MLflow run: the config, the task and its catalog view."""

    cfg: RunConfig
    root: Path
    catalog: Catalog  # the task's view: entries by their short names
    spec: TaskSpec
    target: RegistryTarget


def resolve(params: dict[str, Any] | None, project: str | None) -> Setup:
    check_served(params, project)
    cfg = validate(params or {})
    root = Path(project).resolve() if project else find_project_root()
    catalog = Catalog.from_file(root / "catalog" / "catalog.yaml", cfg.catalog).for_task(cfg.task)
    spec = catalog.task()
    return Setup(cfg, root, catalog, spec, registry_target(spec, cfg.registry))


def check_served(params: dict[str, Any] | None, project: str | None) -> None:
    """In a flow run of a deployment that `potstill deploy` serves (it names what it served in
    `POTSTILL_SERVED_CONFIG`, which its flow-run processes inherit), refuse parameters it did not serve."""
    served_file = os.environ.get(SERVED_CONFIG_ENV)
    if not served_file:
        return
    name = runtime.deployment.name
    if not name:
        return  # not a deployment run (a flow called in the serving process itself)
    served = json.loads(Path(served_file).read_text()).get(name)
    if served is None:
        raise UserError(f"deployment {name!r} is not one that this `potstill deploy` serves")
    given = str(Path(project).resolve()) if project else None
    check = check_deployment_run(str(Path(served["project"]).resolve()), served["params"], given, params)
    if not check.allowed:
        raise UserError(f"deployment {name!r} refuses this run: " + "; ".join(check.reasons))


@dataclass(frozen=True)
class RunContext:
    """One run of (part of) the pipeline for one task, with its MLflow parent run."""

    cfg: RunConfig
    root: Path
    catalog: Catalog
    spec: TaskSpec
    target: RegistryTarget
    run_id: str
    experiment_id: str
    templates: dict[str, PromptTemplate]  # teacher_prompt, student_prompt (, rationale_prompt)
    prompt_versions: dict[str, VersionRecord]
    config_hash: str  # of the config as given (its registered-model sources not yet downloaded)
    standalone: bool = False  # one step on its own: inputs come from the catalog

    @property
    def limits(self) -> ValidationLimits:
        v = self.cfg.validation
        return ValidationLimits(v.max_text_chars, v.max_parse_failure_rate)

    @property
    def keep(self) -> float:
        return self.cfg.validation.min_valid_fraction

    @property
    def training_teacher(self) -> TeacherConfig:
        """The teacher settings for the training prompts: what the method needs (signals, rationales)."""
        return self.cfg.teacher.for_method(self.cfg.distill.method)

    @property
    def run_dir(self) -> Path:
        return self.catalog.run_dir(self.run_id)

    def validate(self, name: str, rows: list[dict[str, Any]], **kw: Any) -> Validated:
        return validate_dataset(self.catalog, name, rows, self.run_id, self.limits, self.keep, **kw)


def templates_for(setup: Setup) -> dict[str, PromptTemplate]:
    """The task's templates this run uses; a method that needs rationales needs the rationale template
    (math rows carry their chain of thought already)."""
    catalog, cfg = setup.catalog, setup.cfg
    out = {name: catalog.prompt(name) for name in ("teacher_prompt", "student_prompt")}
    if cfg.teacher.for_method(cfg.distill.method).rationale and setup.spec.kind != "math":
        if not catalog.has_prompt("rationale_prompt"):
            raise TaskError(
                f"task {setup.spec.name!r} declares no rationale template, which teacher.rationale (and "
                f"distill.method step_by_step) need: add `templates: {{rationale: FILE}}` to "
                f"catalog/tasks/{setup.spec.name}.yaml (`{{label}}` is the teacher's label)"
            )
        out["rationale_prompt"] = catalog.prompt("rationale_prompt")
    return out


@contextmanager
def open_run(
    setup: Setup, flow: str, run_name: str, *, standalone: bool = False, tags: dict[str, str] | None = None
) -> Iterator[RunContext]:
    """The MLflow parent run of a flow run (tags, params, resolved config, prompt versions), ended FINISHED
    or FAILED with the block."""
    cfg, catalog = setup.cfg, setup.catalog
    templates = templates_for(setup)
    all_tags = {
        "potstill.flow": flow,
        "potstill.task": setup.spec.name,
        "prefect.flow_run_id": str(runtime.flow_run.id),
        "potstill.config_hash": config_hash(cfg),
        "git_commit": git_commit_of(setup.root) or "none",
        **(tags or {}),
    }
    with parent_run(
        setup.root, setup.target.experiment, run_name, all_tags, flatten(cfg), to_yaml(cfg)
    ) as run:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        versions = {name: catalog.prompt_version(name, run.run_id) for name in templates}
        for name, record in versions.items():
            client.set_tag(run.run_id, f"prompt.{name}", f"{record.name} md5:{record.md5}")
            client.log_text(run.run_id, templates[name].text, f"prompts/{name}.txt")
        resolved = resolve_registered(cfg)
        if setup.spec.chat_template:  # the same wrapped text at labeling, training and serving
            templates = chat_wrapped(templates, resolved)
            for name, template in templates.items():
                client.log_text(run.run_id, template.text, f"prompts/{name}.chat.txt")
        yield RunContext(
            resolved, setup.root, catalog, setup.spec, setup.target, run.run_id,
            run.experiment_id, templates, versions, config_hash(cfg), standalone,
        )  # fmt: skip


def new_data() -> dict[str, Any]:
    """What the steps of one run hand each other; `lineage` collects the versions they read and wrote."""
    return {"lineage": {}}


# ---- the steps


def prepare(ctx: RunContext, data: dict[str, Any], which: tuple[str, ...] = INPUTS) -> None:
    """Read and validate the task's prompts and gold rows (the demo builds its data when missing)."""
    templates = [ctx.templates["teacher_prompt"], ctx.templates["student_prompt"]]
    inputs = load_data(ctx.catalog, ctx.cfg.data, ctx.run_id, templates, which)
    data["inputs"] = inputs
    for name in which:
        read = inputs.prompts if name == "prompts" else inputs.gold
        assert read is not None
        data[name] = ctx.validate(
            name, read.rows, row_numbers=read.row_numbers, rejected=from_read_result(read)
        )
        data["lineage"][f"data.{name}"] = inputs.versions[name]
    data.setdefault("source", ("prompts", inputs.versions.get("prompts")))


def label(ctx: RunContext, data: dict[str, Any]) -> None:
    """Label the prompts (with what the method trains on) and the gold rows with the teacher."""
    spec, teacher_prompt = ctx.spec, ctx.templates["teacher_prompt"]
    labeled = label_with_teacher(
        data["prompts"].rows, ctx.training_teacher, teacher_prompt, spec.kind, spec.label_set,
        data.get("what", "prompts"), ctx.templates.get("rationale_prompt"),
    )  # fmt: skip
    teacher_gold = label_with_teacher(
        data["gold"].rows, ctx.cfg.teacher, teacher_prompt, spec.kind, spec.label_set, "gold"
    )
    checked = ctx.validate("teacher_labels", labeled["rows"])
    lineage = data["lineage"]
    lineage["data.teacher_labels"] = store_entry(ctx.catalog, "teacher_labels", checked.rows, ctx.run_id)
    lineage["data.teacher_gold_labels"] = store_entry(
        ctx.catalog, "teacher_gold_labels", teacher_gold["rows"], ctx.run_id
    )
    log_metrics(ctx.run_id, {f"teacher_{k}": teacher_gold[k] for k in ("rows_per_s", "latency_ms", "params")})
    data.update(labeled=labeled, teacher_gold=teacher_gold, teacher_labels=checked)


def route(ctx: RunContext, data: dict[str, Any]) -> None:
    """Low-confidence labels to review (Label Studio or an import file), human verdicts merged, the rest
    into the training set."""
    cfg, catalog = ctx.cfg, ctx.catalog
    checked = data.get("teacher_labels") or ctx.validate("teacher_labels", catalog.load("teacher_labels"))
    source, source_version = data["source"]
    version = ctx.prompt_versions["teacher_prompt"].name
    spec = review_spec(catalog, source, version, cfg.teacher.model, cfg.review.annotators_per_row)
    if ctx.standalone:  # a DVC stage: reviewed_labels is its dependency, synced by `potstill review sync`
        reviews = {"rows": load_reviewed(catalog), "version": None, "stats": None}
    else:
        reviews = sync_reviews(catalog, spec, cfg.review, ctx.run_id)  # answers given since the last run
    routed = route_labels(catalog, checked.rows, cfg.route, ctx.run_id, reviews["rows"])
    review = send_for_review(catalog, routed["review_list"], spec, source_version, ctx.run_id)
    if not ctx.standalone and cfg.review.wait != "none" and review["target"] == "label-studio":
        wait_for_reviews([str(r["id"]) for r in routed["review_list"]], spec, cfg.review)
        reviews = sync_reviews(catalog, spec, cfg.review, ctx.run_id)
        routed = route_labels(catalog, checked.rows, cfg.route, ctx.run_id, reviews["rows"])
    train_set = ctx.validate(
        "train_set", routed["train_rows"], eval_rows=data["gold"].rows, eval_name=catalog.full_name("gold")
    )
    lineage = data["lineage"]
    lineage.update({f"data.{n}": v for n, v in routed["versions"].items()})
    if reviews["version"]:
        lineage["data.reviewed_labels"] = reviews["version"]
    data.update(routed=routed, review=review, reviews=reviews, train_set=train_set)


def require_student(spec: TaskSpec) -> None:
    """Every kind has a student: a classifier for a fixed label set (classification, NLI), a generator for
    the others; a kind without an evaluation (a new kind module in progress) stops here, before the
    teacher spends time on rows no student can learn."""
    if spec.kind_object.score is None:
        raise TaskError(
            f"task {spec.name!r} is of kind {spec.kind}, which has no student evaluation (Kind.score) yet. "
            f"Its teacher labels are: `potstill step label --task {spec.name}` writes them to the catalog "
            f"entry {spec.name}/teacher_labels."
        )


def train(ctx: RunContext, data: dict[str, Any]) -> None:
    """Build the student (or continue from `data["student_base"]`) and distill it into the run's folder."""
    require_student(ctx.spec)
    cfg, catalog = data.get("train_cfg", ctx.cfg), ctx.catalog
    train_set = data.get("train_set") or ctx.validate(
        "train_set",
        catalog.load("train_set"),
        eval_rows=data["gold"].rows,
        eval_name=catalog.full_name("gold"),
    )
    if data.get("student_base"):  # a champion to continue from: it must speak this run's prompt format
        check_student_prompt(
            saved_prompt(Path(data["student_base"])),
            ctx.templates["student_prompt"],
            str(data["student_base"]),
        )
    base = data.get("student_base") or build_student(
        cfg, ctx.templates["student_prompt"], ctx.spec.label_set, ctx.run_dir / "student_base", ctx.spec.kind
    )
    signals = None
    if cfg.distill.method == "logit_offline":  # the teacher's stored top-k: labeling again finds it done
        if "labeled" not in data:
            label(ctx, data)
        signals = data["labeled"].get("signals_dir")
    trained = train_student(
        base,
        train_set.rows,
        cfg,
        ctx.run_dir / "student",
        ctx.run_id,
        ctx.templates["teacher_prompt"],
        signals,
    )
    models = {"student_base": str(base), "student": str(trained["folder"]), "run_id": ctx.run_id}
    if ctx.standalone:  # the DVC stage's output: where evaluate and register find this run's models
        _replace_models_pointer(ctx, models)
    data.update(models=models, trained=trained)


STEP_TRAIN_MARK = ".step-train"  # a run folder a standalone train step left for evaluate and register


def _replace_models_pointer(ctx: RunContext, models: dict[str, str]) -> None:
    """Point `models` at this run's folders and remove the folders earlier standalone train steps left
    (DVC deletes a stage's outputs before it runs, so the old pointer cannot say which: the mark does).
    A distill run's folders carry no mark: they are its own, removed when it ends."""
    (ctx.run_dir / STEP_TRAIN_MARK).touch()
    store_entry(ctx.catalog, "models", models, ctx.run_id)
    for mark in ctx.run_dir.parent.glob(f"*/{STEP_TRAIN_MARK}"):
        if mark.parent != ctx.run_dir:
            shutil.rmtree(mark.parent, ignore_errors=True)


def teacher_text(record: dict[str, Any]) -> str | None:
    """What the teacher wrote for a row: math's chain of thought, a free-text kind's output."""
    return record.get("rationale") or record.get("output")


def evaluate(ctx: RunContext, data: dict[str, Any]) -> None:
    """Teacher, untrained (or champion) and trained student on the gold rows, and on the new slice when the
    run has one (retrain)."""
    catalog, gold = ctx.catalog, data["gold"].rows
    teacher = data.get("teacher_gold")
    if teacher is None:
        by_id = {r["id"]: r for r in catalog.load("teacher_gold_labels")}
        teacher = {"pred": [by_id[r["id"]]["label"] for r in gold], "rows": [by_id[r["id"]] for r in gold]}
    if ctx.spec.kind_object.generative and "rows" in teacher:  # the teacher's texts beside its answers
        teacher = {**teacher, "responses": [teacher_text(r) for r in teacher["rows"]]}
    models = data.get("models") or catalog.load_json("models")
    batch = ctx.cfg.student.eval_batch_size
    base_name, name = data.get("eval_names", ("student (untrained)", "student"))
    base_eval = predict_gold(Path(models["student_base"]), gold, batch, base_name)
    student_eval = predict_gold(Path(models["student"]), gold, batch, name)
    labels = ctx.spec.label_set
    kind = ctx.spec.kind
    metrics = evaluate_gold(gold, labels, teacher, base_eval, student_eval, ctx.run_id, kind)
    if ctx.spec.kind_object.judge_by_teacher:  # chat: how much each answer reads like the teacher's
        scored = {"teacher": teacher, "student_base": base_eval, "student": student_eval}
        answers = {who: r["responses"] for who, r in scored.items() if "responses" in r}
        metrics |= judge_by_teacher(
            ctx.cfg.teacher, ctx.templates["teacher_prompt"], kind, gold, answers, ctx.run_id
        )
    new_slice = data.get("new_slice") or []
    if new_slice:
        before = predict_gold(Path(models["student_base"]), new_slice, batch, f"{base_name}, new slice")
        after = predict_gold(Path(models["student"]), new_slice, batch, f"{name}, new slice")
        metrics |= evaluate_slice(new_slice, labels, before, after, ctx.run_id, kind=kind)
    data["lineage"]["data.eval_report"] = store_entry(
        catalog, "eval_report", {"metrics": metrics}, ctx.run_id
    )
    data["metrics"] = metrics


def register(ctx: RunContext, data: dict[str, Any]) -> None:
    """Log the trained student with its lineage and register it through the promotion gate."""
    catalog = ctx.catalog
    metrics = data.get("metrics")
    if metrics is None:
        metrics = catalog.load_json("eval_report")["metrics"]
        log_metrics(ctx.run_id, metrics)
    models = data.get("models") or catalog.load_json("models")
    lineage = dict(data["lineage"])
    if ctx.standalone:  # what the catalog holds now: the versions the earlier stages wrote
        for name in catalog.visible_datasets():
            if catalog.is_versioned(name) and catalog.exists(name):
                record = catalog.current_version(name)
                lineage[f"data.{name}"] = f"{record.name} md5:{record.md5}" if record else "unversioned"
    lineage |= {f"prompt.{n}": f"{r.name} md5:{r.md5}" for n, r in ctx.prompt_versions.items()}
    lineage |= {
        "task": ctx.spec.name,
        "git_commit": git_commit_of(ctx.root) or "none",
        "config_hash": ctx.config_hash,
        "mlflow_run": ctx.run_id,
    }
    data["registered"] = register_student(
        Path(models["student"]), data["gold"].rows, ctx.cfg, ctx.target, metrics, ctx.run_id, lineage
    )


RUNNERS: dict[str, Callable[[RunContext, dict[str, Any]], None]] = {
    "prepare": prepare,
    "label": label,
    "route": route,
    "train": train,
    "evaluate": evaluate,
    "register": register,
}
assert tuple(RUNNERS) == STEP_NAMES, "flows/pipeline.py must wire every step of potstill.pipeline.STEPS"


def run_steps(ctx: RunContext, data: dict[str, Any], names: tuple[str, ...] = STEP_NAMES) -> dict[str, Any]:
    for name in names:
        RUNNERS[name](ctx, data)
    return data


def remove_run_models(ctx: RunContext) -> None:
    """After a successful run the registered copy is the record: the run's own folders go."""
    shutil.rmtree(ctx.run_dir, ignore_errors=True)


__all__ = [
    "RUNNERS",
    "RunContext",
    "Setup",
    "new_data",
    "open_run",
    "remove_run_models",
    "require_student",
    "resolve",
    "run_steps",
]
