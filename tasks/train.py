"""Steps 4-5: build the student (a pruned copy of the teacher by default) and distill it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.classifier import Classifier
from potstill.config import RunConfig
from potstill.models import default_cache_dir, load_model
from potstill.prompts import PromptTemplate
from potstill.student import prune_layers
from potstill.train import train_student as distill_responses
from tasks.tracking import log_metrics


@task(name="build_student", cache_policy=NO_CACHE)
def build_student(cfg: RunConfig, prompt: PromptTemplate, labels: list[str], folder: Path) -> Path:
    """Save the untrained student (with its prompt) so it can be evaluated and trained from one place."""
    if cfg.student.model == "pruned-teacher":
        teacher, tokenizer = load_model(cfg.teacher.model)
        layers = cfg.student.layers or list(range(teacher.config.num_hidden_layers))
        model = prune_layers(teacher, layers)
        get_run_logger().info(
            "student: %d of the teacher's %d layers %s", len(layers), teacher.config.num_hidden_layers, layers
        )
    else:
        model, tokenizer = load_model(cfg.student.model)
    shutil.rmtree(folder, ignore_errors=True)
    return Classifier(model, tokenizer, prompt, labels).save(folder)


@task(name="train_student", cache_policy=NO_CACHE)
def train_student(
    base: Path, train_rows: list[dict[str, Any]], cfg: RunConfig, folder: Path, run_id: str
) -> dict[str, Any]:
    torch.manual_seed(cfg.data.seed)
    student = Classifier.load(base)

    def on_log(step: int, logs: dict[str, float]) -> None:
        keep = {
            f"train_{k}": v
            for k, v in logs.items()
            if k in ("loss", "grad_norm", "learning_rate", "tokens_per_s")
        }
        if keep:
            log_metrics(run_id, keep, step)

    result = distill_responses(
        student.model,
        student.tokenizer,
        train_rows,
        student.prompt,
        cfg.student,
        default_cache_dir() / "trainer" / run_id,
        seed=cfg.data.seed,
        on_log=on_log,
    )
    shutil.rmtree(folder, ignore_errors=True)
    student.save(folder)
    shutil.rmtree(default_cache_dir() / "trainer" / run_id, ignore_errors=True)
    log_metrics(
        run_id,
        {
            "train_seconds": result.seconds,
            "train_steps": result.steps,
            "train_tokens_per_s_mean": result.tokens_per_s,
            "train_final_loss": result.final_loss,
        },
    )
    get_run_logger().info(
        "trained %d steps on %d rows in %.0fs (%.0f tokens/s)",
        result.steps,
        result.examples,
        result.seconds,
        result.tokens_per_s,
    )
    return {
        "folder": folder,
        "steps": result.steps,
        "seconds": result.seconds,
        "tokens_per_s": result.tokens_per_s,
        "final_loss": result.final_loss,
    }
