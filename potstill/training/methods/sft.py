"""`sft`: response distillation, the student trained on (student prompt -> teacher label) with TRL's
SFTTrainer.

The loss is on the label tokens only. Most of the cost of a classification SFT step on CPU is the LM
head over every position (sequence × 49k vocabulary), yet only the label positions have a loss; the
trainer below runs the head only there. Every logging step reports tokens/s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedModel
from trl import SFTConfig, SFTTrainer

from potstill.prompts import PromptTemplate
from potstill.training.methods.common import (
    MeteredMixin,
    TrainResult,
    callbacks,
    require_rows,
    run,
    trainer_kwargs,
    with_lora,
)
from potstill.training.methods.inputs import DistillInputs


def sft_examples(
    rows: list[dict[str, Any]], prompt: PromptTemplate, completion: Callable[[dict[str, Any]], str]
) -> list[dict[str, str]]:
    """Prompt-completion pairs: the student prompt, then what the student writes (` <label>`, or a
    generative kind's response); TRL appends EOS."""
    return [{"prompt": prompt.render(r), "completion": completion(r)} for r in rows]


def label_only_loss(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over label tokens, running the LM head only at positions that have a label."""
    hidden = model.get_decoder()(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
    ).last_hidden_state
    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, labels[keep]), int(keep.sum())


class LabelOnlySFTTrainer(MeteredMixin, SFTTrainer):
    """SFTTrainer whose loss computes logits only where the completion mask has labels."""

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        loss, _ = self.through_student(model, label_only_loss, inputs)
        self.meter(int(inputs["attention_mask"].sum()), ce=float(loss.detach()))
        return (loss, None) if return_outputs else loss


def train(inputs: DistillInputs) -> TrainResult:
    """Train in place on accepted teacher labels; returns what happened, with throughput."""
    require_rows(inputs)
    args = SFTConfig(
        **trainer_kwargs(inputs),
        max_length=inputs.student.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length",
    )
    model = with_lora(inputs.model, inputs)
    trainer = LabelOnlySFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(sft_examples(inputs.rows, inputs.prompt, inputs.completion)),
        processing_class=inputs.tokenizer,
        callbacks=callbacks(inputs),
    )
    return run(trainer, inputs, model, len(inputs.rows))
