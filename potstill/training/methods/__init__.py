"""Distillation methods, one module each, selected by `distill.method`; `train(inputs)` is the one entry.

Each method is a TRL trainer subclass with its own `compute_loss`. Method modules are imported when they
are picked, so a run pays only for its own method's imports (peft, the on-policy trainer, ...).
"""

from __future__ import annotations

from potstill.training.methods.common import TrainResult
from potstill.training.methods.inputs import DistillInputs
from potstill.training.methods.vocab import LOGIT_METHODS, check_vocab

__all__ = ["LOGIT_METHODS", "DistillInputs", "TrainResult", "check_vocab", "train"]


def train(inputs: DistillInputs) -> TrainResult:
    """Train the student in place with `inputs.distill.method`."""
    method = inputs.distill.method
    if method == "sft":
        from potstill.training.methods.sft import train as run
    elif method == "step_by_step":
        from potstill.training.methods.step_by_step import train as run
    elif method == "logit_offline":
        from potstill.training.methods.logit_offline import train as run
    elif method == "logit_online":
        from potstill.training.methods.logit_online import train as run
    elif method == "hidden_states":
        from potstill.training.methods.hidden_states import train as run
    elif method == "on_policy":
        from potstill.training.methods.on_policy import train as run
    else:
        raise ValueError(f"unknown distill.method {method!r}")
    return run(inputs)
