"""Drift monitor on a simulated production stream, written to BENCHMARKS.md.

    .venv/bin/python benchmarks/drift.py [--clean-batches 8] [--shifted-batches 4] [--batch-rows 64]
        [--domain gsm8k|esnli] [--ramp 1] [--retrain]

In a fresh project folder (a copy of the catalog and params.yaml, so the repository's own catalog and
MLflow store are untouched) it first runs the distill flow with small settings to get a champion, then
saves one `incoming` batch after another and runs the `monitor_drift` flow on each: `--clean-batches`
batches of held-out movie-review sentences (polarity_prompts rows beyond data.max_prompts: the champion's
domain, never labeled), then `--shifted-batches` batches from another domain (GSM8K questions or e-SNLI
premises from ../shared/data). With `--ramp K` the other domain's share grows over K batches (1/K, 2/K,
…, 1) instead of switching at once. Reported: false alarms over the clean batches, detection delay
(shifted batches before the first drift verdict; 0 = the first shifted batch), retrain triggers (one per
drift event with the cooldown), and seconds per batch. `--retrain` sets `monitor.trigger: inline`, so
each trigger runs the retrain flow (flows/retrain.py) as a subflow; without it the trigger only logs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from potstill.env import apply_defaults

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DOMAINS = {
    "gsm8k": (SHARED / "gsm8k" / "train.jsonl", "question"),
    "esnli": (SHARED / "esnli" / "esnli_dev.jsonl", "premise"),
}


def other_domain(name: str, n: int) -> list[str]:
    """The first n distinct texts of the other domain (e-SNLI repeats each premise for 3 hypotheses)."""
    path, key = DOMAINS[name]
    seen: dict[str, None] = {}
    with path.open() as f:
        for line in f:
            seen.setdefault(json.loads(line)[key], None)
            if len(seen) == n:
                break
    if len(seen) < n:
        raise SystemExit(f"{path} has only {len(seen)} distinct {key}s, {n} needed")
    return list(seen)


def make_project(folder: Path) -> Path:
    shutil.copytree(ROOT / "catalog", folder / "catalog", ignore=shutil.ignore_patterns("data"))
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clean-batches", type=int, default=8, help="batches before the shift (false alarms)"
    )
    parser.add_argument("--shifted-batches", type=int, default=4, help="batches after the shift")
    parser.add_argument("--batch-rows", type=int, default=64, help="rows per incoming batch")
    parser.add_argument("--domain", choices=sorted(DOMAINS), default="gsm8k", help="the domain shifted to")
    parser.add_argument("--ramp", type=int, default=1, help="shifted share grows over this many batches")
    parser.add_argument("--reference-rows", type=int, default=256, help="monitor.reference_rows")
    parser.add_argument("--teacher-rows", type=int, default=32, help="monitor.teacher_sample_rows")
    parser.add_argument("--permutations", type=int, default=500, help="monitor.n_permutations")
    parser.add_argument("--cooldown-s", type=float, default=3600, help="monitor.cooldown_s")
    parser.add_argument("--max-prompts", type=int, default=200, help="distill: data.max_prompts")
    parser.add_argument("--max-eval-rows", type=int, default=100, help="distill: data.max_eval_rows")
    parser.add_argument("--student-steps", type=int, default=20, help="distill: student.max_steps")
    parser.add_argument("--teacher", default=None, help="teacher.model (default: params.yaml's)")
    parser.add_argument("--layers", default=None, help="student.layers as YAML, e.g. '[0, 29]'")
    parser.add_argument(
        "--retrain", action="store_true", help="monitor.trigger: inline (runs flows/retrain.py)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary project folder")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args()

    project = make_project(Path(tempfile.mkdtemp(prefix="potstill-drift-bench-")))
    os.environ.setdefault("POTSTILL_CACHE", str(ROOT / ".cache"))  # reuse the converted teacher
    apply_defaults(project)  # before Prefect is imported: its database lives in the temporary project

    from flows.distill import distill
    from flows.monitor_drift import monitor_drift
    from potstill.catalog import Catalog

    params: dict[str, Any] = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(max_prompts=args.max_prompts, max_eval_rows=args.max_eval_rows)
    params["student"].update(max_steps=args.student_steps)
    if args.teacher:
        params["teacher"]["model"] = args.teacher
    if args.layers:
        params["student"]["layers"] = yaml.safe_load(args.layers)
    params["monitor"].update(
        reference_rows=args.reference_rows,
        teacher_sample_rows=args.teacher_rows,
        n_permutations=args.permutations,
        cooldown_s=args.cooldown_s,
        trigger="inline" if args.retrain else "none",
    )
    start = time.perf_counter()
    trained = distill(params=params, project=str(project))
    distill_s = time.perf_counter() - start
    print(f"champion: version {trained['registered']['version']} ({distill_s:.0f}s)")

    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml")
    held_out = catalog.load("polarity_prompts")[args.max_prompts :]
    n_rows = args.batch_rows
    need = (args.clean_batches + args.shifted_batches) * n_rows
    if len(held_out) < need:
        raise SystemExit(f"only {len(held_out)} held-out prompts for {need} rows: fewer batches or rows")
    foreign = iter(other_domain(args.domain, args.shifted_batches * n_rows))
    clean = iter({"id": r["id"], "text": r["text"]} for r in held_out)
    plan = [0.0] * args.clean_batches + [
        min(1.0, (i + 1) / max(args.ramp, 1)) for i in range(args.shifted_batches)
    ]
    results = []
    for index, share in enumerate(plan):
        k = round(share * n_rows)
        batch = [{"id": f"{args.domain}-{index}-{i}", "text": next(foreign)} for i in range(k)]
        batch += [next(clean) for _ in range(n_rows - k)]
        catalog.save("incoming", batch)
        t0 = time.perf_counter()
        [out] = monitor_drift(params=params, project=str(project))["batches"]
        took = time.perf_counter() - t0
        m = out["metrics"]
        drifted_checks = [
            c.removeprefix("drift_").removesuffix("_drifted")
            for c, v in m.items()
            if c.endswith("_drifted") and v
        ]
        results.append(
            {
                "index": index,
                "share": share,
                "batch": out["batch"],
                "drifted": out["drifted"],
                "trigger": out["trigger"],
                "checks": drifted_checks,
                "metrics": m,
                "seconds": took,
            }
        )
        print(
            f"batch {index} ({share:.0%} {args.domain}): drift={out['drifted']} {drifted_checks} "
            f"trigger={out['trigger']} ({took:.1f}s)"
        )

    clean_res, shifted = results[: args.clean_batches], results[args.clean_batches :]
    false_alarms = sum(r["drifted"] for r in clean_res)
    first = next((i for i, r in enumerate(shifted) if r["drifted"]), None)
    delay = "not detected" if first is None else f"{first} batch(es) ({shifted[first]['share']:.0%} shifted)"
    triggers = sum(r["trigger"] for r in results)
    per_batch = sum(r["seconds"] for r in results) / max(len(results), 1)
    summary = (
        f"False alarms: **{false_alarms}/{len(clean_res)}** clean batches. Detection delay: **{delay}**. "
        f"Retrain triggers: {triggers} (cooldown {args.cooldown_s:g}s, trigger "
        f"{'inline' if args.retrain else 'none'}). Monitoring took {per_batch:.1f}s per batch; "
        f"distilling the champion {distill_s:.0f}s."
    )
    print(summary)
    if args.no_write:
        return
    import torch

    machine = f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads, cpu)"
    command = " ".join(
        [
            "python benchmarks/drift.py",
            f"--clean-batches {args.clean_batches} --shifted-batches {args.shifted_batches}",
            f"--batch-rows {n_rows} --domain {args.domain} --ramp {args.ramp}",
            f"--reference-rows {args.reference_rows} --teacher-rows {args.teacher_rows}",
            f"--permutations {args.permutations} --max-prompts {args.max_prompts}",
            f"--max-eval-rows {args.max_eval_rows} --student-steps {args.student_steps}",
            *([f"--teacher {args.teacher}"] if args.teacher else []),
            *([f"--layers '{args.layers}'"] if args.layers else []),
            *(["--retrain"] if args.retrain else []),
        ]
    )
    lines = [
        f"\n## Drift monitor on a simulated stream — {dt.date.today()} — {machine}\n",
        f"`{command}`\n",
        f"Teacher {params['teacher']['model']}; champion distilled on {args.max_prompts} teacher-labeled "
        "movie-review prompts "
        f"({args.student_steps} steps); reference window {args.reference_rows} rows of its train_set; "
        f"{args.clean_batches} clean batches of held-out movie sentences, then {args.shifted_batches} with "
        f"{args.domain} texts mixed in; {n_rows} rows per batch; "
        f"checks {', '.join(params['monitor']['checks'])}.\n",
        "| batch | shifted | drift | drifted checks | MMD p | KS p | PSI | disagreement | retrain | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["metrics"]
        lines.append(
            f"| {r['batch']} | {r['share']:.0%} | {'yes' if r['drifted'] else 'no'} "
            f"| {', '.join(r['checks']) or '-'} "
            f"| {_fmt(m.get('drift_mmd_p_value'))} | {_fmt(m.get('drift_ks_p_value'))} "
            f"| {_fmt(m.get('drift_psi_statistic'))} | {_fmt(m.get('drift_disagreement_statistic'))} "
            f"| {'yes' if r['trigger'] else 'no'} | {r['seconds']:.1f} |"
        )
    lines += ["", summary + "\n"]
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n".join(lines))
    print(f"written to {ROOT / 'BENCHMARKS.md'}")
    if not args.keep:
        shutil.rmtree(project, ignore_errors=True)
    else:
        print(f"project kept at {project}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main()
