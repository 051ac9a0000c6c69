"""Checked before training: can this teacher's logits (or hidden states) be compared with this student's?

Logit and hidden-state methods compare distributions token by token, so both models must index the same
vocabulary. Two cases pass: the same size with the same tokenizer, and a padded vocabulary (the same
tokenizer, one embedding matrix larger, e.g. rounded up to a multiple of 64), where the logits are cut to
the shared size; every real token id is below it. Sequence-level methods (`sft`, `step_by_step`) only need
the teacher's text, so any tokenizer works with them.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

LOGIT_METHODS = ("logit_offline", "logit_online", "hidden_states", "on_policy")


def vocab_size(model: PreTrainedModel) -> int:
    """Rows of the output embedding: the logits' width (config.vocab_size can lag behind a resize)."""
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


def check_vocab(
    student: PreTrainedModel,
    teacher: PreTrainedModel | int,
    student_tok: PreTrainedTokenizerBase,
    teacher_tok: PreTrainedTokenizerBase,
    method: str,
) -> int | None:
    """The vocabulary size logits are compared over, or None for a sequence-level method.

    `teacher` may be a size (offline signals, where no teacher model is loaded). Raises ValueError naming
    both sizes and the method when the vocabularies cannot be compared.
    """
    if method not in LOGIT_METHODS:
        return None
    vs = vocab_size(student)
    vt = teacher if isinstance(teacher, int) else vocab_size(teacher)
    if not same_tokenizer(student_tok, teacher_tok):
        raise ValueError(
            f"distill.method {method} compares logits token by token, but the teacher's tokenizer "
            f"({len(teacher_tok)} tokens, vocab_size {vt}) differs from the student's ({len(student_tok)} "
            f"tokens, vocab_size {vs}): use sft or step_by_step (sequence level) with this teacher"
        )
    shared = min(vs, vt)
    if vs != vt and len(student_tok) > shared:
        raise ValueError(
            f"distill.method {method}: teacher vocab_size {vt} and student vocab_size {vs} differ and the "
            f"tokenizer has {len(student_tok)} tokens, more than the smaller one: not a padded vocabulary"
        )
    return shared


class TruncatedHead(torch.nn.Module):
    """An LM head that returns only the first `size` logits (a padded vocabulary's real tokens)."""

    def __init__(self, head: torch.nn.Module, size: int):
        super().__init__()
        self.head = head
        self.size = size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.head.weight[: self.size]
        bias = getattr(self.head, "bias", None)
        return torch.nn.functional.linear(hidden, weight, None if bias is None else bias[: self.size])


def head_for(model: PreTrainedModel, size: int | None) -> torch.nn.Module:
    """The model's LM head, cut to `size` logits when its vocabulary is padded beyond it."""
    head = model.get_output_embeddings()
    if size is None or vocab_size(model) == size:
        return head
    return TruncatedHead(head, size)
