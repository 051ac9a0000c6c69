"""A task's own files: `potstill task new` turns a user's files and wishes into a declaration, checked
against the files' columns before anything is written, then copies them into the project with default
prompts for the kind; before a run, the files are checked to be there and to fit the declaration."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potstill.data.tasks import DATA_DIR, FORMATS, NAME, TASKS_DIR, DataFile, TaskSpec, _validated, task_file
from potstill.errors import TaskError
from potstill.kinds import KINDS


@dataclass(frozen=True)
class NewTask:
    """What `potstill task new` was asked for, before anything is copied."""

    name: str
    kind: str
    labels: list[str]
    prompts: Path
    gold: Path
    format: str | None = None
    columns: dict[str, str] | None = None
    label_map: dict[str, str] | None = None
    teacher_prompt: Path | None = None
    student_prompt: Path | None = None
    rationale_prompt: Path | None = None
    model_name: str | None = None
    description: str = ""
    chat_template: bool = False


def detect_format(path: Path, given: str | None) -> str:
    if given:
        if given not in FORMATS:
            raise TaskError(f"--format {given!r}: use one of {', '.join(FORMATS)}")
        return given
    suffix = path.suffix.lower().lstrip(".")
    aliases = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet", "tsv": "csv"}
    fmt = aliases.get(suffix, suffix)
    if fmt not in FORMATS:
        raise TaskError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; pass --format")
    return fmt


def declare(request: NewTask, root: Path) -> TaskSpec:
    """The declaration of a new task, with its data and template paths inside the project (nothing is
    written yet: `potstill.data.catalog.Catalog.add_task` copies and versions)."""
    if request.name and NAME.match(request.name) and task_file(root, request.name).exists():
        raise TaskError(
            f"task {request.name!r} exists ({task_file(root, request.name)}); pick another name or edit "
            "that file"
        )
    for what, path in (("--prompts", request.prompts), ("--gold", request.gold)):
        if not Path(path).is_file():
            raise TaskError(f"{what} {path}: no such file")
    fmt_p = detect_format(Path(request.prompts), request.format)
    fmt_g = detect_format(Path(request.gold), request.format)
    base = f"{DATA_DIR.as_posix()}/{request.name}"
    prompt_dir = f"catalog/prompts/{request.name}"

    def template(given: Path | None, which: str) -> str | None:
        if given is not None:
            if not Path(given).is_file():
                raise TaskError(f"--{which}-prompt {given}: no such file")
            return f"{prompt_dir}/{which}.txt"
        return f"{prompt_dir}/{which}.txt" if which != "rationale" or _has_rationale(request.kind) else None

    return _validated(
        f"task {request.name!r}",
        {
            "name": request.name,
            "kind": request.kind,
            "labels": list(request.labels),
            "description": request.description,
            "prompts": {"path": f"{base}/prompts.{fmt_p}", "format": fmt_p},
            "gold": {"path": f"{base}/gold.{fmt_g}", "format": fmt_g},
            "columns": dict(request.columns or {}),
            "label_map": dict(request.label_map or {}),
            "templates": {
                "teacher": template(request.teacher_prompt, "teacher"),
                "student": template(request.student_prompt, "student"),
                "rationale": template(request.rationale_prompt, "rationale"),
            },
            "model_name": request.model_name,
            "chat_template": request.chat_template,
        },
    )


def _has_rationale(kind: str) -> bool:
    return KINDS[kind].rationale_prompt is not None if kind in KINDS else False


def parse_pairs(text: str | None, what: str) -> dict[str, str]:
    """`a=b,c=d` (or repeated options joined) -> {"a": "b", "c": "d"}."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise TaskError(f"{what}: expected KEY=VALUE pairs separated by commas, got {part!r}")
        out[key.strip()] = value.strip()
    return out


def check_columns(spec: TaskSpec, files: dict[str, Path]) -> None:
    """Fail before anything runs when a file lacks a column the declaration needs (mapped or not).

    files: "prompts" / "gold" -> the file to check (the user's originals before `task new` copies them,
    the catalog copies at run start)."""
    from potstill.data.readers import file_columns

    kind = spec.kind_object
    for which, path in files.items():
        data: DataFile = getattr(spec, which)
        if not Path(path).is_file():
            raise TaskError(f"task {spec.name!r}: the {which} file {path} is missing")
        present = file_columns(Path(path), data.format)
        if not present:
            continue  # empty or unreadable: the reader reports it row by row, with the file
        needed = [*kind.text_fields, *(["label"] if which == "gold" and kind.fixed_labels else [])]
        for field in needed:
            column = spec.columns.get(field, field)
            if column not in present:
                how = f"Map it with --column {field}=COLUMN" if column == field else "Fix --column"
                raise TaskError(
                    f"task {spec.name!r}: the {which} file {path} has no column {column!r} for the field "
                    f"{field!r} of a {spec.kind} row; its columns are {present}. {how} "
                    f"(or `columns:` in {TASKS_DIR.as_posix()}/{spec.name}.yaml)"
                )


def write_task(spec: TaskSpec, request: NewTask, root: Path) -> list[Path]:
    """Copy the task's data and prompt files into the project and write its declaration; returns the
    files written. Default prompts of the kind are written where the user gave none."""
    written: list[Path] = []
    for which, source in (("prompts", request.prompts), ("gold", request.gold)):
        dest = root / getattr(spec, which).path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        written.append(dest)
    given = {"teacher": request.teacher_prompt, "student": request.student_prompt,
             "rationale": request.rationale_prompt}  # fmt: skip
    for which, source in given.items():
        rel = getattr(spec.templates, which)
        if rel is None:
            continue
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            shutil.copyfile(source, dest)
        else:
            text = spec.kind_object.render_default(which, spec.label_set)
            if text is None:
                continue
            dest.write_text(text + "\n", encoding="utf-8")
        written.append(dest)
    path = task_file(root, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.to_yaml(), encoding="utf-8")
    written.append(path)
    return written


def missing_task_data(catalog: Any) -> list[str]:
    """Which of the task's input files are missing (`catalog` is the task's view): [] when both exist;
    the demo may build them, any other task stops with a TaskError naming the files and the task, before
    anything is read or written (so the file that is there stays exactly as it is). Present files are
    checked against the column mapping."""
    spec = catalog.task()
    inputs = ("prompts", "gold")
    missing = [name for name in inputs if not catalog.exists(name)]
    if not missing:
        check_columns(spec, {name: catalog.file(name) for name in inputs})
        return []
    if spec.demo is not None:
        return missing
    files = " and ".join(f"the {name} file {catalog.dataset(name).path}" for name in missing)
    verb = "is" if len(missing) == 1 else "are"
    raise TaskError(
        f"task {spec.name!r}: {files} {verb} missing. Restore it with `potstill catalog checkout --task "
        f"{spec.name} {missing[0]}@vN` (its versions: `potstill catalog log --task {spec.name} "
        f"{missing[0]}`), or declare the task again with `potstill task new`."
    )
