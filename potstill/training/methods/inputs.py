"""What every distillation method trains from: one dataclass, so `potstill.training.methods.train` has one
signature."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from potstill.prompts import PromptTemplate, label_completion

if TYPE_CHECKING:
    from potstill.config import DistillConfig, RunConfig, StudentConfig
    from potstill.training.generator import Student


def _label_completion(row: dict[str, Any]) -> str:
    return label_completion(row["label"])


@dataclass
class DistillInputs:
    """The student (trained in place), its data and settings, and where the teacher signal comes from."""

    model: PreTrainedModel  # the student, trained in place
    tokenizer: PreTrainedTokenizerBase  # the student's tokenizer
    rows: list[dict[str, Any]]  # accepted rows: "id", "label", prompt fields, "rationale" when given
    prompt: PromptTemplate  # the student prompt
    student: StudentConfig
    distill: DistillConfig  # cfg.distill: the method, its own options section, LoRA
    output_dir: Path  # scratch folder for the trainer
    seed: int = 13
    on_log: Callable[[int, dict[str, float]], None] | None = None
    teacher_model: str | None = (
        None  # cfg.teacher.model: online methods load it with potstill.models.load_model
    )
    teacher_prompt: PromptTemplate | None = None
    signals_dir: Path | None = None  # the teacher's stored top-k signal shards (logit_offline)
    # What the student learns to write after its prompt for a row (`Classifier.completion`: ` <label>`;
    # `Generator.completion`: the kind's response, potstill.training.responses): every method asks this.
    completion: Callable[[dict[str, Any]], str] = _label_completion
    kind: str = "classification"

    def __post_init__(self) -> None:
        if self.student.max_length is None:  # unset: the kind's default (96 closed, 320 generative)
            from potstill.kinds import get_kind

            self.student = self.student.for_kind(get_kind(self.kind))

    @property
    def options(self) -> Any:
        """The selected method's own section of `distill:` (e.g. `distill.logit_online`)."""
        return self.distill.options

    @classmethod
    def for_run(
        cls,
        cfg: RunConfig,
        student: Student,
        rows: list[dict[str, Any]],
        output_dir: Path,
        *,
        seed: int,
        on_log: Callable[[int, dict[str, float]], None] | None,
        teacher_prompt: PromptTemplate | None,
        signals_dir: Path | None,
    ) -> DistillInputs:
        """The inputs of a pipeline run: the loaded student and the run config's student, distill and
        teacher settings. The in-process path and each `accelerate launch` rank build them here alike.
        Rows get the fields their prompt derives (multiple choice's `choices_text`); `student.max_length`
        left unset is the kind's default."""
        kind = getattr(student, "kind", "classification")
        return cls(
            model=student.model,
            tokenizer=student.tokenizer,
            rows=[student.prepare(r) for r in rows],
            prompt=student.prompt,
            student=cfg.student,
            distill=cfg.distill,
            output_dir=output_dir,
            seed=seed,
            on_log=on_log,
            teacher_model=cfg.teacher.model,
            teacher_prompt=teacher_prompt,
            signals_dir=signals_dir,
            completion=student.completion,
            kind=kind,
        )
