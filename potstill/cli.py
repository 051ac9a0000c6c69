"""`potstill` command line. Env defaults are applied before Prefect is imported (it reads them at import)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from potstill.config import ConfigError, load_config, to_yaml
from potstill.env import apply_defaults, find_project_root

OVERRIDE_HELP = (
    "override one config field, KEY.PATH=VALUE with the value read as YAML; repeatable "
    "(e.g. -o student.max_steps=50 -o route.threshold=null)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="potstill",
        description="Distill a teacher LLM into a small student for one task, track it in MLflow, "
        "orchestrate it with Prefect.",
    )
    parser.add_argument(
        "--project",
        type=Path,
        default=None,
        help="project root holding catalog/catalog.yaml (default: nearest above the cwd)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the distill flow: label with the teacher, route, train the student, evaluate, register"),
        ("config", "validate the run config and print it resolved, with every default filled in"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            default=None,
            help="run config YAML (default: params.yaml in the project root)",
        )
        p.add_argument(
            "-o", "--override", action="append", default=[], metavar="KEY=VALUE", help=OVERRIDE_HELP
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = apply_defaults(args.project.resolve() if args.project else find_project_root())
    config_path = args.config or (root / "params.yaml")
    try:
        cfg = load_config(config_path if config_path.exists() else None, args.override)
    except ConfigError as exc:
        print(f"potstill: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(to_yaml(cfg), end="")
        return 0
    from flows.distill import distill  # imports Prefect: after apply_defaults
    from potstill.summary import render

    summary = distill(params=cfg.model_dump(mode="json"), project=str(root))
    render(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
