"""The `potstill` argument parser: every command and option with its help text."""

from __future__ import annotations

import argparse
from pathlib import Path

from potstill.kinds import KINDS
from potstill.pipeline import STEP_NAMES

TASK_HELP = "the task (catalog/tasks/NAME.yaml; default: `task:` in params.yaml, i.e. the demo `polarity`)"
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
        (
            "run",
            "run the distill flow for a task: label with the teacher, route, train the student, evaluate, "
            "register",
        ),
        ("config", "validate the run config and print it resolved, with every default filled in"),
        ("step", "run one step of the pipeline on catalog entries (what each dvc.yaml stage calls)"),
        ("review", "human review in Label Studio (LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY from the env)"),
        ("predict", "predict an incoming batch with a registered model; write a new predictions version"),
        (
            "monitor",
            "run the drift monitor on the task's new incoming batches (retrain on drift, as configured)",
        ),
        (
            "deploy",
            "serve the flows on their schedules from this process (needs PREFECT_API_URL): distill nightly "
            "at 02:00, review sync every 10 min, drift monitor hourly, retrain on trigger "
            "(retrain/retrain-on-drift); SIGTERM or Ctrl-C pauses the schedules and exits",
        ),
    ):
        p = sub.add_parser(name, help=text, description=text)
        if name == "step":
            p.add_argument("name", choices=STEP_NAMES, help="the step: " + " -> ".join(STEP_NAMES))
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
        if name == "monitor":
            p.add_argument(
                "--batch", default=None, metavar="vN", help="monitor only this incoming version (if new)"
            )
        if name == "deploy":
            p.add_argument(
                "--task",
                action="append",
                dest="tasks",
                default=None,
                metavar="NAME",
                help="serve this task's deployments (repeatable; default: the run config's task)",
            )
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
        if name != "deploy":
            p.add_argument("--task", "-t", default=None, metavar="NAME", help=TASK_HELP)
        add_config_options(p)
    sub.add_parser(
        "init",
        help="make the project a DVC repo with the configured remote (catalog.remote in params.yaml)",
        description="dvc init (without git when the project is not a git repo) and a default DVC remote.",
    )
    add_task_commands(sub)
    p = sub.add_parser(
        "dvc",
        help="write dvc.yaml from the pipeline declaration for every declared task",
        description="Render dvc.yaml from potstill/pipeline.py: one stage per step and task, each running "
        "`potstill step STEP --task TASK`. --check: exit 1 when dvc.yaml differs instead of writing it.",
    )
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when dvc.yaml is out of date")
    cat = sub.add_parser(
        "catalog",
        help="list, inspect, restore and compare versions of catalog entries",
        description="Versions of catalog entries (datasets tracked by DVC, prompt templates). A task's "
        "entries are named TASK/ENTRY; with --task (or the run config's task) the short ENTRY works too.",
    )
    csub = cat.add_subparsers(dest="catalog_command", required=True)
    p = csub.add_parser("list", help="every entry with its task, kind, role, current version and rows")
    p.add_argument("--task", "-t", default=None, metavar="NAME", help="only this task's entries")
    p = csub.add_parser(
        "log", help="the versions of an entry: date, content hash, rows, producing MLflow run"
    )
    p.add_argument("entry", help="dataset name (TASK/ENTRY or ENTRY), or prompt.<name> for a prompt template")
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
    for name in ("log", "show", "checkout", "diff"):
        csub.choices[name].add_argument("--task", "-t", default=None, metavar="NAME", help=TASK_HELP)
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
    p.add_argument("--task", "-t", default=None, metavar="NAME", help=TASK_HELP)
    add_config_options(p)
    p = sub.add_parser(
        "lineage",
        help="which data, prompts, code and config made a registered model",
        description="Print the lineage recorded on a registered model version and how to get each part back.",
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="MODEL@ALIAS, e.g. polarity-student@champion (default: the task's model @champion)",
    )
    p.add_argument("--task", "-t", default=None, metavar="NAME", help=TASK_HELP)
    p = sub.add_parser(
        "train-worker",
        help="internal: one rank of multi-process training, started by `accelerate launch` "
        "(student.num_processes > 1; see potstill/training/launch.py)",
    )
    p.add_argument("spec", type=Path, help="spec.json written by potstill.training.launch.write_spec")
    return parser


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="run config YAML (default: params.yaml in the project root)",
    )
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE", help=OVERRIDE_HELP)


def add_task_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    task = sub.add_parser(
        "task",
        help="declare a task from your own data, list the declared tasks, show one",
        description="A task is declared once (catalog/tasks/NAME.yaml): its kind, labels, data files, column "
        "mapping and prompt templates. Every run output is derived from it.",
    )
    tsub = task.add_subparsers(dest="task_command", required=True)
    p = tsub.add_parser(
        "new",
        help="declare a task: copy and version its data, write its prompts and its declaration",
        description="Copy the prompts and gold files into catalog/data/NAME/ (versioned with DVC), write "
        "catalog/tasks/NAME.yaml and default teacher/student prompts for the kind (unless given), and "
        "regenerate dvc.yaml. Then: potstill run --task NAME.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  potstill task new reviews --kind classification --labels negative,positive \\\n"
        "      --prompts reviews.csv --gold reviews_gold.csv --column text=review \\\n"
        "      --label-map 0=negative,1=positive\n"
        "  potstill task new entail --kind nli --prompts pairs.jsonl --gold gold.parquet \\\n"
        "      --column premise=sentence1 --column hypothesis=sentence2",
    )
    p.add_argument("name", help="task name: lowercase letters, digits, underscores (e.g. reviews)")
    p.add_argument("--kind", required=True, choices=list(KINDS), help="what kind of task it is")
    p.add_argument(
        "--labels",
        default="",
        help="the label set, comma-separated (classification; NLI defaults to "
        "entailment,neutral,contradiction)",
    )
    p.add_argument("--prompts", type=Path, required=True, help="file of unlabeled prompts the teacher labels")
    p.add_argument(
        "--gold",
        type=Path,
        required=True,
        help="file of rows with a gold label: evaluation only, never trained on",
    )
    p.add_argument(
        "--format",
        choices=["jsonl", "csv", "parquet"],
        default=None,
        help="format of both files (default: from each file's suffix)",
    )
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="the column of your files that holds a field of the kind (repeatable, or comma-separated): "
        "text=sentence, premise=sentence1, label=polarity, id=uid. Unmapped fields use their own name; "
        "rows without an id get one from their row number",
    )
    p.add_argument(
        "--label-map",
        default="",
        metavar="VALUE=LABEL,...",
        help="label values of your files mapped onto the labels, e.g. 0=negative,1=positive",
    )
    p.add_argument("--teacher-prompt", type=Path, default=None, help="teacher template (default: the kind's)")
    p.add_argument("--student-prompt", type=Path, default=None, help="student template (default: the kind's)")
    p.add_argument(
        "--rationale-prompt",
        type=Path,
        default=None,
        help="rationale template for step_by_step (default: the kind's)",
    )
    p.add_argument("--model-name", default=None, help="registered model name (default: NAME-student)")
    p.add_argument(
        "--chat-template",
        action="store_true",
        help="wrap prompts in the tokenizers' chat templates (instruction-tuned teacher and student): the "
        "rendered prompt is the user turn, the answer the assistant turn, at labeling, training and serving",
    )
    p.add_argument("--description", default="", help="one line on what the task is")
    tsub.add_parser("list", help="every declared task: kind, labels, data versions, champion and its metric")
    p = tsub.add_parser("show", help="a task's declaration, its catalog entries and their versions")
    p.add_argument("name", help="task name")
