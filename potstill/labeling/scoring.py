"""Label scoring: the probability of every allowed label under a prompt, in batches, without generation.

For each row we read log p(label tokens | prompt) for every label and normalise over the label set, which
gives the predicted label, its confidence and the full distribution in one forward pass per batch
(per row when every label is one token; per row and label otherwise).

Speed comes from three things, each checked against the naive one-row-at-a-time reference in the tests:
- the shared prefix (instructions, few-shot examples) is run once and its key/value cache reused; each
  batch gets a fresh copy because the cache object grows in place;
- rows are sorted by length and padded on the right, and each row is read at its own last real token;
- the LM head runs only at the positions a label is read from, not over the whole sequence × vocabulary.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from potstill.prompts import label_completion


@dataclass(frozen=True)
class LabelScores:
    label: str
    confidence: float
    distribution: dict[str, float]


@dataclass(frozen=True)
class _Item:
    row: int
    ids: list[int]
    targets: list[tuple[int, list[tuple[int, int]]]]  # (label index, [(position, token id), ...])


def label_token_ids(tokenizer: PreTrainedTokenizerBase, labels: Sequence[str]) -> list[list[int]]:
    ids = [tokenizer(label_completion(lab), add_special_tokens=False)["input_ids"] for lab in labels]
    if any(not t for t in ids):
        raise ValueError(f"a label tokenizes to nothing: {dict(zip(labels, ids, strict=True))}")
    if len({tuple(t) for t in ids}) != len(ids):
        raise ValueError(f"two labels tokenize the same: {dict(zip(labels, ids, strict=True))}")
    return ids


def _items(rows: list[list[int]], label_ids: list[list[int]], offset: int) -> list[_Item]:
    """Sequences to run and where to read each label's tokens; offset = length of a cached prefix."""
    items = []
    if all(len(t) == 1 for t in label_ids):
        for r, ids in enumerate(rows):
            last = offset + len(ids) - 1
            items.append(_Item(r, ids, [(j, [(last, t[0])]) for j, t in enumerate(label_ids)]))
        return items
    for r, ids in enumerate(rows):
        for j, lab in enumerate(label_ids):
            start = offset + len(ids) - 1
            items.append(_Item(r, ids + lab[:-1], [(j, [(start + k, tok) for k, tok in enumerate(lab)])]))
    return items


def _head_logprobs(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    return torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def score_labels(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    bodies: Sequence[str],
    labels: Sequence[str],
    batch_size: int = 32,
    reuse_prefix: bool = True,
    progress: Callable[[int], None] | None = None,
    memo: dict[tuple[int, str], Any] | None = None,
) -> list[LabelScores]:
    """Score every label after `prefix + body` for each body; `progress(rows)` is called per batch.

    `memo` keeps the prefix's key/value cache between calls (one-row requests of a served model).
    """
    if not labels:
        raise ValueError("no labels to score")
    label_ids = label_token_ids(tokenizer, labels)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    body_ids = [tokenizer(b, add_special_tokens=False)["input_ids"] for b in bodies]
    if any(not b for b in body_ids):
        raise ValueError("a row renders to an empty prompt body")
    use_cache = reuse_prefix and len(prefix_ids) > 0
    if use_cache:
        rows, offset = body_ids, len(prefix_ids)
        device = next(model.parameters()).device
        key = (id(model), prefix)
        if memo is not None and key in memo:
            prefix_cache = memo[key]
        else:
            prefix_cache = model(torch.tensor([prefix_ids], device=device), use_cache=True).past_key_values
            if memo is not None:
                memo[key] = prefix_cache
    else:
        rows, offset = [prefix_ids + b for b in body_ids], 0
    items = _items(rows, label_ids, offset)
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
    scores = torch.zeros(len(bodies), len(labels), dtype=torch.float64)
    backbone = model.get_decoder()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    done_items = reported = 0
    for start in range(0, len(order), batch_size):
        batch = [items[i] for i in order[start : start + batch_size]]
        width = max(len(it.ids) for it in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, it in enumerate(batch):
            input_ids[b, : len(it.ids)] = torch.tensor(it.ids)
            mask[b, : len(it.ids)] = 1
        kwargs = {}
        if use_cache:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            mask = torch.cat([torch.ones((len(batch), offset), dtype=torch.long), mask], dim=1)
            kwargs["past_key_values"] = cache
        hidden = backbone(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=use_cache, **kwargs
        ).last_hidden_state
        rows_b, pos_b, tok_b, lab_b, own_b = [], [], [], [], []
        for b, it in enumerate(batch):
            for j, reads in it.targets:
                for pos, tok in reads:
                    rows_b.append(b)
                    pos_b.append(pos - offset)
                    tok_b.append(tok)
                    lab_b.append(j)
                    own_b.append(it.row)
        logp = _head_logprobs(model, hidden[torch.tensor(rows_b), torch.tensor(pos_b)])
        picked = logp[torch.arange(len(tok_b)), torch.tensor(tok_b)].double().cpu()
        scores.index_put_((torch.tensor(own_b), torch.tensor(lab_b)), picked, accumulate=True)
        if progress is not None:  # in rows; with multi-token labels a row is several items
            done_items += len(batch)
            rows_done = done_items * len(bodies) // len(items)
            progress(rows_done - reported)
            reported = rows_done
    probs = torch.softmax(scores, dim=-1)
    out = []
    for r in range(len(bodies)):
        best = int(torch.argmax(probs[r]))
        dist = {lab: float(probs[r, j]) for j, lab in enumerate(labels)}
        out.append(LabelScores(labels[best], float(probs[r, best]), dist))
    return out
