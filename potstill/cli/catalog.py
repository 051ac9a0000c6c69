"""`potstill init`, `potstill catalog ...` and `potstill lineage`: the project's data and its history."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from potstill.catalog import Catalog
from potstill.config import load_config
from potstill.rowdiff import diff_rows
from potstill.versioning import split_ref


def init_project(root: Path) -> int:
    catalog = catalog_for(root)
    catalog.store.ensure()
    print(f"DVC repo at {root}; default remote: {_default_remote(root)}")
    if "reviewed_labels" in catalog.datasets and not catalog.exists("reviewed_labels"):
        # dvc.yaml's route stage depends on it; the review sync flow fills it
        catalog.save("reviewed_labels", [])
        print("created an empty reviewed_labels (human verdicts arrive with `potstill review sync`)")
    return 0


def catalog_for(root: Path) -> Catalog:
    params = root / "params.yaml"
    settings = load_config(params if params.exists() else None).catalog
    return Catalog.from_file(root / "catalog" / "catalog.yaml", settings)


def _default_remote(root: Path) -> str:
    from dvc.repo import Repo

    from potstill.versioning import quiet_dvc

    quiet_dvc()
    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        return f"{name} -> {repo.config['remote'][name]['url']}" if name else "none"


def catalog_command(args: argparse.Namespace, root: Path) -> int:
    catalog = catalog_for(root)
    cmd = args.catalog_command
    if cmd == "list":
        print(f"{'entry':<22}{'kind':<16}{'role':<16}{'version':<10}{'rows':>7}")
        for name, entry in catalog.datasets.items():
            record = catalog.current_version(name) if catalog.exists(name) else None
            version = record.name if record else ("changed" if catalog.exists(name) else "-")
            tabular = entry.format in ("jsonl", "csv")
            rows = str(len(catalog.load(name))) if tabular and catalog.exists(name) else "-"
            print(f"{name:<22}{entry.kind or entry.format:<16}{entry.role:<16}{version:<10}{rows:>7}")
        for name in catalog.prompts:
            latest = catalog.versions.latest(f"prompt.{name}")
            print(f"{'prompt.' + name:<22}{'prompt':<16}{'-':<16}{latest.name if latest else '-':<10}{'':>7}")
        return 0
    if cmd == "log":
        records = catalog.versions.records(args.entry)
        if not records:
            print(f"{args.entry}: no versions yet")
        for r in records:
            rows = f"{r.rows} rows" if r.rows is not None else ""
            print(f"{r.name:<5} {r.created}  md5 {r.md5}  {rows:<11} run {r.run_id or '-'}  {r.tag or ''}")
        return 0
    if cmd == "show":
        name, version = split_ref(args.ref)
        if name.startswith("prompt."):
            prompt_name = name.removeprefix("prompt.")
            text = (
                catalog.prompt_at(prompt_name, version).text if version else catalog.prompt(prompt_name).text
            )
            print(text)
            return 0
        rows = catalog.load(name, version)
        entry = catalog.dataset(name)
        columns: dict[str, set[str]] = {}
        for r in rows:
            for k, v in r.items():
                columns.setdefault(k, set()).add(type(v).__name__)
        print(f"{name}@{version or 'workspace'}: {len(rows)} rows, kind {entry.kind}, role {entry.role}")
        print("schema: " + ", ".join(f"{k}: {'|'.join(sorted(t))}" for k, t in columns.items()))
        for r in rows[: args.rows]:
            print("  " + json.dumps(r, ensure_ascii=False)[:300])
        report = root / "catalog" / "data" / "validation" / f"{name}.json"
        if report.exists():
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
            raise ValueError(f"checkout needs ENTRY@vN, got {args.ref!r}")
        record = catalog.checkout(name, version)
        print(f"restored {name}@{record.name} ({record.rows} rows, md5 {record.md5}) into the workspace")
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


def lineage(args: argparse.Namespace, root: Path) -> int:
    from mlflow.exceptions import MlflowException

    from tasks.lineage import lineage_lines  # imports MLflow

    try:
        print("\n".join(lineage_lines(root, args.model)))
    except MlflowException as exc:
        print(f"potstill: {args.model}: {exc.message}", file=sys.stderr)
        return 2
    return 0
