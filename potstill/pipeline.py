"""The pipeline, declared once: its steps, what each reads and writes, and which config it depends on.

This one declaration drives everything that runs the pipeline: the distill flow runs the steps in order
(`flows/distill.py`), `potstill step NAME` runs one (`flows/steps.py`, what each DVC stage calls), the
retrain flow shares the steps after its own start (`flows/retrain.py`), and `dvc.yaml` is rendered from
it for every declared task (`render_dvc`, written by `potstill dvc` and `potstill task new`), so DVC re-runs
a stage exactly when an input or a config section it reads changed. A test fails when the committed
`dvc.yaml` and this declaration disagree.

Names in `reads`/`writes` are a task's catalog entries (`train_set`) or its prompt templates
(`prompt:teacher_prompt`); a DVC stage depends on their paths.

A path that a stage writes cannot also be `dvc add`-ed (DVC refuses the duplicate), so the catalog
versions step outputs by content hash in the DVC cache and remote instead (`is_step_output`), and
`dvc repro` tracks them in `dvc.lock`. Both ways end in the same cache objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Step:
    """One pipeline step: a verb, the catalog entries it reads and writes, the config it depends on."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    params: tuple[str, ...]  # params.yaml keys (sections or dotted keys) whose change re-runs the step
    does: str
    stage: bool = True  # a DVC stage of its own (prepare is not: every stage runs it first)


STEPS: tuple[Step, ...] = (
    Step(
        "prepare",
        reads=("task", "prompts", "gold"),
        writes=(),
        params=("data", "validation"),
        does="read the task's prompts and gold files (built for the demo), validate them",
        stage=False,
    ),
    Step(
        "label",
        reads=("task", "prompts", "gold", "prompt:teacher_prompt", "prompt:rationale_prompt"),
        writes=("teacher_labels", "teacher_gold_labels"),
        params=("data", "teacher", "validation", "distill.method"),
        does="label the prompts and the gold rows with the teacher (what the method needs: signals, "
        "rationales)",
    ),
    Step(
        "route",
        reads=("teacher_labels", "reviewed_labels"),
        writes=("review_queue", "train_set"),
        params=("route", "review", "validation"),
        does="send low-confidence labels to review, merge human verdicts, keep the rest for training",
    ),
    Step(
        "train",
        reads=("train_set", "gold", "prompt:student_prompt"),
        writes=("models",),
        params=("data.seed", "student", "distill", "teacher.model"),
        does="build the student and distill it with the method",
    ),
    Step(
        "evaluate",
        reads=("gold", "teacher_gold_labels", "models"),
        writes=("eval_report",),
        params=("data.max_eval_rows", "student.eval_batch_size"),
        does="teacher, untrained and trained student on the gold rows",
    ),
    Step(
        "register",
        reads=("models", "eval_report"),
        writes=(),
        params=("registry", "promotion"),
        does="log the student to MLflow and register it through the promotion gate",
    ),
)
STEP_NAMES = tuple(s.name for s in STEPS)
BY_NAME = {s.name: s for s in STEPS}
STEP_OUTPUTS = frozenset(w for s in STEPS for w in s.writes)
DVC_HEADER = (
    "# Generated from potstill/pipeline.py for every task in catalog/tasks/ (`potstill dvc` rewrites it;\n"
    "# `potstill task new` too). Each stage runs `potstill step <step> --task <task>`, which first reads "
    "and\n"
    "# validates the task's data: `dvc repro` runs every declared task, `dvc repro <task>-register` one of\n"
    "# them. Do not edit by hand: a test checks it.\n"
)


def step(name: str) -> Step:
    if name not in BY_NAME:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(STEP_NAMES)}")
    return BY_NAME[name]


def stage_name(task: str, step_name: str) -> str:
    return f"{task}-{step_name}"


def _dep_paths(catalog: Any, task: str, names: tuple[str, ...]) -> list[str]:
    """Project-relative paths of a task's entries and templates (templates it does not declare: none)."""
    view = catalog.for_task(task)
    out: list[str] = []
    for name in names:
        if name == "task":
            out.append(f"catalog/tasks/{task}.yaml")
        elif name.startswith("prompt:"):
            prompt = name.removeprefix("prompt:")
            if view.has_prompt(prompt):
                out.append(view.prompts[view.full_name(prompt)].path)
        else:
            out.append(view.dataset(name).path)
    return out


def render_dvc(catalog: Any) -> dict[str, Any]:
    """`dvc.yaml` for every task the catalog declares: one stage per step and task."""
    stages: dict[str, Any] = {}
    for task in sorted(catalog.tasks):
        for s in (s for s in STEPS if s.stage):
            stage: dict[str, Any] = {"cmd": f"potstill step {s.name} --task {task}"}
            deps = _dep_paths(catalog, task, s.reads)
            if deps:
                stage["deps"] = deps
            stage["params"] = list(s.params)
            outs = _dep_paths(catalog, task, s.writes)
            if outs:
                stage["outs"] = outs
            stages[stage_name(task, s.name)] = stage
    return {"stages": stages}


def dvc_text(catalog: Any) -> str:
    return DVC_HEADER + yaml.safe_dump(render_dvc(catalog), sort_keys=False, width=110)


def write_dvc(catalog: Any, root: Path) -> Path:
    path = root / "dvc.yaml"
    path.write_text(dvc_text(catalog))
    return path


def load_stages(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "dvc.yaml"
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {})


def _paths(items: list[Any]) -> list[str]:
    return [next(iter(i)) if isinstance(i, dict) else str(i) for i in items or []]


def stage_outputs(root: Path) -> dict[str, str]:
    """{output path relative to root: stage name} of the project's `dvc.yaml` as it is on disk."""
    return {out: name for name, stage in load_stages(root).items() for out in _paths(stage.get("outs", []))}


def is_step_output(task: str | None, short_name: str) -> bool:
    """Whether a task's entry is written by a step (and so versioned by content, never `dvc add`-ed)."""
    return task is not None and short_name in STEP_OUTPUTS
