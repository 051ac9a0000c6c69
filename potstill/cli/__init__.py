"""`potstill` command line: the parser is in `parser.py`, each group of commands in its own module, and
`main` only dispatches. Env defaults are applied before Prefect is imported (it reads them at import)."""

from __future__ import annotations

import sys

from potstill.cli import catalog, registry, runs
from potstill.cli.parser import build_parser
from potstill.config import ConfigError, load_config, to_yaml
from potstill.env import apply_defaults, find_project_root

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = apply_defaults(args.project.resolve() if args.project else find_project_root())
    if args.command == "train-worker":
        from potstill.launch import run_worker

        return run_worker(args.spec)
    if args.command == "init":
        return catalog.init_project(root)
    if args.command in ("catalog", "lineage"):
        try:
            return (
                catalog.catalog_command(args, root)
                if args.command == "catalog"
                else catalog.lineage(args, root)
            )
        except (LookupError, ValueError) as exc:
            print(f"potstill: {exc}", file=sys.stderr)
            return 2
    config_path = args.config or (root / "params.yaml")
    try:
        cfg = load_config(config_path if config_path.exists() else None, args.override)
    except ConfigError as exc:
        print(f"potstill: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(to_yaml(cfg), end="")
        return 0
    if args.command == "step":
        return runs.step(args, cfg, root)
    if args.command == "promote":
        return registry.promote(args, cfg, root)
    if args.command == "deploy":
        return runs.deploy(args, cfg, root)
    if args.command == "predict":
        return runs.predict(args, cfg, root)
    if args.command == "review":
        return runs.review(cfg, root)
    return runs.run(cfg, root)
