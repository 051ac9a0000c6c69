"""The `potstill` argument parser: every command and option with its help text."""

from __future__ import annotations

import argparse
from pathlib import Path

from potstill.pipeline import STEPS

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
        ("step", "run one step of the pipeline on catalog entries (what each dvc.yaml stage calls)"),
        ("review", "human review in Label Studio (LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY from the env)"),
        ("predict", "predict an incoming batch with a registered model; write a new predictions version"),
        (
            "deploy",
            "serve the flows on their schedules from this process (needs PREFECT_API_URL): distill nightly "
            "at 02:00, review sync every 10 min, drift monitor hourly, retrain on trigger "
            "(retrain/retrain-on-drift); SIGTERM or Ctrl-C pauses the schedules and exits",
        ),
    ):
        p = sub.add_parser(name, help=text, description=text)
        if name == "step":
            p.add_argument("name", choices=STEPS, help="the step: " + " -> ".join(STEPS))
        if name == "predict":
            p.add_argument(
                "--alias",
                default=None,
                help="registry alias of the model that predicts (default: monitor.alias, i.e. champion)",
            )
            p.add_argument(
                "--batch",
                default=None,
                metavar="vN",
                help="version of the incoming entry to predict (default: the latest batch)",
            )
        if name == "deploy":
            p.add_argument(
                "--only",
                action="append",
                default=None,
                metavar="FLOW",
                help="serve only this flow (repeatable): distill, review_sync, monitor_drift, retrain",
            )
            p.add_argument(
                "--every",
                action="append",
                default=[],
                metavar="FLOW=SECONDS",
                help="run FLOW every SECONDS instead of its schedule (repeatable; for trials and tests)",
            )
            p.add_argument(
                "--limit", type=int, default=1, help="flow runs at a time in this process (default 1)"
            )
        if name == "review":
            p.add_argument(
                "action",
                choices=["sync"],
                help="sync: deliver the outbox, pull finished answers, write a new reviewed_labels version",
            )
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
    sub.add_parser(
        "init",
        help="make the project a DVC repo with the configured remote (catalog.remote in params.yaml)",
        description="dvc init (without git when the project is not a git repo) and a default DVC remote.",
    )
    cat = sub.add_parser(
        "catalog",
        help="list, inspect, restore and compare versions of catalog entries",
        description="Versions of catalog entries (datasets tracked by DVC, prompt templates).",
    )
    csub = cat.add_subparsers(dest="catalog_command", required=True)
    csub.add_parser("list", help="every entry with its kind, role, current version and rows")
    p = csub.add_parser(
        "log", help="the versions of an entry: date, content hash, rows, producing MLflow run"
    )
    p.add_argument("entry", help="dataset name, or prompt.<name> for a prompt template")
    p = csub.add_parser("show", help="schema and sample rows of an entry (or a prompt's text) at a version")
    p.add_argument(
        "ref", help="ENTRY or ENTRY@vN (default: the workspace copy); prompt.<name>@vN for prompts"
    )
    p.add_argument("-n", "--rows", type=int, default=3, help="sample rows to print")
    p = csub.add_parser("checkout", help="restore ENTRY@vN into the workspace (from the DVC cache or remote)")
    p.add_argument("ref", help="ENTRY@vN")
    p = csub.add_parser("diff", help="rows added, removed and relabeled between two versions")
    p.add_argument("a", help="ENTRY@vN (or ENTRY for the workspace copy)")
    p.add_argument("b", help="ENTRY@vM (or ENTRY for the workspace copy)")
    p = sub.add_parser(
        "promote",
        help="make a registered version champion through the promotion gate, or roll back",
        description="Judge VERSION with the same promotion gate as a run (promotion.* in params.yaml) "
        "against the current champion and make it champion when it passes; the old champion keeps "
        "`previous`. --rollback gives `champion` back to the `previous` version.",
    )
    p.add_argument("version", nargs="?", help="registered model version to promote (e.g. 3)")
    p.add_argument("--force", action="store_true", help="promote even when the gate refuses (recorded)")
    p.add_argument("--rollback", action="store_true", help="make the `previous` version champion again")
    p.add_argument("-c", "--config", type=Path, default=None, help="run config YAML (default: params.yaml)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE", help=OVERRIDE_HELP)
    p = sub.add_parser(
        "lineage",
        help="which data, prompts, code and config made a registered model",
        description="Print the lineage recorded on a registered model version and how to get each part back.",
    )
    p.add_argument("model", help="MODEL@ALIAS, e.g. potstill-student@champion")
    p = sub.add_parser(
        "train-worker",
        help="internal: one rank of multi-process training, started by `accelerate launch` "
        "(student.num_processes > 1; see potstill/launch.py)",
    )
    p.add_argument("spec", type=Path, help="spec.json written by potstill.launch.write_spec")
    return parser
