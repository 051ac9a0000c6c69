"""What every distillation method trains from: one dataclass, so `potstill.methods.train` has one
signature."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from potstill.prompts import PromptTemplate

if TYPE_CHECKING:
    from potstill.config import DistillConfig, StudentConfig


@dataclass
class DistillInputs:
    """The student (trained in place), its data and settings, and where the teacher signal comes from."""

    model: PreTrainedModel  # the student, trained in place
    tokenizer: PreTrainedTokenizerBase  # the student's tokenizer
    rows: list[dict[str, Any]]  # accepted rows: "id", "label", prompt fields, "rationale" when given
    prompt: PromptTemplate  # the student prompt
    student: StudentConfig
    distill: DistillConfig  # cfg.distill
    output_dir: Path  # scratch folder for the trainer
    seed: int = 13
    on_log: Callable[[int, dict[str, float]], None] | None = None
    teacher_model: str | None = (
        None  # cfg.teacher.model: online methods load it with potstill.models.load_model
    )
    teacher_prompt: PromptTemplate | None = None
    signals_dir: Path | None = None  # the teacher's stored top-k signal shards (logit_offline)
