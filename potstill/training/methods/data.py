"""Tokenizing prompt + completion exactly as inference reads them, and padding them into loss batches.

Inference (`potstill.labeling.scoring`) tokenizes the prompt's shared prefix, the row part and the label word
separately, without special tokens, so training here does the same: the completion tokens a method learns
are the tokens the classifier scores. Each sequence carries the positions whose next-token prediction is a
completion token (the last prompt token, then each completion token but the last), flattened over the
batch as (`rows`, `cols`) with the completion token ids as `labels`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from potstill.prompts import PromptTemplate


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, template: PromptTemplate, row: dict[str, Any], lead: str = ""
) -> list[int]:
    """Token ids of `lead + prompt` as the scorer builds them: prefix and row part tokenized apart."""
    prefix, _ = template.split()
    head = lead + prefix
    ids = tokenizer(head, add_special_tokens=False)["input_ids"] if head else []
    return ids + tokenizer(template.render_row(row), add_special_tokens=False)["input_ids"]


def encode_completion(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The completion's tokens then EOS (what TRL's SFT appends), so the student also learns to stop."""
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def join(prompt: list[int], completion: list[int], max_length: int) -> tuple[list[int], int]:
    """prompt + completion cut to `max_length` from the prompt's start: the completion and the words
    right before it (the answer cue) are what the loss needs; returns (ids, completion length)."""
    completion = completion[: max_length - 1]
    keep = max_length - len(completion)
    return prompt[-keep:] + completion, len(completion)


def pad_batch(seqs: list[list[int]], completion_lens: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and mask, and the flattened loss positions and their target tokens."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    labels: list[int] = []
    for b, (seq, c) in enumerate(zip(seqs, completion_lens, strict=True)):
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        start = len(seq) - c - 1  # the last prompt token predicts the first completion token
        rows.extend([b] * c)
        cols.extend(range(start, start + c))
        labels.extend(seq[len(seq) - c :])
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "rows": torch.tensor(rows, dtype=torch.long),
        "cols": torch.tensor(cols, dtype=torch.long),
        "labels_flat": torch.tensor(labels, dtype=torch.long),
    }


def prefixed(batch: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in batch.items()}
