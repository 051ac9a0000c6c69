"""`logit_offline`: distil from the teacher's stored top-k log-probabilities; the teacher is not loaded.

The labeling step (`teacher.store_signals`, on by itself for this method) stored, per training row, the
teacher-forced top-k log-probabilities over the full vocabulary at every token of the row's answer: for
a closed kind " <label>" then EOS, for a generative kind the generated tokens (`potstill.labeling.signals`).
Here each row is tokenized exactly as inference reads it (`potstill.training.methods.data`: prompt prefix, row
part and completion apart, then EOS), so its completion tokens are the ones the teacher was forced on, and the
stored positions line up one to one with the student's loss positions (`SparseSignal`, k buckets + tail).

Where the student's target differs from what the teacher was forced on (a reviewer corrected the label;
a generated answer that the student learns in another form), the teacher's distributions after the first
differing token were conditioned on other tokens and cannot be used: from there on the row's targets are
one-hot on the student's tokens (the divergence to a one-hot target is the cross-entropy), so a human
label is learned as given. Positions before it keep the teacher's signal. Rows with no stored signal at
all are an error before training: they mean the signals belong to another labeling run.

The signal tensors ride through TRL's data pipeline in the batch itself: the dataset is tokenized here
(`skip_prepare_dataset`, `remove_unused_columns=False`), each example carries its row index, and the
collator concatenates the rows' signals in the order of the flattened loss positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTTrainer

from potstill.labeling.signals import RowSignals, load_signals, signal_key
from potstill.training.losses import LossParts, SparseSignal
from potstill.training.methods.common import (
    MeteredMixin,
    TrainResult,
    completion_hidden,
    configured_loss,
    require_rows,
    run,
    self_collated_trainer,
)
from potstill.training.methods.data import encode_completion, encode_prompt, join, pad_batch
from potstill.training.methods.inputs import DistillInputs

log = logging.getLogger(__name__)
SHOW_IDS = 5


class MissingSignalsError(ValueError):
    """Training rows without a stored teacher signal (wrong or stale `signals_dir`)."""


@dataclass(frozen=True)
class RowTargets:
    """One row's loss targets: its token sequence, how many completion positions it has, and the
    teacher signal at those positions ([c, k] ids and log-probs, [c] tail)."""

    ids: list[int]
    completion_len: int
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    tail: torch.Tensor
    teacher_positions: int  # leading positions that carry the teacher's signal; the rest are one-hot


def aligned_targets(completion: list[int], stored: RowSignals | None, k: int) -> tuple[torch.Tensor, ...]:
    """(top_ids [c, k], top_logprobs [c, k], tail [c], teacher positions) for a completion of c tokens:
    the stored signal while the stored tokens equal the completion's, one-hot on the completion after the
    first difference (the stored distributions there were conditioned on other tokens). No stored signal:
    one-hot throughout."""
    c = len(completion)
    same = 0
    if stored is not None:
        stored_ids = stored.token_ids.astype(np.int64)
        while same < min(c, len(stored_ids)) and int(stored_ids[same]) == completion[same]:
            same += 1
    top_ids = torch.full((c, k), -1, dtype=torch.long)
    top_lp = torch.full((c, k), float("-inf"), dtype=torch.float32)
    tail = torch.zeros(c, dtype=torch.float32)
    if stored is not None:
        width = stored.top_ids.shape[1]
        top_ids[:same, :width] = torch.from_numpy(stored.top_ids[:same].astype(np.int64))
        top_lp[:same, :width] = torch.from_numpy(stored.top_logprobs[:same].astype(np.float32))
        tail[:same] = torch.from_numpy(stored.tail[:same].astype(np.float32))
    if same < c:
        top_ids[same:, 0] = torch.tensor(completion[same:], dtype=torch.long)
        top_lp[same:, 0] = 0.0
    return top_ids, top_lp, tail, torch.tensor(same)


def build_targets(
    rows: list[dict[str, Any]], inputs: DistillInputs, signals: dict[str, RowSignals]
) -> list[RowTargets]:
    """Tokenize every row as inference reads it and align its stored signal; MissingSignalsError lists
    the rows that have none."""
    missing = [r.get("id") for r in rows if signal_key(r.get("id")) not in signals]
    if missing and inputs.options.missing_signals == "error":
        raise MissingSignalsError(
            f"{len(missing)} of {len(rows)} training rows have no stored teacher signal in "
            f"{inputs.signals_dir} (first ids: {missing[:SHOW_IDS]}); the signals must come from the "
            "labeling run that produced these rows (teacher.store_signals, same prompts and teacher), "
            "or set distill.logit_offline.missing_signals: label to train those rows on their label alone"
        )
    if missing:
        log.info("logit_offline: %d row(s) without a stored signal train on their label alone", len(missing))
    k = max((s.top_ids.shape[1] for s in signals.values()), default=1)
    tok: PreTrainedTokenizerBase = inputs.tokenizer
    out = []
    for r in rows:
        prompt = encode_prompt(tok, inputs.prompt, r)
        ids, c = join(prompt, encode_completion(tok, inputs.completion(r)), inputs.student.max_length)
        stored = signals.get(signal_key(r["id"]))
        top_ids, top_lp, tail, same = aligned_targets(ids[len(ids) - c :], stored, k)
        out.append(RowTargets(ids, c, top_ids, top_lp, tail, int(same)))
    return out


class SignalCollator:
    """Pads a batch like the other custom methods (`pad_batch`) and adds the rows' teacher signals,
    concatenated in the order of the flattened loss positions (row by row, position by position)."""

    def __init__(self, targets: list[RowTargets], pad_id: int):
        self.targets = targets
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self.targets[int(e["row"])] for e in examples]
        batch = pad_batch([t.ids for t in rows], [t.completion_len for t in rows], self.pad_id)
        batch["top_ids"] = torch.cat([t.top_ids for t in rows])
        batch["top_logprobs"] = torch.cat([t.top_logprobs for t in rows])
        batch["tail"] = torch.cat([t.tail for t in rows])
        return batch


def offline_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor], inputs: DistillInputs) -> LossParts:
    """kd_weight · divergence(student ‖ stored teacher signal) + ce_weight · CE on the completion tokens."""
    signal = SparseSignal(batch["top_ids"], batch["top_logprobs"], batch["tail"])
    head = model.get_output_embeddings()
    return configured_loss(
        completion_hidden(model, batch), head, signal, batch["labels_flat"], inputs.options
    )


class LogitOfflineTrainer(MeteredMixin, SFTTrainer):
    """SFTTrainer whose loss compares the student with the stored teacher signals in the batch."""

    def __init__(self, *args: Any, distill_inputs: DistillInputs, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.distill_inputs = distill_inputs

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        parts = self.through_student(model, offline_loss, inputs, self.distill_inputs)
        self.meter(int(inputs["attention_mask"].sum()), kd=parts.kd, ce=parts.ce)
        return (parts.loss, None) if return_outputs else parts.loss


def train(inputs: DistillInputs) -> TrainResult:
    """Train the student in place on the stored teacher signals of `inputs.signals_dir`."""
    require_rows(inputs)
    if inputs.signals_dir is None:
        raise ValueError(
            "logit_offline needs signals_dir: the labeling run folder with the teacher's signal shards "
            "(label_with_teacher's `signals_dir`, with teacher.store_signals on)"
        )
    targets = build_targets(inputs.rows, inputs, load_signals(inputs.signals_dir))
    positions = sum(t.completion_len for t in targets)
    taught = sum(t.teacher_positions for t in targets)
    hard_rows = sum(1 for t in targets if t.teacher_positions < t.completion_len)
    log.info(
        "logit_offline: %d rows, %d loss positions, %d with the teacher's top-%d signal; %d row(s) one-hot "
        "after their first token that differs from the teacher's (e.g. a reviewer's label)",
        len(targets),
        positions,
        taught,
        targets[0].top_ids.shape[1],
        hard_rows,
    )
    if taught == 0:
        log.warning("logit_offline: no position has a teacher signal; this trains like sft")
    rows = [{"row": i, "length": len(t.ids)} for i, t in enumerate(targets)]
    pad = inputs.tokenizer.pad_token_id
    collator = SignalCollator(targets, pad if pad is not None else inputs.tokenizer.eos_token_id)
    trainer = self_collated_trainer(LogitOfflineTrainer, inputs, rows, collator, distill_inputs=inputs)
    return run(trainer, inputs, trainer.model, len(inputs.rows))
