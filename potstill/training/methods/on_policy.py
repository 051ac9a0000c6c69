"""`on_policy`: TRL's DistillationTrainer (Agarwal et al. 2024, "On-Policy Distillation of Language Models").

The student samples completions of the student prompt (`distill.on_policy.max_new_tokens`, at
`distill.on_policy.temperature`) and is trained to match the in-memory teacher's next-token distribution on
them under TRL's generalized JSD, computed chunk by chunk from both models' hidden states and LM heads. TRL's
beta selects the divergence (0 forward KL, 1 reverse KL), so `distill.on_policy.divergence` maps onto it:
forward_kl -> 0, reverse_kl -> 1, jsd -> `distill.on_policy.beta` (total variation is not available there).

The teacher scores the student's token sequence (student prompt + completion), as in the paper: a teacher
prompt of a different length could not share the student's sampled tokens position by position. TRL 1.16's
trainer is fully on-policy; `distill.on_policy.lmbda` adds GKD's mixture back: with probability 1 - lmbda a
generation
batch uses the teacher's label (" <label>" EOS) as the completion instead of a sample (supervised KD on the
teacher's answer, the same divergence).
"""

from __future__ import annotations

import random
from typing import Any

from datasets import Dataset
from trl import DistillationConfig, DistillationTrainer

from potstill.config.training import OnPolicyOptions
from potstill.training.methods.common import (
    MeteredMixin,
    TrainResult,
    callbacks,
    load_teacher,
    require_rows,
    run,
    trainer_kwargs,
    with_lora,
)
from potstill.training.methods.data import encode_completion
from potstill.training.methods.inputs import DistillInputs
from potstill.training.methods.vocab import vocab_size


def trl_beta(d: OnPolicyOptions) -> float:
    return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(d.divergence, d.beta)


class OnPolicyTrainer(MeteredMixin, DistillationTrainer):
    """DistillationTrainer with tokens/s logging and GKD's lambda (student samples vs teacher labels)."""

    lmbda: float = 1.0
    _coin: random.Random
    _completions: list[str] | None = None
    _sampled = True
    batches: dict[bool, int]

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._completions = [x["completion"] for x in inputs]
        self._sampled = self.lmbda >= 1.0 or self._coin.random() < self.lmbda
        self.batches[self._sampled] += 1
        return super()._generate_and_score_completions(inputs)

    def _generate_single_turn(self, prompt_ids: Any, images: Any, multimodal_fields: Any, *a: Any, **k: Any):
        if self._sampled or self._completions is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *a, **k)
        return [encode_completion(self._tokenizer, c) for c in self._completions]

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        loss = super().compute_loss(model, inputs, False, num_items_in_batch)
        tokens = int(inputs["prompt_mask"].sum()) + int(inputs["completion_mask"].sum())
        self.meter(tokens, kd=float(loss.detach()))
        return (loss, None) if return_outputs else loss


def generation_length(inputs: DistillInputs) -> int:
    """How long the student's samples may get: a label word for a closed kind, a whole answer otherwise."""
    from potstill.kinds import get_kind

    if inputs.options.max_new_tokens is not None:
        return int(inputs.options.max_new_tokens)
    return 8 if get_kind(inputs.kind).fixed_labels else inputs.student.max_new_tokens


def make_trainer(inputs: DistillInputs) -> OnPolicyTrainer:
    """The trainer, with the teacher loaded and the vocabularies checked (before any step)."""
    require_rows(inputs)
    d = inputs.options
    teacher, vocab = load_teacher(inputs)
    if vocab_size(inputs.model) != vocab:
        raise ValueError(
            f"distill.method on_policy: the student's vocab_size {vocab_size(inputs.model)} is padded beyond "
            f"the teacher's {vocab}; TRL's trainer reads both heads whole: use logit_online for this pair"
        )
    if vocab_size(teacher) != vocab:  # a padded teacher vocabulary: cut the in-memory copy to the shared size
        teacher.resize_token_embeddings(vocab)
    args = DistillationConfig(
        **trainer_kwargs(inputs),
        beta=trl_beta(d),
        temperature=d.temperature,
        max_completion_length=generation_length(inputs),
    )
    model = with_lora(inputs.model, inputs)
    rows = [{"prompt": inputs.prompt.render(r), "completion": inputs.completion(r)} for r in inputs.rows]
    trainer = OnPolicyTrainer(
        model=model,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=inputs.tokenizer,
        callbacks=callbacks(inputs),
    )
    trainer.lmbda, trainer._coin = d.lmbda, random.Random(inputs.seed)
    trainer.batches = {True: 0, False: 0}  # generation batches: sampled by the student / teacher labels
    return trainer


def train(inputs: DistillInputs) -> TrainResult:
    """Distill on the student's own generations (and, with lmbda < 1, on the teacher's labels), in place."""
    trainer = make_trainer(inputs)
    return run(trainer, inputs, trainer.model, len(inputs.rows))
