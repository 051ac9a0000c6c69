"""`logit_online`: the teacher in memory, its full next-token distribution as the target at every
completion position (the label tokens and EOS).

Each side reads its own prompt: the teacher the teacher prompt (the one it labeled with, few-shot
examples and all), the student the student prompt; both are followed by the same completion tokens, so
completion position k of the student is aligned with completion position k of the teacher. Only those
positions go through either LM head (the teacher's under no_grad), and the student's loss is computed in
chunks by `potstill.training.losses.distillation_loss`: kd_weight·divergence(T) + ce_weight·CE(label tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from trl import SFTTrainer

from potstill.config.training import LogitOnlineOptions
from potstill.training.losses import DenseSignal
from potstill.training.methods.common import (
    MeteredMixin,
    TrainResult,
    completion_hidden,
    configured_loss,
    load_teacher,
    require_rows,
    run,
    self_collated_trainer,
)
from potstill.training.methods.data import encode_completion, encode_prompt, join, pad_batch, prefixed
from potstill.training.methods.inputs import DistillInputs
from potstill.training.methods.vocab import head_for

TEACHER_MAX_LENGTH = 2048  # the teacher prompt may carry few-shot examples; cut only beyond this


def examples(inputs: DistillInputs) -> list[dict[str, Any]]:
    """Per row: student prompt + completion, teacher prompt + the same completion."""
    tok = inputs.tokenizer
    teacher_prompt = inputs.teacher_prompt or inputs.prompt
    out = []
    for row in inputs.rows:
        completion = encode_completion(tok, inputs.completion(row))
        s_ids, s_c = join(encode_prompt(tok, inputs.prompt, row), completion, inputs.student.max_length)
        t_ids, t_c = join(encode_prompt(tok, teacher_prompt, row), completion, TEACHER_MAX_LENGTH)
        c = min(s_c, t_c)
        out.append({"ids": s_ids[: len(s_ids) - s_c + c], "t_ids": t_ids[: len(t_ids) - t_c + c], "c": c})
        out[-1]["length"] = len(out[-1]["ids"])
    return out


class Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lens = [f["c"] for f in features]
        student = pad_batch([f["ids"] for f in features], lens, self.pad_id)
        teacher = pad_batch([f["t_ids"] for f in features], lens, self.pad_id)
        return {**student, **prefixed(teacher, "teacher_")}


class TeacherMixin:
    """A frozen in-memory teacher moved to the training device, and its logits at the loss positions."""

    teacher: PreTrainedModel
    vocab: int
    args: Any

    def attach_teacher(self, teacher: PreTrainedModel, vocab: int) -> None:
        self.teacher = teacher.to(self.args.device)
        self.vocab = vocab

    @torch.no_grad()
    def teacher_logits(self, hidden: torch.Tensor) -> DenseSignal:
        return DenseSignal(head_for(self.teacher, self.vocab)(hidden).float())


class LogitOnlineTrainer(TeacherMixin, MeteredMixin, SFTTrainer):
    """SFTTrainer whose loss is the chunked divergence to the in-memory teacher at the completion tokens."""

    distill: LogitOnlineOptions  # distill.logit_online

    def distill_loss(
        self, student: PreTrainedModel, batch: dict[str, torch.Tensor], signal: DenseSignal
    ) -> Any:
        hidden = completion_hidden(student, batch)
        parts = configured_loss(
            hidden, head_for(student, self.vocab), signal, batch["labels_flat"], self.distill
        )
        return parts.loss, {"kd": parts.kd, "ce": parts.ce}

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        with torch.no_grad():
            signal = self.teacher_logits(completion_hidden(self.teacher, inputs, "teacher_"))
        loss, parts = self.through_student(model, self.distill_loss, inputs, signal)
        self.meter(int(inputs["attention_mask"].sum()), **parts)
        return (loss, None) if return_outputs else loss


def make_trainer(inputs: DistillInputs) -> LogitOnlineTrainer:
    """The trainer, with the teacher loaded and the vocabularies checked (before any step)."""
    require_rows(inputs)
    teacher, vocab = load_teacher(inputs)
    trainer = self_collated_trainer(
        LogitOnlineTrainer, inputs, examples(inputs), Collator(inputs.tokenizer.pad_token_id)
    )
    trainer.distill = inputs.options
    trainer.attach_teacher(teacher, vocab)
    return trainer


def train(inputs: DistillInputs) -> TrainResult:
    """Distill the in-memory teacher's full distribution into the student, in place."""
    trainer = make_trainer(inputs)
    return run(trainer, inputs, trainer.model, len(inputs.rows))
