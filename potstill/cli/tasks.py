"""`potstill task new|list|show` and `potstill dvc`: declaring a task once, and the pipeline file derived
from the declarations."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from potstill.cli.catalog import catalog_for
from potstill.data.catalog import Catalog
from potstill.data.task_files import NewTask, check_columns, declare, parse_pairs, write_task
from potstill.data.tasks import TaskSpec, registry_target
from potstill.errors import TaskError
from potstill.pipeline import dvc_text, write_dvc


def task_command(args: argparse.Namespace, root: Path) -> int:
    if args.task_command == "new":
        return new_task(args, root)
    if args.task_command == "list":
        return list_tasks(root)
    return show_task(args.name, root)


def new_task(args: argparse.Namespace, root: Path) -> int:
    request = NewTask(
        name=args.name,
        kind=args.kind,
        labels=[x.strip() for x in args.labels.split(",") if x.strip()],
        prompts=args.prompts.resolve(),
        gold=args.gold.resolve(),
        format=args.format,
        columns=parse_pairs(",".join(args.column), "--column"),
        label_map=parse_pairs(args.label_map, "--label-map"),
        teacher_prompt=args.teacher_prompt,
        student_prompt=args.student_prompt,
        rationale_prompt=args.rationale_prompt,
        model_name=args.model_name,
        description=args.description,
        chat_template=args.chat_template,
    )
    spec = declare(request, root)
    check_columns(spec, {"prompts": request.prompts, "gold": request.gold})  # before anything is written
    written = write_task(spec, request, root)
    catalog = catalog_for(root).for_task(spec.name)
    catalog.store.ensure()
    versions = {name: catalog.version_workspace(name) for name in ("prompts", "gold")}
    catalog.save("reviewed_labels", [])  # dvc.yaml's route stage depends on it
    prompts = {name: catalog.prompt_version(name) for name in catalog.visible_prompts()}
    write_dvc(catalog, root)
    rows = {name: v.rows for name, v in versions.items()}
    print(
        f"declared task {spec.name!r} ({spec.kind}, labels {spec.label_set}) "
        f"in catalog/tasks/{spec.name}.yaml"
    )
    for name, v in versions.items():
        print(f"  {spec.name}/{name}: {catalog.dataset(name).path} {v.name} ({rows[name]} rows, md5 {v.md5})")
    for name, v in prompts.items():
        print(f"  {spec.name}/prompt.{name}: {catalog.prompts[catalog.full_name(name)].path} {v.name}")
    print(f"  registered model: {registry_target(spec, _registry(root)).model_name}; dvc.yaml stages "
          f"{spec.name}-label ... {spec.name}-register")  # fmt: skip
    print(f"wrote {len(written)} files. Next: potstill run --task {spec.name}")
    return 0


def _registry(root: Path):  # type: ignore[no-untyped-def]
    from potstill.config import load_config

    params = root / "params.yaml"
    return load_config(params if params.exists() else None).registry


def _data_version(catalog: Catalog, name: str) -> str:
    if not catalog.exists(name):
        return "missing"
    record = catalog.current_version(name)
    return record.name if record else "changed"


def _champions(root: Path, specs: list[TaskSpec]) -> dict[str, tuple[str, str]]:
    """task -> (champion version, its headline metric) from the registry ("-" when none)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.tracking import configure

    configure(root)
    client = MlflowClient()
    registry = _registry(root)
    out: dict[str, tuple[str, str]] = {}
    for spec in specs:
        target = registry_target(spec, registry)
        try:
            mv = client.get_model_version_by_alias(target.model_name, "champion")
        except MlflowException:
            out[spec.name] = ("-", "-")
            continue
        value = mv.tags.get(target.metric)
        if value is None and mv.run_id:
            try:
                value = client.get_run(mv.run_id).data.metrics.get(target.metric)
            except MlflowException:
                value = None
        shown = f"{target.metric.removeprefix('student_')} {float(value):.3f}" if value is not None else "-"
        out[spec.name] = (f"{target.model_name} v{mv.version}", shown)
    return out


def list_tasks(root: Path) -> int:
    catalog = catalog_for(root)
    specs = [catalog.tasks[n] for n in sorted(catalog.tasks)]
    if not specs:
        print("no tasks declared: potstill task new NAME --kind KIND --prompts FILE --gold FILE")
        return 0
    champions = _champions(root, specs)
    header = f"{'task':<16}{'kind':<16}{'labels':<36}{'prompts':<10}{'gold':<10}{'champion':<28}{'metric'}"
    print(header)
    for spec in specs:
        view = catalog.for_task(spec.name)
        labels = ",".join(spec.label_set) or "-"
        champion, metric = champions[spec.name]
        print(
            f"{spec.name:<16}{spec.kind:<16}{labels[:35]:<36}{_data_version(view, 'prompts'):<10}"
            f"{_data_version(view, 'gold'):<10}{champion:<28}{metric}"
        )
    return 0


def show_task(name: str, root: Path) -> int:
    from potstill.cli.catalog import list_entries

    catalog = catalog_for(root)
    spec = catalog.task(name)
    print(spec.to_yaml())
    print("\n".join(list_entries(catalog, spec.name)))
    return 0


def dvc_command(args: argparse.Namespace, root: Path) -> int:
    catalog = catalog_for(root)
    path = root / "dvc.yaml"
    wanted = dvc_text(catalog)
    if args.check:
        current = path.read_text() if path.exists() else ""
        if current != wanted:
            print(f"{path} is out of date with the pipeline and tasks: run `potstill dvc`", file=sys.stderr)
            return 1
        print(f"{path} matches the pipeline declaration for tasks {', '.join(sorted(catalog.tasks))}")
        return 0
    write_dvc(catalog, root)
    print(f"wrote {path}: {len(catalog.tasks)} task(s), stages <task>-<step>")
    return 0


__all__ = ["TaskError", "dvc_command", "task_command"]
