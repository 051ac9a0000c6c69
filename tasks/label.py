"""Step 2: label rows with the teacher. Cached: same rows, teacher and prompt reuse the finished labels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from tqdm.auto import tqdm

from potstill.classifier import Classifier
from potstill.config import TeacherConfig
from potstill.models import count_parameters, folder_size_bytes, load_model, resolve_source, weights_location
from potstill.prompts import PromptTemplate


def _teacher_identity(spec: str) -> str:
    """The model spec plus, for local weights, file sizes and mtimes: new weights mean new labels."""
    source = resolve_source(spec)
    if not source.is_local:
        return spec
    base = Path(source.location)
    files = [base / source.gguf_file] if source.gguf_file else sorted(base.glob("*.safetensors"))
    return spec + "|" + "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def labeling_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    rows = parameters["rows"]
    payload = {
        "rows": hashlib.sha256(json.dumps([[r["id"], r.get("text")] for r in rows]).encode()).hexdigest(),
        "teacher": _teacher_identity(parameters["cfg"].model),
        "prompt": parameters["prompt"].text,
        "labels": parameters["labels"],
        "v": 1,
    }
    return "label-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@task(name="label_with_teacher", cache_key_fn=labeling_cache_key, persist_result=True, retries=0)
def label_with_teacher(
    rows: list[dict[str, Any]], cfg: TeacherConfig, prompt: PromptTemplate, labels: list[str], what: str
) -> dict[str, Any]:
    """Score every label for every row; returns labeled rows and the teacher's throughput."""
    logger = get_run_logger()
    model, tokenizer = load_model(cfg.model)
    teacher = Classifier(model, tokenizer, prompt, labels, cfg.batch_size, cfg.reuse_prefix_cache)
    unlabeled = [{k: v for k, v in r.items() if k != "label"} for r in rows]  # the teacher never sees gold
    with tqdm(total=len(rows), desc=f"teacher labels {what}", unit="row") as bar:
        scores, seconds = teacher.timed_predict(unlabeled, progress=bar.update)
    labeled = [
        {
            **r,
            "label": s.label,
            "confidence": s.confidence,
            "distribution": s.distribution,
            "teacher": cfg.model,
            "prompt_digest": prompt.digest,
        }
        for r, s in zip(unlabeled, scores, strict=True)
    ]
    logger.info(
        "teacher labeled %d %s rows in %.1fs (%.1f rows/s)", len(rows), what, seconds, len(rows) / seconds
    )
    return {
        "rows": labeled,
        "pred": [r["label"] for r in labeled],
        "seconds": seconds,
        "rows_per_s": len(rows) / seconds,
        "latency_ms": teacher.latency_ms(unlabeled),
        "params": count_parameters(model),
        "size_mb": folder_size_bytes(Path(weights_location(cfg.model))) / 1e6,
    }
