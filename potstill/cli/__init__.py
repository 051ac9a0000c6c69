"""`potstill` command line: the parser is in `parser.py`, each group of commands in its own module, and
`main` only dispatches. Env defaults are applied before Prefect is imported (it reads them at import).

A user error (`potstill.errors.UserError`: a missing file, an unmapped column, an unknown task, a bad
config value, a validation stop) prints one `potstill: ...` line and exits 2; its traceback goes to the
log file (`potstill.cli.logs`). The project's own `tasks/` and `flows/` are imported from the project
root, which `main` puts on the import path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from potstill.cli.parser import build_parser
from potstill.cli.prefect_server import tie_temporary_prefect_server
from potstill.env import apply_defaults, find_project_root, use_project_code

__all__ = ["build_parser", "main"]

# Commands that never start a flow (and so never Prefect's temporary server): no 2 s server import.
NO_FLOWS = frozenset({"init", "task", "dvc", "catalog", "lineage", "config", "train-worker"})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = apply_defaults(args.project.resolve() if args.project else find_project_root())
    use_project_code(root)  # tasks/ and flows/ are project code, not installed packages
    if args.command not in NO_FLOWS and not os.environ.get("PREFECT_API_URL"):
        tie_temporary_prefect_server()  # a SIGKILLed run leaves no temporary Prefect server behind
    from potstill.cli.logs import is_user_error, log_exception, log_path

    try:
        return dispatch(args, root)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        log_exception(exc)
        print(f"potstill: {exc}\n(details: {log_path()})", file=sys.stderr)
        return 2


def dispatch(args, root: Path) -> int:  # type: ignore[no-untyped-def]
    from potstill.cli import catalog, registry, runs, tasks
    from potstill.config import load_config, to_yaml

    if args.command == "train-worker":
        from potstill.training.launch import run_worker

        return run_worker(args.spec)
    if args.command == "init":
        return catalog.init_project(root)
    if args.command == "task":
        return tasks.task_command(args, root)
    if args.command == "dvc":
        return tasks.dvc_command(args, root)
    if args.command == "catalog":
        return catalog.catalog_command(args, root)
    config_path = getattr(args, "config", None) or (root / "params.yaml")
    overrides = list(getattr(args, "override", []) or [])
    if getattr(args, "task", None):
        overrides.append(f"task={args.task}")
    cfg = load_config(config_path if config_path.exists() else None, overrides)
    if args.command == "lineage":
        return catalog.lineage(args, cfg, root)
    if args.command == "config":
        print(to_yaml(cfg), end="")
        return 0
    if args.command == "promote":
        return registry.promote(args, cfg, root)
    if args.command == "deploy":
        return runs.deploy(args, cfg, root)
    runs.check_task(cfg, root)  # an unknown task or missing data stops here, before Prefect starts
    if args.command == "step":
        return runs.step(args, cfg, root)
    if args.command == "predict":
        return runs.predict(args, cfg, root)
    if args.command == "review":
        return runs.review(cfg, root)
    if args.command == "monitor":
        return runs.monitor(args, cfg, root)
    return runs.run(cfg, root)
