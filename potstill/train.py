"""Response distillation with today's signature: `train_student(model, tokenizer, rows, prompt, cfg, ...)`.

The methods themselves live in `potstill.methods` (`distill.method` picks one); this module keeps the
names other code imports (`TrainResult`, `train_student`, `label_only_loss`, ...) and runs `sft`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from potstill.config import DistillConfig, StudentConfig
from potstill.methods.common import ForwardLogs, TrainResult
from potstill.methods.inputs import DistillInputs
from potstill.methods.sft import LabelOnlySFTTrainer, label_only_loss, sft_examples
from potstill.methods.sft import train as train_sft
from potstill.prompts import PromptTemplate

__all__ = [
    "ForwardLogs",
    "LabelOnlySFTTrainer",
    "TrainResult",
    "label_only_loss",
    "sft_examples",
    "train_student",
]


def train_student(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    prompt: PromptTemplate,
    cfg: StudentConfig,
    output_dir: Path,
    seed: int = 13,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train in place on accepted teacher labels (method `sft`); returns what happened, with throughput."""
    inputs = DistillInputs(
        model=model,
        tokenizer=tokenizer,
        rows=rows,
        prompt=prompt,
        student=cfg,
        distill=DistillConfig(),
        output_dir=output_dir,
        seed=seed,
        on_log=on_log,
    )
    return train_sft(inputs)
