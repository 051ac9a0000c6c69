"""Step 6: evaluate teacher, untrained student and trained student on the gold split."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from potstill import metrics as M
from potstill.config import TeacherConfig
from potstill.files import atomic_write_text
from potstill.kinds import ScoreFn, get_kind, prompt_row
from potstill.models import count_parameters, default_cache_dir, folder_size_bytes
from potstill.prompts import PromptTemplate, label_completion
from potstill.training.generator import Generator, load_student
from tasks.tracking import log_file, log_json, log_metrics, run_logger

# What it costs to answer, logged per model (teacher_, student_base_, student_): rows/s, latency per row,
# parameters, size on disk, and for generative models tokens per answer and generated tokens/s.
SPEED_KEYS = ("rows_per_s", "latency_ms", "params", "size_mb", "tokens_per_answer", "generated_tokens_per_s")


def student_score(kind: str) -> ScoreFn:
    score = get_kind(kind).score
    if score is None:
        raise NotImplementedError(f"kind {kind} has no student evaluation yet")
    return score


def answers_key(folder: Path, rows: list[dict[str, Any]], batch_size: int) -> str:
    """What a saved student's answers on `rows` depend on: every file of its folder (weights, tokenizer,
    the prompt and generation settings it carries), the rows, the batch (batched generation pads) and the
    code that generates (potstill's and torch's versions). Greedy decoding makes the answers a function of
    these, so equal keys mean equal answers."""
    import importlib.metadata

    import torch

    version = importlib.metadata.version("potstill")
    h = hashlib.sha256(f"potstill {version} torch {torch.__version__} batch {batch_size}\n".encode())
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder).as_posix()}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps(rows, sort_keys=True, default=str).encode())
    return h.hexdigest()


def answers_cache(key: str) -> Path:
    return default_cache_dir() / "answers" / key[:2] / f"{key}.json"


@task(name="predict_gold", cache_policy=NO_CACHE)
def predict_gold(folder: Path, gold: list[dict[str, Any]], batch_size: int, what: str) -> dict[str, Any]:
    """A saved student's answers on the gold rows (never shown their labels) and what they cost; a
    generative student also reports its generated texts, tokens per answer and generated tokens/s.

    The answers are kept under the cache by content (`answers_key`): the untrained student of every run
    of a task, or the champion a retrain compares against, is the same model on the same gold rows, and
    generating for hundreds of rows on CPU takes many minutes. A reused result keeps the speeds measured
    when it was made."""
    unlabeled = [{k: v for k, v in r.items() if k != "label"} for r in gold]
    cached = answers_cache(answers_key(folder, unlabeled, batch_size))
    if cached.exists():
        try:
            out: dict[str, Any] = json.loads(cached.read_text())
        except (OSError, ValueError):  # a damaged entry is made again
            pass
        else:
            run_logger().info(
                f"{what} on gold: answers reused from an earlier run (same model files and rows: {cached})"
            )
            return out
    out = _predict_gold(folder, unlabeled, batch_size, what)
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cached, json.dumps(out))
    return out


def _predict_gold(
    folder: Path, unlabeled: list[dict[str, Any]], batch_size: int, what: str
) -> dict[str, Any]:
    student = load_student(folder, batch_size)
    with tqdm(total=len(unlabeled), desc=f"{what} on gold", unit="row") as bar:
        scores, seconds = student.timed_predict(unlabeled, progress=bar.update)
    out: dict[str, Any] = {
        "pred": [s.label for s in scores],
        "confidence": [s.confidence for s in scores],
        "rows_per_s": len(unlabeled) / seconds,
        "latency_ms": student.latency_ms(unlabeled),
        "params": count_parameters(student.model),
        "size_mb": folder_size_bytes(folder) / 1e6,
    }
    if isinstance(student, Generator):
        tokens = sum(s.tokens for s in scores)
        out |= {
            "responses": [s.response for s in scores],
            "tokens_per_answer": tokens / max(len(scores), 1),
            "generated_tokens_per_s": tokens / seconds if seconds else 0.0,
        }
    return out


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
    k = get_kind(kind)
    y = [r["label"] for r in gold]
    out: dict[str, float] = {}
    for name, res in (("teacher", teacher), ("student_base", base), ("student", student)):
        out |= {f"{name}_{m}": v for m, v in score(y, res["pred"], labels).items()}
        for key in SPEED_KEYS:
            if key in res:
                out[f"{name}_{key}"] = float(res[key])
    agree = k.agree or M.agreement
    out["agreement"] = agree(teacher["pred"], student["pred"])
    if k.fixed_labels:
        out["majority_baseline"] = max(y.count(lab) for lab in labels) / len(y)
    log_metrics(run_id, out)
    answers = {"teacher": teacher, "student_base": base, "student": student}
    predictions = [
        {"id": r["id"], "gold": g, **{who: res["pred"][i] for who, res in answers.items()}}
        for i, (r, g) in enumerate(zip(gold, y, strict=True))
    ]
    for who, res in answers.items():  # a generative model's texts beside what was read out of them
        if "responses" in res:
            for row, text in zip(predictions, res["responses"], strict=True):
                row[f"{who}_response"] = text
    log_json(run_id, predictions, "eval/gold_predictions.json")
    headline = k.headline.removeprefix("student_")
    get_run_logger().info(
        "%s: teacher %.3f | student before %.3f after %.3f | agreement %.3f",
        headline,
        out.get(f"teacher_{headline}", float("nan")),
        out.get(f"student_base_{headline}", float("nan")),
        out.get(f"student_{headline}", float("nan")),
        out["agreement"],
    )
    if not k.fixed_labels:
        return out
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
    return out


@task(name="judge_by_teacher", cache_policy=NO_CACHE)
def judge_by_teacher(
    cfg: TeacherConfig,
    prompt: PromptTemplate,
    kind: str,
    gold: list[dict[str, Any]],
    answers: dict[str, list[str | None]],
    run_id: str,
) -> dict[str, float]:
    """The teacher as judge by likelihood: the mean log-probability per token the teacher gives each
    model's answer after the teacher prompt (`<who>_teacher_logprob`; the teacher's own answers score its
    own confidence). Where there is no reference to compare with (chat), this says how much the student's
    answer reads like what the teacher would have said. Empty answers are not judged
    (`<who>_teacher_judged_rows` counts the rest). A teacher without a local tokenizer (a served one)
    cannot count answer tokens: skipped, and the log says so."""
    from potstill.labeling.teacher import load_backend

    backend = load_backend(cfg.backend_settings())
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        get_run_logger().info("teacher as judge skipped: the %s backend has no local tokenizer", cfg.backend)
        return {}
    out: dict[str, float] = {}
    for who, texts in answers.items():
        todo = [(r, t.strip()) for r, t in zip(gold, texts, strict=True) if t and t.strip()]
        if not todo:
            continue
        prompts = [prompt.render(prompt_row(kind, r)) for r, _ in todo]
        completions = [[label_completion(t)] for _, t in todo]
        scores = backend.score(prompts, completions)
        per_token = [
            s[0] / max(len(tokenizer(c[0], add_special_tokens=False)["input_ids"]), 1)
            for s, c in zip(scores, completions, strict=True)
        ]
        out[f"{who}_teacher_logprob"] = sum(per_token) / len(per_token)
        out[f"{who}_teacher_judged_rows"] = float(len(per_token))
    log_metrics(run_id, out)
    return out
