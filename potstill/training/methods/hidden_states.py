"""`hidden_states`: match chosen student layers to chosen teacher layers, plus the logit loss:

    loss = weight · hidden(student layers, teacher layers) + kd_weight · KD + ce_weight · CE

(all in `distill.hidden_states`)

Hidden states only compare when both models read the same tokens, so here the teacher runs on the
student's input (student prompt + completion), unlike `logit_online` where it reads its own prompt.

Positions: the loss positions of the completion, i.e. the last prompt token and every completion token
but the last, the same positions the logit loss uses. These are the states the label is read from; all
prompt positions would also be available at no extra teacher cost, but would spend the small student's
capacity on copying the teacher's view of every input word rather than its decision.

Layers: `distill.hidden_states.layer_map` pairs [student_layer, teacher_layer] compare the output of those
decoder layers
(the residual stream before the final norm, captured with forward hooks, the same for every layer). By
default a pruned-teacher student's layer i is matched to the teacher layer it was copied from, any other
student evenly (its last layer to the teacher's last). When widths differ, one learned nn.Linear per pair
maps student states to the teacher's width; the projections train with the student (own optimizer param
group, gradients averaged across ranks by hand since DDP does not wrap them) and are not saved with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel

from potstill.training.losses import hidden_state_loss, make_projections
from potstill.training.methods.common import (
    TrainResult,
    configured_loss,
    load_teacher,
    require_rows,
    run,
    self_collated_trainer,
)
from potstill.training.methods.data import encode_completion, encode_prompt, join, pad_batch
from potstill.training.methods.inputs import DistillInputs
from potstill.training.methods.logit_online import LogitOnlineTrainer
from potstill.training.methods.vocab import head_for


def default_layer_map(
    student_layers: int, teacher_layers: int, pruned_from: list[int] | None
) -> list[tuple[int, int]]:
    """Pruned student: layer i <-> the teacher layer it was copied from; else evenly spaced, last to last."""
    if pruned_from is not None and len(pruned_from) == student_layers:
        return list(enumerate(pruned_from))
    return [(i, math.ceil((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


def layer_map(inputs: DistillInputs, teacher: PreTrainedModel) -> list[tuple[int, int]]:
    """The configured or default map, checked against both models' layer counts before training."""
    ns, nt = inputs.model.config.num_hidden_layers, teacher.config.num_hidden_layers
    pruned = inputs.student.layers if inputs.student.model == "pruned-teacher" else None
    layer_map = inputs.options.layer_map
    pairs = [tuple(p) for p in layer_map] if layer_map else None
    pairs = pairs or default_layer_map(ns, nt, pruned)
    bad = [(s, t) for s, t in pairs if s >= ns or t >= nt]
    if bad:
        raise ValueError(
            f"distill.hidden_states.layer_map pairs {bad} out of range: the student has {ns} layers, "
            f"the teacher {nt}"
        )
    return [(int(s), int(t)) for s, t in pairs]


@contextmanager
def captured_layers(model: PreTrainedModel, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Outputs of the given decoder layers during the forward passes inside the block."""
    out: dict[int, torch.Tensor] = {}
    blocks = model.get_decoder().layers

    def keep(i: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            out[i] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [blocks[i].register_forward_hook(keep(i)) for i in sorted(set(layers))]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def states_at(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], layers: list[int]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """([N, H] outputs of `layers` at the loss positions, [N, H] last hidden states there)."""
    rows, cols = batch["rows"], batch["cols"]
    with captured_layers(model, layers) as out:
        last = model.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
    return [out[i][rows, cols] for i in layers], last[rows, cols]


def examples(inputs: DistillInputs) -> list[dict[str, Any]]:
    tok = inputs.tokenizer
    out = []
    for row in inputs.rows:
        completion = encode_completion(tok, inputs.completion(row))
        ids, c = join(encode_prompt(tok, inputs.prompt, row), completion, inputs.student.max_length)
        out.append({"ids": ids, "c": c, "length": len(ids)})
    return out


class Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_batch([f["ids"] for f in features], [f["c"] for f in features], self.pad_id)


class HiddenStatesTrainer(LogitOnlineTrainer):
    """The teacher reads the student's tokens; the loss adds matched-layer distances to the logit loss."""

    pairs: list[tuple[int, int]]
    projections: torch.nn.ModuleList | None = None

    def create_optimizer(self, model: Any = None) -> Any:
        optimizer = super().create_optimizer(model)
        if self.projections is not None and not getattr(self, "_projections_added", False):
            optimizer.add_param_group({"params": list(self.projections.parameters()), "weight_decay": 0.0})
            self._projections_added = True
        return optimizer

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.projections is not None and self.accelerator.num_processes > 1:
            for p in self.projections.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)
        return loss

    def hidden_loss(self, student: PreTrainedModel, batch: dict[str, torch.Tensor], teacher: Any) -> Any:
        d = self.distill
        t_states, signal = teacher
        s_states, last = states_at(student, batch, [s for s, _ in self.pairs])
        hidden = hidden_state_loss(s_states, t_states, self.projections, d.loss)
        loss, parts = d.weight * hidden, {"hidden": float(hidden.detach())}
        if d.kd_weight + d.ce_weight > 0:
            logit = configured_loss(last, head_for(student, self.vocab), signal, batch["labels_flat"], d)
            # without a teacher signal (kd_weight 0) the helper returns the bare CE: weight it here
            loss = loss + (logit.loss if signal is not None else d.ce_weight * logit.loss)
            parts.update(kd=logit.kd, ce=logit.ce)
        return loss, parts

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        with torch.no_grad():
            t_states, t_last = states_at(self.teacher, inputs, [t for _, t in self.pairs])
            signal = self.teacher_logits(t_last) if self.distill.kd_weight > 0 else None
        loss, parts = self.through_student(model, self.hidden_loss, inputs, (t_states, signal))
        self.meter(int(inputs["attention_mask"].sum()), **parts)
        return (loss, None) if return_outputs else loss


def make_trainer(inputs: DistillInputs) -> HiddenStatesTrainer:
    """The trainer with teacher, layer map and projections ready; vocabularies and map checked first."""
    require_rows(inputs)
    teacher, vocab = load_teacher(inputs)
    pairs = layer_map(inputs, teacher)
    projections = make_projections(inputs.model.config.hidden_size, teacher.config.hidden_size, len(pairs))
    trainer = self_collated_trainer(
        HiddenStatesTrainer, inputs, examples(inputs), Collator(inputs.tokenizer.pad_token_id)
    )
    trainer.distill, trainer.pairs = inputs.options, pairs
    trainer.attach_teacher(teacher, vocab)
    if projections is not None:
        trainer.projections = projections.to(trainer.args.device)
    return trainer


def train(inputs: DistillInputs) -> TrainResult:
    """Match the mapped layers and the logits of the teacher, in place; projections are dropped after."""
    trainer = make_trainer(inputs)
    return run(trainer, inputs, trainer.model, len(inputs.rows))
