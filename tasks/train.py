"""Steps 4-5: build the student (a pruned copy of the teacher by default) and distill it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.config import RunConfig
from potstill.kinds import get_kind
from potstill.models import default_cache_dir, load_model
from potstill.prompts import PromptTemplate
from potstill.training.classifier import Classifier
from potstill.training.generator import Generator, load_student
from potstill.training.launch import launch_training
from potstill.training.methods import DistillInputs
from potstill.training.methods import train as distill_student
from potstill.training.student import prune_layers
from tasks.tracking import log_metrics

# Logged per logging step as `train_<key>`: the trainer's own numbers, tokens/s and the loss parts of the
# distillation method (kd_loss, ce_loss, hidden_loss, rationale_loss; see
# potstill/training/methods/common.py).
TRAIN_LOG_KEYS = ("loss", "grad_norm", "learning_rate", "tokens_per_s")


@task(name="build_student", cache_policy=NO_CACHE)
def build_student(
    cfg: RunConfig, prompt: PromptTemplate, labels: list[str], folder: Path, kind: str = "classification"
) -> Path:
    """Save the untrained student (with its prompt) so it can be evaluated and trained from one place: a
    classifier over the label set for classification and NLI, a generator for the other kinds."""
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
    if not get_kind(kind).fixed_labels:
        # step_by_step's label task is the short answer (the rationale is its second task), so that is
        # what its student writes at inference, as in the paper.
        response = "answer" if cfg.distill.method == "step_by_step" else cfg.student.response
        student = Generator(model, tokenizer, prompt, kind, response, cfg.student.max_new_tokens)
        return student.save(folder)
    return Classifier(model, tokenizer, prompt, labels).save(folder)


@task(name="train_student", cache_policy=NO_CACHE)
def train_student(
    base: Path,
    train_rows: list[dict[str, Any]],
    cfg: RunConfig,
    folder: Path,
    run_id: str,
    teacher_prompt: PromptTemplate | None = None,
    signals_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Distill into the saved base student with `cfg.distill.method`; online methods load the teacher
    (`cfg.teacher.model`) themselves, logit_offline reads the teacher's signals from `signals_dir`."""
    torch.manual_seed(cfg.data.seed)
    MlflowClient().set_tag(run_id, "potstill.distill_method", cfg.distill.method)

    def on_log(step: int, logs: dict[str, float]) -> None:
        keep = {f"train_{k}": v for k, v in logs.items() if k in TRAIN_LOG_KEYS or k.endswith("_loss")}
        if keep:
            log_metrics(run_id, keep, step)

    if cfg.student.num_processes > 1:
        # N ranks under `accelerate launch` (potstill/training/launch.py); rank 0 saves the student into
        # `folder`
        result = launch_training(
            base,
            train_rows,
            cfg,
            folder,
            default_cache_dir() / "trainer" / run_id,
            seed=cfg.data.seed,
            on_log=on_log,
            teacher_prompt=teacher_prompt,
            signals_dir=Path(signals_dir) if signals_dir else None,
            echo=get_run_logger().info,
        )
    else:
        student = load_student(base)
        result = distill_student(
            DistillInputs.for_run(
                cfg,
                student,
                train_rows,
                default_cache_dir() / "trainer" / run_id,
                seed=cfg.data.seed,
                on_log=on_log,
                teacher_prompt=teacher_prompt,
                signals_dir=Path(signals_dir) if signals_dir else None,
            )
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
        "trained (%s) %d steps on %d rows in %.0fs (%.0f tokens/s)",
        result.method,
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
        "method": result.method,
    }
