"""`step_by_step`: "Distilling step-by-step" (Hsieh et al. 2023): the student learns two tasks from the
same rows, the teacher's label and the teacher's rationale, with a weight per task:

    loss = label_weight · CE(label task) + rationale_weight · CE(rationale task)

each CE the mean over that task's target tokens in the batch. Rows without a rationale give only the label
task.

Task prefixes: the paper prefixes both tasks ("[label]", "[rationale]") and prefixes the label task at
inference too. Here only the rationale task is prefixed ("[rationale] " + student prompt -> " <rationale>"
EOS); the label task is the plain student prompt -> " <label>" EOS, exactly what `sft` trains. The prefix is
what tells the model which task to do, so one task may go without it; leaving it off the label task keeps
the saved student a plain `Classifier` whose prompt, scoring code, registry model and vLLM export are the
same as for every other method (a prefixed label task would need the prefix in every one of them).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from trl import SFTTrainer

from potstill.config.training import StepByStepOptions
from potstill.training.losses import distillation_loss
from potstill.training.methods.common import (
    MeteredMixin,
    TrainResult,
    completion_hidden,
    require_rows,
    run,
    self_collated_trainer,
)
from potstill.training.methods.data import encode_completion, encode_prompt, join, pad_batch, prefixed
from potstill.training.methods.inputs import DistillInputs

RATIONALE_PREFIX = "[rationale] "


def rationale_of(row: dict[str, Any]) -> str | None:
    text = row.get("rationale")
    text = " ".join(str(text).split()) if text is not None else ""
    return text or None


def examples(inputs: DistillInputs) -> list[dict[str, Any]]:
    """Per row: the label task, and the rationale task when the teacher gave a rationale."""
    tok, d = inputs.tokenizer, inputs.options
    out = []
    for row in inputs.rows:
        label = encode_completion(tok, inputs.completion(row))
        ids, c = join(encode_prompt(tok, inputs.prompt, row), label, inputs.student.max_length)
        ex: dict[str, Any] = {"ids": ids, "c": c, "r_ids": [], "r_c": 0}
        rationale = rationale_of(row)
        if rationale is not None:
            target = encode_completion(tok, " " + rationale)
            prompt = encode_prompt(tok, inputs.prompt, row, lead=RATIONALE_PREFIX)
            ex["r_ids"], ex["r_c"] = join(prompt, target, d.rationale_max_length)
        ex["length"] = len(ids) + len(ex["r_ids"])
        out.append(ex)
    return out


class Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_batch([f["ids"] for f in features], [f["c"] for f in features], self.pad_id)
        with_r = [f for f in features if f["r_c"] > 0]
        if with_r:
            r = pad_batch([f["r_ids"] for f in with_r], [f["r_c"] for f in with_r], self.pad_id)
            batch.update(prefixed(r, "rationale_"))
        return batch


class StepByStepTrainer(MeteredMixin, SFTTrainer):
    """SFTTrainer with the two-task loss; both tasks run in one call through the student's wrapper."""

    distill: StepByStepOptions  # distill.step_by_step

    def task_losses(self, student: PreTrainedModel, batch: dict[str, torch.Tensor]) -> Any:
        d, head = self.distill, student.get_output_embeddings()
        label = distillation_loss(
            completion_hidden(student, batch),
            head,
            None,
            labels=batch["labels_flat"],
            chunk_size=d.chunk_size,
        )
        loss, parts = d.label_weight * label.loss, {"ce": label.ce}
        if "rationale_input_ids" in batch:
            rationale = distillation_loss(
                completion_hidden(student, batch, "rationale_"),
                head,
                None,
                labels=batch["rationale_labels_flat"],
                chunk_size=d.chunk_size,
            )
            loss = loss + d.rationale_weight * rationale.loss
            parts["rationale"] = rationale.ce
        return loss, parts

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        loss, parts = self.through_student(model, self.task_losses, inputs)
        tokens = int(inputs["attention_mask"].sum())
        if "rationale_attention_mask" in inputs:
            tokens += int(inputs["rationale_attention_mask"].sum())
        self.meter(tokens, **parts)
        return (loss, None) if return_outputs else loss


def make_trainer(inputs: DistillInputs) -> StepByStepTrainer:
    require_rows(inputs)
    trainer = self_collated_trainer(
        StepByStepTrainer, inputs, examples(inputs), Collator(inputs.tokenizer.pad_token_id)
    )
    trainer.distill = inputs.options
    return trainer


def train(inputs: DistillInputs) -> TrainResult:
    """Train the label and rationale tasks together, in place; the label task is what inference uses."""
    trainer = make_trainer(inputs)
    return run(trainer, inputs, trainer.model, len(inputs.rows))
