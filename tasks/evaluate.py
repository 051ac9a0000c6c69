"""Step 6: evaluate teacher, untrained student and trained student on the gold split."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from potstill import metrics as M
from potstill.kinds import ScoreFn, get_kind
from potstill.models import count_parameters, folder_size_bytes
from potstill.training.classifier import Classifier
from tasks.tracking import log_file, log_json, log_metrics


def student_score(kind: str) -> ScoreFn:
    score = get_kind(kind).score
    if score is None:
        raise NotImplementedError(f"kind {kind} has no student evaluation yet")
    return score


@task(name="predict_gold", cache_policy=NO_CACHE)
def predict_gold(folder: Path, gold: list[dict[str, Any]], batch_size: int, what: str) -> dict[str, Any]:
    clf = Classifier.load(folder, batch_size)
    unlabeled = [{k: v for k, v in r.items() if k != "label"} for r in gold]
    with tqdm(total=len(gold), desc=f"{what} on gold", unit="row") as bar:
        scores, seconds = clf.timed_predict(unlabeled, progress=bar.update)
    return {
        "pred": [s.label for s in scores],
        "confidence": [s.confidence for s in scores],
        "rows_per_s": len(gold) / seconds,
        "latency_ms": clf.latency_ms(unlabeled),
        "params": count_parameters(clf.model),
        "size_mb": folder_size_bytes(folder) / 1e6,
    }


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(
    gold: list[dict[str, Any]],
    labels: list[str],
    teacher: dict[str, Any],
    base: dict[str, Any],
    student: dict[str, Any],
    run_id: str,
    kind: str = "classification",
) -> dict[str, float]:
    """Metrics named as dashboards expect: teacher_accuracy, student_accuracy, agreement, ... (the kind's
    own scores, prefixed by who was scored)."""
    score = student_score(kind)
    y = [r["label"] for r in gold]
    out: dict[str, float] = {}
    for name, res in (("teacher", teacher), ("student_base", base), ("student", student)):
        out |= {f"{name}_{k}": v for k, v in score(y, res["pred"], labels).items()}
        for key in ("rows_per_s", "latency_ms", "params", "size_mb"):
            if key in res:
                out[f"{name}_{key}"] = float(res[key])
    out["agreement"] = M.agreement(teacher["pred"], student["pred"])
    out["majority_baseline"] = max(y.count(lab) for lab in labels) / len(y)
    log_metrics(run_id, out)
    with tempfile.TemporaryDirectory() as tmp:
        plot = M.plot_confusion(
            {
                "teacher": M.confusion_matrix(y, teacher["pred"], labels),
                "student (untrained)": M.confusion_matrix(y, base["pred"], labels),
                "student": M.confusion_matrix(y, student["pred"], labels),
            },
            labels,
            Path(tmp) / "confusion_matrix.png",
            title=f"gold split, {len(y)} rows",
        )
        log_file(run_id, plot, "plots")
    predictions = [
        {"id": r["id"], "gold": g, "teacher": t, "student_base": b, "student": s}
        for r, g, t, b, s in zip(gold, y, teacher["pred"], base["pred"], student["pred"], strict=True)
    ]
    log_json(run_id, predictions, "eval/gold_predictions.json")
    get_run_logger().info(
        "teacher %.3f | student before %.3f after %.3f | agreement %.3f",
        out["teacher_accuracy"],
        out["student_base_accuracy"],
        out["student_accuracy"],
        out["agreement"],
    )
    return out
