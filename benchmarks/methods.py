"""Distillation methods compared on NLI: same data, same step budget, same student; written to BENCHMARKS.md.

    .venv/bin/python benchmarks/methods.py --size cpu [--methods all|sft,logit_online,...]

1. The teacher: SmolLM2-135M-Instruct tuned on e-SNLI (benchmarks/tuned_teacher.py; cached under
   `.cache/benchmarks/` by its settings), registered in the benchmark project's MLflow store as
   `potstill-teacher@teacher` and used as `teacher.model: models:/potstill-teacher@teacher`.
2. In a fresh project folder (a copy of the catalog and params.yaml: the repository's own stores are never
   touched) the ConjNLI adversarial-train prompts (gold unused), ConjNLI dev (gold) and e-SNLI dev are
   imported as catalog entries. Every method runs `potstill run -o distill.method=<m>` as its own
   subprocess with identical settings: the teacher labels the prompts once (signals and rationales on for
   every run, so all runs hit the same cached labeling) and the student — the tuned teacher pruned to
   `student.layers` — trains for the same number of optimizer steps.
3. Per method: ConjNLI-dev accuracy, macro-F1, per-class recall and the share of the teacher's accuracy
   recovered; accuracy on the held-out e-SNLI slice (never seen by teacher tuning or distillation);
   agreement with the teacher on both; training tokens/s; the subprocess's peak RSS (`os.wait4`); wall
   time; teacher-signal bytes per stored token (methods that read stored signals only). A failing method is
   reported with its error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Benchmarks run from the repository: the project's tasks/, flows/ and benchmarks/ import from its root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tuned_teacher as T

from benchmarks.support import sections

ROOT = T.ROOT
METHODS = ["sft", "step_by_step", "logit_offline", "logit_online", "hidden_states", "on_policy"]
SIGNAL_METHODS = {"logit_offline"}  # methods that read stored teacher signals
# prompts labeled, optimizer steps, ConjNLI-dev rows, held-out e-SNLI rows, batch size
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"prompts": 64, "steps": 10, "eval_rows": 100, "esnli_rows": 100, "batch": 8},
    "cpu": {"prompts": 600, "steps": 40, "eval_rows": None, "esnli_rows": 300, "batch": 16},
    "full": {"prompts": None, "steps": -1, "eval_rows": None, "esnli_rows": 300, "batch": 16},
}
SECTION = "## Distillation methods"


TASK = "conjnli"  # the benchmark's task: ConjNLI adversarial-train prompts, ConjNLI dev as gold


def make_project(folder: Path) -> Path:
    """A copy of the catalog and params.yaml with the task `conjnli` declared on the imported ConjNLI files
    (catalog/data/conjnli/*.jsonl, written by benchmarks.support.importers), labeled with the tuned
    teacher's prompt and its rationale format; the student is served with the same prompt."""
    shutil.copytree(ROOT / "catalog", folder / "catalog", ignore=shutil.ignore_patterns("data", "versions"))
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    doc = yaml.safe_load((folder / "catalog" / "catalog.yaml").read_text())
    declaration = {
        "kind": "nli",
        "labels": list(T.LABELS),
        "description": "ConjNLI: the methods benchmark (benchmarks/methods.py)",
        "prompts": {"path": doc["datasets"]["conjnli_train"]["path"], "format": "jsonl"},
        "gold": {"path": doc["datasets"]["conjnli_dev"]["path"], "format": "jsonl"},
        "templates": {
            "teacher": doc["prompts"][T.PROMPT_NAME]["path"],
            "student": doc["prompts"][T.PROMPT_NAME]["path"],  # the tuned teacher's format
            "rationale": doc["prompts"]["teacher_nli_tuned_rationale_prompt"]["path"],
        },
    }
    (folder / "catalog" / "tasks" / f"{TASK}.yaml").write_text(yaml.safe_dump(declaration, sort_keys=False))
    return folder


def run_params(project: Path, args: argparse.Namespace, teacher: str, gpu: bool) -> dict[str, Any]:
    """params.yaml of every method run: only distill.method differs between them (an -o override)."""
    params: dict[str, Any] = yaml.safe_load((project / "params.yaml").read_text())
    params["task"] = TASK
    params["catalog"]["versioning"] = False  # benchmark data need no DVC versions
    params["data"].update(max_prompts=args.prompts, max_eval_rows=args.eval_rows)
    params["teacher"].update(
        model=teacher,
        store_signals=True,  # on for every method: one labeling (same rows, labels) serves them all
        rationale=True,
    )
    params["teacher"]["transformers"]["device"] = "cuda" if gpu else None
    params["route"].update(threshold=None, budget=None)  # distill on every teacher label
    params["student"].update(
        layers=args.layers,
        max_steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        logging_steps=max(1, min(10, args.steps // 4)) if args.steps > 0 else 10,
        use_cpu=not gpu,
        bf16=gpu,
    )
    return params


def run_method(
    project: Path, method: str, log: Path, timeout: float | None, steps: int | None = None
) -> dict[str, Any]:
    """`potstill run` for one method in its own process: returns rc, wall seconds and peak RSS (MB).
    `steps` overrides student.max_steps for this method only (the table shows each method's steps)."""
    cmd = [str(ROOT / ".venv" / "bin" / "potstill"), "--project", str(project), "run"]
    cmd += ["-o", f"distill.method={method}"]
    if steps is not None:
        cmd += ["-o", f"student.max_steps={steps}"]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=project, stdout=out, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(1.0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
        "timed_out": deadline is not None and time.perf_counter() > deadline,
    }


def last_error(log: Path) -> str:
    """The exception line of a failed run's log (or its last line)."""
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    errors = [x for x in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*", x)]
    return (errors or lines or ["no output"])[-1][:300]


def latest_distill_run(client: Any, experiment: str) -> Any:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs(
        [exp.experiment_id], "tags.`potstill.flow` = 'distill'", order_by=["attributes.start_time DESC"]
    )
    return runs[0] if runs else None


def registered_student(client: Any, run_id: str, dest: Path) -> Path:
    """The student a run registered (its model folder, downloaded): run folders are removed when a run
    ends, the registered copy is the record."""
    import mlflow

    from potstill.operations.retrain import find_student_folder

    [version] = client.search_model_versions(f"run_id = '{run_id}'")
    uri = f"models:/{version.name}/{version.version}"
    return find_student_folder(
        Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    )


def signal_bytes_per_token(log: Path, cache: Path, teacher_prefix: str, rows: int) -> float | None:
    """Bytes per stored teacher token: from the labeling log line, else from the shard folder on disk."""
    from potstill.labeling.signals import load_signals

    found = re.findall(r"teacher signals: ([\d.]+) bytes/token \(top-\d+\) in (\S+)", log.read_text())
    folders = [Path(f) for _, f in found]
    if not folders:  # a cached labeling logs nothing: find its run folder by teacher and row count
        for manifest in (cache / "labels").glob("*/manifest.json"):
            doc = json.loads(manifest.read_text())
            teacher = str(doc.get("identity", {}).get("teacher", ""))
            same = teacher.startswith(teacher_prefix) and doc.get("rows") == rows
            if same and any(manifest.parent.glob("*.signals.npz")):
                folders.append(manifest.parent)
    for folder in folders:
        tokens = sum(s.n_tokens for s in load_signals(folder).values())
        size = sum(p.stat().st_size for p in folder.glob("*.signals.npz"))
        if tokens:
            return size / tokens
    return float(found[0][0]) if found else None


def measure(
    project: Path, method: str, run: dict[str, Any], held: list[dict[str, Any]], teacher_held: list[str]
) -> dict[str, Any]:
    """Metrics of a finished method run: from its MLflow run, plus the student on held-out e-SNLI."""
    from mlflow.tracking import MlflowClient

    from potstill import metrics as M

    client = MlflowClient()
    mlrun = latest_distill_run(client, f"potstill-{TASK}")
    if mlrun is None or mlrun.data.params.get("distill.method") != method:
        raise RuntimeError(f"no finished distill run for {method} in the project's MLflow store")
    m = mlrun.data.metrics
    student = registered_student(client, mlrun.info.run_id, project / "students" / method)
    prompt = T.PromptTemplate(T.PROMPT_NAME, T.PROMPT_FILE.read_text())
    pred = T.predict(student, held, prompt)
    esnli = T.nli_scores([r["label"] for r in held], pred)
    return {
        **run,
        "conj": {
            "accuracy": m["student_accuracy"],
            "macro_f1": m["student_macro_f1"],
            "recall": {lab: m.get(f"student_recall_{lab}", float("nan")) for lab in T.LABELS},
        },
        "teacher_conj": m["teacher_accuracy"],
        "teacher_conj_f1": m["teacher_macro_f1"],
        "teacher_recall": {lab: m.get(f"teacher_recall_{lab}", float("nan")) for lab in T.LABELS},
        "base_conj": m.get("student_base_accuracy"),
        "majority": m.get("majority_baseline"),
        "agreement_conj": m["agreement"],
        "esnli": esnli,
        "agreement_esnli": M.agreement(teacher_held, pred),
        "tokens_per_s": m.get("train_tokens_per_s_mean", float("nan")),
        "train_s": m.get("train_seconds", float("nan")),
        "steps": m.get("train_steps"),
        "mlflow_run": mlrun.info.run_id,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table(results: dict[str, dict[str, Any]], teacher: dict[str, Any]) -> list[str]:
    head = (
        "| model | ConjNLI acc | macro-F1 | recall ent / neu / con | % of teacher acc | e-SNLI held-out acc "
        "| agreement ConjNLI / e-SNLI | steps | train tokens/s | peak RSS MB | wall s | signal bytes/token |"
    )
    rec = teacher["conj_recall"]
    lines = [
        head,
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| teacher (tuned, 30 layers) | {_pct(teacher['conj_acc'])} | {_pct(teacher['conj_f1'])} "
        f"| {' / '.join(f'{rec[lab]:.2f}' for lab in T.LABELS)} | 100 | {_pct(teacher['esnli']['accuracy'])} "
        "| - | - | - | - | - | - |",
    ]
    for method, r in results.items():
        if "error" in r:
            lines.append(
                f"| {method} | failed: {r['error'].replace('|', '/')} | | | | | | | | | "
                f"{r.get('wall_s', 0):.0f} | |"
            )
            continue
        c, rec = r["conj"], r["conj"]["recall"]
        signal = r.get("signal_bytes_per_token")
        lines.append(
            f"| {method} | {_pct(c['accuracy'])} | {_pct(c['macro_f1'])} "
            f"| {' / '.join(f'{rec[lab]:.2f}' for lab in T.LABELS)} "
            f"| {100 * c['accuracy'] / teacher['conj_acc']:.0f} | {_pct(r['esnli']['accuracy'])} "
            f"| {_pct(r['agreement_conj'])} / {_pct(r['agreement_esnli'])} | {r.get('steps') or 0:.0f} "
            f"| {r['tokens_per_s']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} | {'0' if signal is None else f'{signal:.0f}'} |"
        )
    return lines


def write_section(text: str, path: Path) -> None:
    """Replace the `## Distillation methods` section of BENCHMARKS.md (or append it)."""
    sections.write_section(text, path, SECTION)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="cpu",
        help="tiny: harness check (64 prompts, 10 steps, 100 eval rows); cpu: ~600 prompts, 40 "
        "steps, all 623 ConjNLI dev + 300 e-SNLI rows (<~30 min on 2 cores with a cached "
        "teacher); full: every prompt, one epoch, teacher tuned on all of e-SNLI (GPU)",
    )
    p.add_argument("--methods", default="all", help=f"comma-separated subset of {','.join(METHODS)}, or all")
    p.add_argument("--prompts", type=int, default=None, help="ConjNLI prompts labeled (data.max_prompts)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per method (student.max_steps)")
    p.add_argument(
        "--on-policy-steps",
        type=int,
        default=None,
        help="optimizer steps for on_policy only (default: --steps). On CPU each on_policy step costs "
        "several times another method's (the student generates first); the table's steps column shows it",
    )
    p.add_argument("--epochs", type=float, default=1.0, help="student.epochs, used when --steps is -1")
    p.add_argument("--batch-size", type=int, default=None, help="student.batch_size")
    p.add_argument("--lr", type=float, default=1e-4, help="student.learning_rate")
    p.add_argument(
        "--layers",
        default="[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 29]",
        help="student.layers as YAML: teacher layers the pruned student keeps",
    )
    p.add_argument("--eval-rows", type=int, default=None, help="ConjNLI dev rows (data.max_eval_rows)")
    p.add_argument("--esnli-rows", type=int, default=None, help="held-out e-SNLI rows evaluated")
    p.add_argument(
        "--teacher-size",
        choices=sorted(T.SIZES),
        default=None,
        help="tuning size of the teacher (default: cpu for --size tiny/cpu, full for full)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        help="use this tuned teacher folder instead of tuning (it is still registered)",
    )
    p.add_argument("--timeout-s", type=float, default=None, help="kill a method's run after this long")
    p.add_argument("--project", type=Path, default=None, help="project folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the project folder (logs, MLflow store)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write BENCHMARKS.md")
    args = p.parse_args(argv)
    size = SIZES[args.size]
    for key, default in (
        ("prompts", size["prompts"]),
        ("steps", size["steps"]),
        ("eval_rows", size["eval_rows"]),
        ("esnli_rows", size["esnli_rows"]),
        ("batch_size", size["batch"]),
    ):
        if getattr(args, key) is None:
            setattr(args, key, default)
    args.layers = yaml.safe_load(args.layers)
    args.methods = METHODS if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; known: {METHODS}")
    args.teacher_size = args.teacher_size or ("full" if args.size == "full" else "cpu")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    gpu = torch.cuda.is_available() and args.size == "full"
    settings = T.SIZES[args.teacher_size]
    folder = Path(args.teacher) if args.teacher else T.ensure_teacher(settings)
    project = args.project or Path(tempfile.mkdtemp(prefix="potstill-methods-bench-"))
    if not (project / "catalog").exists():
        make_project(project)
    (project / "logs").mkdir(exist_ok=True)
    from potstill.env import apply_defaults

    apply_defaults(project)  # before Prefect or MLflow is imported: stores live in the project
    from benchmarks.support.importers import import_shared
    from potstill.config import load_config
    from potstill.data.catalog import Catalog

    spec = T.register_teacher(folder, project)
    params = run_params(project, args, spec, gpu)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    catalog = Catalog.from_file(
        project / "catalog" / "catalog.yaml", load_config(project / "params.yaml").catalog
    )
    for name, limit in (("conjnli_train", args.prompts), ("conjnli_dev", None), ("esnli_dev", None)):
        import_shared(catalog, name, T.shared_data_dir(ROOT), limit=limit)
    _, held = T.split_holdout(catalog.load("esnli_dev"), settings.holdout)
    held = held[: args.esnli_rows]
    prompt = T.PromptTemplate(T.PROMPT_NAME, T.PROMPT_FILE.read_text())
    teacher_held = T.predict(spec, held, prompt)
    teacher: dict[str, Any] = {"esnli": T.nli_scores([r["label"] for r in held], teacher_held)}
    print(f"teacher {spec} ({folder.name}): e-SNLI held-out {teacher['esnli']['accuracy']:.3f}")
    results: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        log = project / "logs" / f"{method}.log"
        print(f"== {method}: potstill run (log: {log})", flush=True)
        steps = args.on_policy_steps if method == "on_policy" else None
        run = run_method(project, method, log, args.timeout_s, steps)
        if run["rc"] != 0:
            results[method] = {**run, "error": ("timed out: " if run["timed_out"] else "") + last_error(log)}
            print(f"   failed rc={run['rc']} after {run['wall_s']:.0f}s: {results[method]['error']}")
            continue
        try:
            results[method] = measure(project, method, run, held, teacher_held)
        except Exception as exc:  # a run that finished but left nothing to measure is a failure too
            results[method] = {**run, "error": f"{type(exc).__name__}: {exc}"}
            continue
        if method in SIGNAL_METHODS:
            results[method]["signal_bytes_per_token"] = signal_bytes_per_token(
                log, Path(os.environ["POTSTILL_CACHE"]), spec, args.prompts or 0
            )
        r = results[method]
        print(
            f"   ConjNLI {r['conj']['accuracy']:.3f} (teacher {r['teacher_conj']:.3f}), e-SNLI "
            f"{r['esnli']['accuracy']:.3f}, agreement {r['agreement_conj']:.3f}, {r['tokens_per_s']:.0f} "
            f"tokens/s, {r['peak_rss_mb']:.0f} MB, {r['wall_s']:.0f}s",
            flush=True,
        )
    done = [r for r in results.values() if "error" not in r]
    if done:
        teacher.update(
            conj_acc=done[0]["teacher_conj"],
            conj_f1=done[0]["teacher_conj_f1"],
            conj_recall=done[0]["teacher_recall"],
        )
    else:
        teacher.update(conj_acc=float("nan"), conj_f1=float("nan"), conj_recall=dict.fromkeys(T.LABELS, 0.0))
    lines = table(results, teacher)
    meta = T.teacher_meta(folder) if (folder / T.META_FILE).exists() else {}
    text = report(args, lines, meta, done, spec, gpu)
    print(text)
    (project / "logs" / "results.json").write_text(
        json.dumps({"teacher": teacher, "methods": results}, indent=1, default=str)
    )
    if not args.no_write:
        write_section(text, ROOT / "BENCHMARKS.md")
        print(f"written to {ROOT / 'BENCHMARKS.md'}")
    if args.keep or args.project:
        print(f"project kept at {project}")
    else:
        shutil.rmtree(project, ignore_errors=True)


def report(
    args: argparse.Namespace,
    lines: list[str],
    meta: dict[str, Any],
    done: list[dict[str, Any]],
    spec: str,
    gpu: bool,
) -> str:
    import torch

    machine = f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads, "
    machine += f"{torch.cuda.get_device_name(0) if gpu else 'cpu'})"
    command = f"python benchmarks/methods.py --size {args.size} --methods {','.join(args.methods)}"
    if args.on_policy_steps is not None:
        command += f" --on-policy-steps {args.on_policy_steps}"
    tuned = meta.get("settings", {})
    ev = meta.get("eval", {})
    extra = [
        f"Teacher: SmolLM2-135M-Instruct tuned on {meta.get('tuning_rows', '?')} e-SNLI rows "
        f"({tuned.get('epochs', '?')} epoch, lr {tuned.get('learning_rate', '?')}, "
        f"{meta.get('seconds', 0):.0f}s, {meta.get('tokens_per_s', 0):.0f} tokens/s), registered as "
        f"`{spec}`; at tuning time it scored "
        + ", ".join(f"{k} {100 * v['accuracy']:.1f}%" for k, v in ev.items())
        + f". Student: the tuned teacher pruned to layers {args.layers}; {args.prompts or 'all'} ConjNLI "
        f"adversarial-train prompts labeled by the teacher; {args.steps} optimizer steps of batch "
        f"{args.batch_size}, lr {args.lr}; ConjNLI dev {args.eval_rows or 623} rows (gold), held-out e-SNLI "
        f"{args.esnli_rows} rows (neither tuning nor distillation saw them).",
    ]
    if done:
        r = done[0]
        extra.append(
            f"Untrained student {_pct(r['base_conj'])}% on ConjNLI dev; always-majority baseline "
            f'{_pct(r["majority"])}%. "% of teacher acc" = student / teacher ConjNLI-dev accuracy.'
        )
    return "\n".join(
        [
            f"{SECTION}\n",
            f"{dt.date.today()} — {machine}\n",
            f"`{command}`\n",
            *[e + "\n" for e in extra],
            *lines,
            "",
        ]
    )


if __name__ == "__main__":
    main()
