"""`potstill init`, `potstill catalog ...` and `potstill lineage`: the project's data and its history."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from potstill.config import RunConfig, load_config
from potstill.data.catalog import TABULAR, Catalog
from potstill.data.rowdiff import diff_rows
from potstill.data.task_files import missing_task_data
from potstill.data.versioning import split_ref
from potstill.errors import UserError


def init_project(root: Path) -> int:
    from potstill.data.demo import build_demo
    from potstill.models import default_cache_dir

    catalog = catalog_for(root)
    catalog.store.ensure()
    print(f"DVC repo at {root}; default remote: {_default_remote(root)}")
    for name in sorted(catalog.tasks):
        view = catalog.for_task(name)
        if view.task().demo is not None and missing_task_data(view):
            build_demo(view, default_cache_dir())
            print(
                f"{name}: built the demo data ({view.dataset('prompts').path}, {view.dataset('gold').path})"
            )
        if not view.exists("reviewed_labels"):
            # dvc.yaml's route stage depends on it; the review sync flow fills it
            view.save("reviewed_labels", [])
            print(
                f"{name}: created an empty reviewed_labels (human verdicts arrive with "
                "`potstill review sync`)"
            )
    return 0


def catalog_for(root: Path) -> Catalog:
    params = root / "params.yaml"
    settings = load_config(params if params.exists() else None).catalog
    return Catalog.from_file(root / "catalog" / "catalog.yaml", settings)


def default_task(root: Path) -> str:
    params = root / "params.yaml"
    return load_config(params if params.exists() else None).task


def _default_remote(root: Path) -> str:
    from dvc.repo import Repo

    from potstill.data.versioning import quiet_dvc

    quiet_dvc()
    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        return f"{name} -> {repo.config['remote'][name]['url']}" if name else "none"


def _view(catalog: Catalog, args: argparse.Namespace, root: Path) -> Catalog:
    """Entries by their full name (`task/entry`) always work; short names resolve in --task (or the run
    config's task, when it is declared)."""
    task = getattr(args, "task", None) or default_task(root)
    if getattr(args, "task", None) or task in catalog.tasks:
        return catalog.for_task(task)
    return catalog


def list_entries(catalog: Catalog, task: str | None) -> list[str]:
    lines = [f"{'entry':<32}{'kind':<16}{'role':<16}{'version':<10}{'rows':>7}"]
    for name, entry in catalog.datasets.items():
        if task and entry.task != task:
            continue
        exists = catalog.exists(name)
        record = catalog.current_version(name) if exists and entry.versioned else None
        version = record.name if record else ("changed" if exists and entry.versioned else "-")
        if exists and not entry.versioned:
            version = "present"
        rows = str(len(catalog.load(name))) if entry.format in TABULAR and exists else "-"
        kind = entry.kind or entry.format
        lines.append(f"{name:<32}{kind:<16}{entry.role:<16}{version:<10}{rows:>7}")
    for name in catalog.prompts:
        if task and not name.startswith(f"{task}/"):
            continue
        latest = catalog.versions.latest(catalog.prompt_key(name))
        label = "prompt." + name if "/" not in name else name.replace("/", "/prompt.", 1)
        lines.append(f"{label:<32}{'prompt':<16}{'-':<16}{latest.name if latest else '-':<10}{'':>7}")
    return lines


def catalog_command(args: argparse.Namespace, root: Path) -> int:
    full = catalog_for(root)
    cmd = args.catalog_command
    if cmd == "list":
        if args.task:
            full.task(args.task)  # an unknown task is an error, not an empty list
        print("\n".join(list_entries(full, args.task)))
        return 0
    catalog = _view(full, args, root)
    if cmd == "log":
        prompt = _prompt_name(args.entry)
        name = catalog.prompt_key(prompt) if prompt is not None else catalog.dataset(args.entry).name
        records = catalog.versions.records(name)
        if not records:
            print(f"{name}: no versions yet")
        for r in records:
            rows = f"{r.rows} rows" if r.rows is not None else ""
            print(f"{r.name:<5} {r.created}  md5 {r.md5}  {rows:<11} run {r.run_id or '-'}  {r.tag or ''}")
        return 0
    if cmd == "show":
        name, version = split_ref(args.ref)
        prompt = _prompt_name(name)
        if prompt is not None:
            text = catalog.prompt_at(prompt, version).text if version else catalog.prompt(prompt).text
            print(text)
            return 0
        entry = catalog.dataset(name)
        if entry.format not in TABULAR:
            print(json.dumps(catalog.load_json(name, version), indent=2)[:4000])
            return 0
        rows = catalog.load(name, version)
        columns: dict[str, set[str]] = {}
        for r in rows:
            for k, v in r.items():
                columns.setdefault(k, set()).add(type(v).__name__)
        print(
            f"{entry.name}@{version or 'workspace'}: {len(rows)} rows, kind {entry.kind}, role {entry.role}"
        )
        print("schema: " + ", ".join(f"{k}: {'|'.join(sorted(t))}" for k, t in columns.items()))
        for r in rows[: args.rows]:
            print("  " + json.dumps(r, ensure_ascii=False)[:300])
        report = catalog.validation_record_path(name) if entry.task else None
        if report is not None and report.exists():
            v = json.loads(report.read_text())
            verdict = "passed" if v["passed"] else f"failed checks {v['failed_checks']}"
            print(
                f"last validation (run {v.get('run_id')}): {verdict}; {v['valid_rows']} valid, "
                f"{v['quarantined_rows']} quarantined -> {v['quarantine_file']}"
            )
        else:
            print("last validation: none recorded")
        return 0
    if cmd == "checkout":
        name, version = split_ref(args.ref)
        if version is None:
            raise UserError(f"checkout needs ENTRY@vN, got {args.ref!r}")
        record = catalog.checkout(name, version)
        print(
            f"restored {catalog.full_name(name)}@{record.name} ({record.rows} rows, md5 {record.md5}) "
            "into the workspace"
        )
        return 0
    (na, va), (nb, vb) = split_ref(args.a), split_ref(args.b)
    d = diff_rows(catalog.load(na, va), catalog.load(nb, vb))
    print(f"{args.a} -> {args.b}: {d.summary()}")
    for rid in d.added[:20]:
        print(f"  + {rid}")
    for rid in d.removed[:20]:
        print(f"  - {rid}")
    for rid, old, new in d.relabeled[:20]:
        print(f"  ~ {rid}: {old} -> {new}")
    return 0


def _prompt_name(name: str) -> str | None:
    """`prompt.teacher_prompt` -> teacher_prompt; `polarity/prompt.teacher_prompt` ->
    polarity/teacher_prompt."""
    if name.startswith("prompt."):
        return name.removeprefix("prompt.")
    task, sep, rest = name.partition("/prompt.")
    return f"{task}/{rest}" if sep else None


def lineage(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    from mlflow.exceptions import MlflowException

    from potstill.data.tasks import registry_target
    from tasks.lineage import lineage_lines  # imports MLflow

    ref = args.model
    if ref is None:
        spec = catalog_for(root).task(cfg.task)
        ref = f"{registry_target(spec, cfg.registry).model_name}@champion"
    try:
        print("\n".join(lineage_lines(root, ref)))
    except MlflowException as exc:
        raise UserError(f"{ref}: {exc.message}") from None
    return 0
