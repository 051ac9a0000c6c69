"""Drift monitor on a simulated production stream, written to BENCHMARKS.md.

    .venv/bin/python benchmarks/drift.py [--clean-batches 8] [--shifted-batches 4] [--batch-rows 64]
        [--domain amazon|tweets|gsm8k|esnli] [--ramp 1] [--retrain] [--new-eval-rows 200]

In a fresh project folder (a copy of the catalog and params.yaml, so the repository's own catalog and
MLflow store are untouched) it first runs the distill flow with small settings to get a champion, then
saves one `incoming` batch after another and runs the `monitor_drift` flow on each: `--clean-batches`
batches of held-out movie-review sentences (polarity/prompts rows beyond data.max_prompts: the champion's
domain, never labeled), then `--shifted-batches` batches from another domain. With `--ramp K` the other
domain's share grows over K batches (1/K, 2/K, …, 1) instead of switching at once. Reported: false alarms
over the clean batches, detection delay (shifted batches before the first drift verdict; 0 = the first
shifted batch), retrain triggers (one per drift event with the cooldown), and seconds per batch.
`--retrain` sets `monitor.trigger: inline`, so each trigger runs the retrain flow (flows/retrain.py) as a
subflow; without it the trigger only logs.

The other domains: `amazon` (product-review sentences) and `tweets`, with human polarity labels, from the
vaderSentiment sdist (benchmarks/support/vader_corpus.py; fetched with pip like the demo corpus); `gsm8k`
questions and `esnli` premises from ../shared/data, which have no sentiment labels. With a labeled domain the
shifted rows carry their gold `label`: the teacher, the monitor and the trainer never see it (the teacher
labeling strips it, training uses teacher labels), only the scoring does. Scored then: the retrain flow's
own `new_slice_*` metrics on the triggering batch, the served champion's accuracy on every shifted batch,
and on `--new-eval-rows` held-out rows of the other domain (in no batch) plus the old gold set: the first
champion, the retrained model and the teacher.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Benchmarks run from the repository: the project's tasks/, flows/ and benchmarks/ import from its root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from potstill.env import apply_defaults

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
UNLABELED = {
    "gsm8k": (SHARED / "gsm8k" / "train.jsonl", "question"),
    "esnli": (SHARED / "esnli" / "esnli_dev.jsonl", "premise"),
}
LABELED = ("amazon", "tweets")  # benchmarks.support.vader_corpus domains: human polarity labels
DOMAINS = (*LABELED, *UNLABELED)


def other_domain(name: str, n: int) -> list[dict[str, Any]]:
    """The first n distinct rows of the other domain: {id, text} and, for a labeled domain, the gold
    `label` (e-SNLI repeats each premise for 3 hypotheses, hence distinct)."""
    if name in LABELED:
        from benchmarks.support.vader_corpus import load_domain
        from potstill.models import default_cache_dir

        rows = load_domain(default_cache_dir() / "downloads", name)
        if len(rows) < n:
            raise SystemExit(f"{name} has only {len(rows)} polar rows, {n} needed")
        return [{"id": r["id"], "text": r["text"], "label": r["label"]} for r in rows[:n]]
    path, key = UNLABELED[name]
    seen: dict[str, None] = {}
    with path.open() as f:
        for line in f:
            seen.setdefault(json.loads(line)[key], None)
            if len(seen) == n:
                break
    if len(seen) < n:
        raise SystemExit(f"{path} has only {len(seen)} distinct {key}s, {n} needed")
    return [{"id": f"{name}-{i}", "text": t} for i, t in enumerate(seen)]


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
    parser.add_argument("--domain", choices=DOMAINS, default="amazon", help="the domain shifted to")
    parser.add_argument(
        "--new-eval-rows", type=int, default=200, help="held-out rows of a labeled domain, in no batch"
    )
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
    from potstill.data.catalog import Catalog

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

    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    held_out = catalog.load("prompts")[args.max_prompts :]
    n_rows = args.batch_rows
    need = (args.clean_batches + args.shifted_batches) * n_rows
    if len(held_out) < need:
        raise SystemExit(f"only {len(held_out)} held-out prompts for {need} rows: fewer batches or rows")
    labeled = args.domain in LABELED
    shifted_rows = args.shifted_batches * n_rows
    pool = other_domain(args.domain, shifted_rows + (args.new_eval_rows if labeled else 0))
    foreign, new_eval = iter(pool[:shifted_rows]), pool[shifted_rows:]
    clean = iter({"id": r["id"], "text": r["text"]} for r in held_out)
    plan = [0.0] * args.clean_batches + [
        min(1.0, (i + 1) / max(args.ramp, 1)) for i in range(args.shifted_batches)
    ]
    results = []
    for index, share in enumerate(plan):
        k = round(share * n_rows)
        batch = [next(foreign) for _ in range(k)]
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
        served = served_accuracy(catalog, batch, out["predictions_version"])
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
                "model_version": out["model_version"],
                "served_accuracy": served,
                "retrain": (out.get("retrain") or {}).get("result"),
            }
        )
        print(
            f"batch {index} ({share:.0%} {args.domain}): drift={out['drifted']} {drifted_checks} "
            f"trigger={out['trigger']} model v{out['model_version']} "
            f"served accuracy {_fmt(served)} ({took:.1f}s)"
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
    retrained = next((r["retrain"] for r in results if r["retrain"]), None)
    quality: list[str] = []
    if retrained and labeled:
        quality = quality_report(project, params, retrained, results[0]["model_version"], new_eval, shifted)
        print("\n".join(quality))
    if args.no_write:
        return
    import torch

    machine = f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads, cpu)"
    command = " ".join(
        [
            "python benchmarks/drift.py",
            f"--clean-batches {args.clean_batches} --shifted-batches {args.shifted_batches}",
            f"--batch-rows {n_rows} --domain {args.domain} --ramp {args.ramp}",
            *([f"--new-eval-rows {args.new_eval_rows}"] if labeled else []),
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
        "| batch | shifted | drift | drifted checks | MMD p | KS p | PSI | disagreement | retrain "
        "| served model | served accuracy | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["metrics"]
        lines.append(
            f"| {r['batch']} | {r['share']:.0%} | {'yes' if r['drifted'] else 'no'} "
            f"| {', '.join(r['checks']) or '-'} "
            f"| {_fmt(m.get('drift_mmd_p_value'))} | {_fmt(m.get('drift_ks_p_value'))} "
            f"| {_fmt(m.get('drift_psi_statistic'))} | {_fmt(m.get('drift_disagreement_statistic'))} "
            f"| {'yes' if r['trigger'] else 'no'} | v{r['model_version']} | {_fmt(r['served_accuracy'])} "
            f"| {r['seconds']:.1f} |"
        )
    lines += ["", summary + "\n", *([*quality, ""] if quality else [])]
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n".join(lines))
    print(f"written to {ROOT / 'BENCHMARKS.md'}")
    if not args.keep:
        shutil.rmtree(project, ignore_errors=True)
    else:
        print(f"project kept at {project}")


def served_accuracy(
    catalog: Any, batch: list[dict[str, Any]], predictions_version: str | None
) -> float | None:
    """Accuracy of the stored predictions (the champion served at that batch) on the batch rows that carry
    a gold label; None when none does."""
    gold = {r["id"]: r["label"] for r in batch if r.get("label")}
    if not gold:
        return None
    preds = {p["id"]: p["label"] for p in catalog.load("predictions", version=predictions_version)}
    return sum(preds[i] == y for i, y in gold.items()) / len(gold)


def quality_report(
    project: Path,
    params: dict[str, Any],
    retrained: dict[str, Any],
    first_version: str,
    new_eval: list[dict[str, Any]],
    shifted: list[dict[str, Any]],
) -> list[str]:
    """Markdown lines: the retrain flow's own before/after metrics (old gold set, triggering batch), and
    the first champion, the retrained model and the teacher on held-out rows of the new domain."""
    from potstill import metrics as M
    from potstill.config import validate
    from potstill.data.catalog import Catalog
    from tasks.label import label_with_teacher
    from tasks.predict import ServedModel, predict_rows
    from tasks.tracking import configure

    cfg = validate(params)
    configure(project)
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml", cfg.catalog).for_task(cfg.task)
    labels = catalog.task().label_set
    m, reg = retrained["metrics"], retrained["registered"]
    new_version = str(reg["version"])
    y = [r["label"] for r in new_eval]
    scores: dict[str, tuple[float, float]] = {}
    for name, version in (
        (f"champion v{first_version}", first_version),
        (f"retrained v{new_version}", new_version),
    ):
        served = ServedModel(f"{cfg.task}-student", "benchmark", str(version), "", ["text"])
        pred = [p["label"] for p in predict_rows(served, new_eval)]
        scores[name] = (M.accuracy(y, pred), M.macro_f1(y, pred, labels))
    teacher = label_with_teacher(
        new_eval,
        cfg.teacher,
        catalog.prompt("teacher_prompt"),
        catalog.task().kind,
        labels,
        "held-out new domain",
    )["pred"]
    scores["teacher"] = (M.accuracy(y, teacher), M.macro_f1(y, teacher, labels))
    majority = max(y.count(lab) for lab in labels) / len(y)
    served = [f"{r['batch']} v{r['model_version']}: {_fmt(r['served_accuracy'])}" for r in shifted]
    lines = [
        f"Retrain (MLflow run `{retrained['run_id']}`, batch {retrained['batch']}): trained "
        f"{retrained['train_steps']} steps on {retrained['rows']['retrain_rows_trained_on']} rows "
        f"({retrained['rows']['retrain_rows_new']} new, teacher-labeled); registered v{new_version}, "
        f"{'promoted to champion' if reg['promoted'] else 'not promoted'}.\n",
        "| evaluation set | rows | before (champion) | after (retrained) | teacher |",
        "|---|---|---|---|---|",
        f"| old gold set (movie sentences) | {params['data']['max_eval_rows'] or 'all'} "
        f"| {_fmt(m.get('student_base_accuracy'))} | {_fmt(m.get('student_accuracy'))} "
        f"| {_fmt(m.get('teacher_accuracy'))} |",
        f"| new slice: the triggering batch's gold | {retrained['new_slice_rows']} "
        f"| {_fmt(m.get('new_slice_before_accuracy'))} | {_fmt(m.get('new_slice_after_accuracy'))} | - |",
        f"| held-out new domain (in no batch) | {len(new_eval)} "
        f"| {_fmt(scores[f'champion v{first_version}'][0])} | {_fmt(scores[f'retrained v{new_version}'][0])} "
        f"| {_fmt(scores['teacher'][0])} |",
        f"| held-out new domain, macro-F1 | {len(new_eval)} "
        f"| {_fmt(scores[f'champion v{first_version}'][1])} | {_fmt(scores[f'retrained v{new_version}'][1])} "
        f"| {_fmt(scores['teacher'][1])} |",
        "",
        f"Accuracy unless marked; always-majority on the held-out rows: {majority:.3f}. Accuracy of the "
        "served champion on the shifted batches: " + "; ".join(served) + ".",
    ]
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main()
