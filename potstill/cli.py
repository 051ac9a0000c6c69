"""`potstill` command line. Env defaults are applied before Prefect is imported (it reads them at import)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from potstill.catalog import Catalog
from potstill.config import ConfigError, RunConfig, load_config, to_yaml
from potstill.env import apply_defaults, find_project_root
from potstill.pipeline import STEPS
from potstill.rowdiff import diff_rows
from potstill.versioning import split_ref

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = apply_defaults(args.project.resolve() if args.project else find_project_root())
    if args.command == "train-worker":
        from potstill.launch import run_worker

        return run_worker(args.spec)
    if args.command == "init":
        catalog = _catalog(root)
        catalog.store.ensure()
        print(f"DVC repo at {root}; default remote: {_default_remote(root)}")
        if "reviewed_labels" in catalog.datasets and not catalog.exists("reviewed_labels"):
            # dvc.yaml's route stage depends on it; the review sync flow fills it
            catalog.save("reviewed_labels", [])
            print("created an empty reviewed_labels (human verdicts arrive with `potstill review sync`)")
        return 0
    if args.command in ("catalog", "lineage"):
        try:
            return _catalog_command(args, root) if args.command == "catalog" else _lineage(args, root)
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
        from flows.steps import distill_step  # imports Prefect: after apply_defaults

        result = distill_step(args.name, params=cfg.model_dump(mode="json"), project=str(root))
        print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, default=str))
        return 0
    if args.command == "promote":
        return _promote(args, cfg, root)
    if args.command == "deploy":
        return _deploy(args, cfg, root)
    if args.command == "predict":
        from tasks.predict import predict_batch  # imports Prefect and MLflow: after apply_defaults
        from tasks.tracking import configure

        configure(root)
        mon = cfg.monitor
        try:
            out = predict_batch(
                Catalog.from_file(root / "catalog" / "catalog.yaml", cfg.catalog),
                mon.incoming,
                mon.predictions,
                cfg.registry.model_name,
                args.alias or mon.alias,
                args.batch,
            )
        except LookupError as exc:
            print(f"potstill: {exc}", file=sys.stderr)
            return 2
        served = out["model"]
        print(
            f"{served.name}@{served.alias} (version {served.version}) predicted "
            f"{len(out['predictions'])} rows of {mon.incoming} {out['batch']} -> "
            f"{mon.predictions} {out['predictions_version']}"
        )
        return 0
    if args.command == "review":
        from flows.review_sync import ReviewNotConfigured, review_sync  # imports Prefect
        from potstill.review import ReviewServerError

        try:
            result = review_sync(params=cfg.model_dump(mode="json"), project=str(root))
        except (ReviewNotConfigured, ReviewServerError) as exc:
            print(f"potstill: {exc}", file=sys.stderr)
            return 2
        stats = result["stats"] or {}
        print(
            f"{result['project']}: {result['verdicts']} rows with a verdict -> reviewed_labels "
            f"{result['version']}; {int(stats.get('review_reviewed', 0))} reviewed, "
            f"{int(stats.get('review_corrected', 0))} corrected, {int(stats.get('review_rejected', 0))} "
            f"rejected, {result['pending']} waiting; {result['delivered']} delivered from the outbox"
        )
        print(f"MLflow run {result['run_id']} in {result['tracking_uri']}")
        return 0
    from flows.distill import distill  # imports Prefect: after apply_defaults
    from potstill.summary import render

    summary = distill(params=cfg.model_dump(mode="json"), project=str(root))
    render(summary)
    return 0


def _catalog(root: Path) -> Catalog:
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


def _catalog_command(args: argparse.Namespace, root: Path) -> int:
    catalog = _catalog(root)
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


def _lineage(args: argparse.Namespace, root: Path) -> int:
    from mlflow.exceptions import MlflowException

    from tasks.lineage import lineage_lines  # imports MLflow

    try:
        print("\n".join(lineage_lines(root, args.model)))
    except MlflowException as exc:
        print(f"potstill: {args.model}: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _promote(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    from potstill.gate import RollbackError
    from tasks.register import promote_version, rollback
    from tasks.tracking import configure

    configure(root)
    name = cfg.registry.model_name
    try:
        if args.rollback:
            if args.version:
                print("potstill: give either VERSION or --rollback", file=sys.stderr)
                return 2
            done = rollback(cfg)
            print(f"{name}: champion is version {done['champion']} again (version {done['demoted']} demoted)")
            return 0
        if not args.version:
            print("potstill: promote needs VERSION (or --rollback)", file=sys.stderr)
            return 2
        decision, applied = promote_version(cfg, args.version, force=args.force)
    except (RollbackError, ValueError, LookupError) as exc:
        print(f"potstill: {exc}", file=sys.stderr)
        return 2
    for check in decision.checks:
        print(f"  [{'pass' if check.passed else 'FAIL'}] {check.reason}")
    if applied:
        print(f"{name} version {args.version} is champion" + (" (forced past the gate)" if args.force and
              not decision.promote else ""))  # fmt: skip
        return 0
    print(f"{name} version {args.version} not promoted: {'; '.join(decision.reasons)} (--force overrides)")
    return 1


def _deploy(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    """Serve the deployments (flows/deployments.py) until SIGTERM/Ctrl-C."""
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "potstill: deploy needs a Prefect server that outlives this process: start one with "
            "`infra/prefect/server.sh start` (or `make prefect-ui`) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
        return 2
    try:
        every = {flow: float(sec) for flow, _, sec in (e.partition("=") for e in args.every)}
    except ValueError:
        print(f"potstill: --every takes FLOW=SECONDS, got {args.every}", file=sys.stderr)
        return 2
    from flows.deployments import build_deployments, serve_deployments  # imports Prefect: after defaults

    try:
        deployments = build_deployments(root, cfg.model_dump(mode="json"), args.only, every)
    except ValueError as exc:
        print(f"potstill: {exc}", file=sys.stderr)
        return 2
    serve_deployments(deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
