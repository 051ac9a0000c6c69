"""Step 2: label rows with the teacher, for any kind, in resumable shards.

Two layers of reuse: the Prefect result cache returns a finished labeling at once (same rows, teacher,
prompt and kind settings); below it, `potstill.labeling.shards` writes every finished shard to a run folder
under the cache, so a run killed mid-way (OOM, preemption, Ctrl-C) resumes from its finished shards instead of
starting over, and never labels a row twice.

Teacher signals (`teacher.store_signals`: top-k log-probabilities per answer token, for every kind) are
written beside each label shard and resumed with it; `shards_folder` in the result is where they live.
Rationales (`teacher.rationale` with a rationale prompt) are generated inside the same shards, so they
resume too.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from tqdm.auto import tqdm

from potstill.config import TeacherConfig
from potstill.kinds import GENERATIVE_KINDS, KindSpec, RationaleSpec, get_kind, label_rows
from potstill.labeling.shards import DEFAULT_SHARD_ROWS, label_sharded, rows_digest, run_folder
from potstill.labeling.signals import DEFAULT_TOP_K
from potstill.models import (
    count_parameters,
    default_cache_dir,
    folder_size_bytes,
    resolve_source,
    weights_location,
)
from potstill.prompts import PromptTemplate


def _teacher_identity(spec: str) -> str:
    """The model spec plus, for local weights, file sizes and mtimes: new weights mean new labels."""
    source = resolve_source(spec)
    if not source.is_local:
        return spec
    base = Path(source.location)
    files = [base / source.gguf_file] if source.gguf_file else sorted(base.glob("*.safetensors"))
    return spec + "|" + "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def teacher_identity(cfg: TeacherConfig) -> str:
    """What makes two labelings the same teacher: the weights, or for a server its backend and URL."""
    if cfg.backend == "transformers":
        return _teacher_identity(cfg.model)
    if cfg.backend == "openai":  # a served model: its name and server
        return f"{cfg.model}|openai@{cfg.openai.base_url}|{cfg.openai.score_mode}"
    return f"{_teacher_identity(cfg.model)}|{cfg.backend}"


def kind_spec(cfg: TeacherConfig, kind: str, labels: list[str]) -> KindSpec:
    """The labeling settings of a task of `kind` with `labels` under teacher config `cfg`."""
    top_k = int(cfg.top_logprobs or DEFAULT_TOP_K) if cfg.store_signals else 0
    return KindSpec(
        kind=kind,
        labels=tuple(labels),
        samples=cfg.samples,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        top_logprobs=top_k,
        seed=cfg.seed,
        stop=tuple(cfg.stop) or get_kind(kind).default_stop,
        guided_choice=cfg.backend == "vllm" and cfg.vllm.guided_choice,
    )


def rationale_spec(cfg: TeacherConfig, template: PromptTemplate | None) -> RationaleSpec | None:
    """The rationale settings when `cfg.rationale` is on and a rationale prompt was given."""
    if not cfg.rationale or template is None:
        return None
    return RationaleSpec(template, max_new_tokens=cfg.rationale_max_new_tokens, field=cfg.rationale_field)


def _settings(spec: KindSpec, rationale: RationaleSpec | None) -> dict[str, Any]:
    """What changes the records: the kind's settings, plus the rationale's when there is one (so runs
    without rationales keep their run folders)."""
    return {**spec.digest_payload(), **(rationale.digest_payload() if rationale else {})}


def labeling_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    cfg = parameters["cfg"]
    rationale = rationale_spec(cfg, parameters.get("rationale_prompt"))
    payload = {
        "rows": rows_digest(parameters["rows"]),
        "teacher": teacher_identity(cfg),
        "prompt": parameters["prompt"].text,
        "spec": _settings(kind_spec(cfg, parameters["kind"], parameters["labels"]), rationale),
        "signals": cfg.store_signals,
        "v": 3,
    }
    return "label-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _backend(cfg: TeacherConfig) -> Any:
    from potstill.labeling.teacher import load_backend

    return load_backend(cfg.backend_settings())


@task(name="label_with_teacher", cache_key_fn=labeling_cache_key, persist_result=True, retries=0)
def label_with_teacher(
    rows: list[dict[str, Any]],
    cfg: TeacherConfig,
    prompt: PromptTemplate,
    kind: str,
    labels: list[str],
    what: str,
    rationale_prompt: PromptTemplate | None = None,
) -> dict[str, Any]:
    """Label every row with the teacher (the kind's method); returns labeled rows and the throughput.

    Rows the teacher's output cannot be parsed for are kept with `parse_error: True` and confidence 0.
    `rationale_prompt`: with `cfg.rationale`, each labeled row also gets `rationale` (the flow passes it
    for the training prompts only: the gold split needs no explanations).
    """
    logger = get_run_logger()
    spec = kind_spec(cfg, kind, labels)
    rationale = rationale_spec(cfg, rationale_prompt)
    on_ray = cfg.executor == "ray"
    backend = None if on_ray else _backend(cfg)  # on Ray the teacher is loaded in the workers only
    unlabeled = [{k: v for k, v in r.items() if k != "label"} for r in rows]  # the teacher never sees gold
    identity = {
        "teacher": teacher_identity(cfg),
        "prompt": prompt.digest,
        "rows": rows_digest(unlabeled),
    }
    folder = run_folder(
        default_cache_dir() / "labels",
        identity["teacher"],
        prompt.digest,
        identity["rows"],
        _settings(spec, rationale),
    )
    store = cfg.store_signals
    ray_run = None
    if on_ray:  # teacher.executor: ray — the same shards, each one a Prefect task on a Ray worker
        from functools import partial

        from tasks.label_ray import label_on_ray

        with tqdm(total=len(rows), desc=f"teacher labels {what} (ray)", unit="row") as bar:
            ray_run = label_on_ray(
                unlabeled,
                cfg,
                partial(label_rows, template=prompt, spec=spec, rationale=rationale),
                folder,
                identity={**identity, "spec": _settings(spec, rationale)},
                signals_top_k=spec.top_logprobs if store else None,
                latency_fn=partial(_latency_ms, rows=unlabeled[:16], prompt=prompt, spec=spec),
                progress=bar.update,
            )
        result = ray_run.result
    else:
        with tqdm(total=len(rows), desc=f"teacher labels {what}", unit="row") as bar:
            result = label_sharded(
                unlabeled,
                lambda shard: label_rows(backend, shard, prompt, spec, rationale),
                folder,
                cfg.shard_rows or DEFAULT_SHARD_ROWS,
                identity={**identity, "spec": _settings(spec, rationale)},
                signals_top_k=spec.top_logprobs if store else None,
                progress=bar.update,
            )
    labeled = [{**r, "teacher": cfg.model, "prompt_digest": prompt.digest} for r in result.records]
    rate = result.rows_per_s if result.labeled_rows else math.nan
    failures = sum(1 for r in labeled if r.get("parse_error"))
    logger.info(
        "teacher labeled %d %s rows (%s) in %.1fs (%.1f rows/s); %d resumed from %s; %d parse error(s)",
        result.labeled_rows,
        what,
        spec.kind,
        result.seconds,
        rate,
        result.resumed_rows,
        folder,
        failures,
    )
    if store:
        logger.info(
            "teacher signals: %.0f bytes/token (top-%d) in %s",
            result.signal_bytes_per_token,
            spec.top_logprobs,
            folder,
        )
    if rationale is not None:
        given = sum(1 for r in labeled if r.get("rationale"))
        logger.info("rationales: %d of %d rows (%s)", given, len(labeled), rationale.template.name)
    model = getattr(backend, "model", None)
    model = model if isinstance(model, torch.nn.Module) else None  # in-process weights only
    return {
        "rows": labeled,
        "pred": [r["label"] for r in labeled],
        "seconds": result.seconds,
        "rows_per_s": rate,
        "resumed_rows": result.resumed_rows,
        "parse_errors": failures,
        "shards_folder": str(folder),
        "signal_bytes_per_token": result.signal_bytes_per_token if store else None,
        "signals_dir": str(folder) if store else None,
        "latency_ms": math.nan if on_ray else _latency_ms(backend, unlabeled, prompt, spec),
        "params": count_parameters(model) if model is not None else math.nan,
        "size_mb": folder_size_bytes(Path(weights_location(cfg.model))) / 1e6
        if model is not None
        else math.nan,
        **(ray_run.probe if ray_run else {}),  # on Ray: latency and size measured on a replica
    }


def _latency_ms(backend: Any, rows: list[dict[str, Any]], prompt: PromptTemplate, spec: KindSpec) -> float:
    """Mean wall time of one-row requests, as a single caller of the teacher sees it (fewer rows for
    generating kinds: each costs a full decode)."""
    sample = rows[: 2 if spec.kind in GENERATIVE_KINDS else 16]
    start = time.perf_counter()
    for r in sample:
        label_rows(backend, [r], prompt, spec)
    return 1000 * (time.perf_counter() - start) / max(len(sample), 1)
