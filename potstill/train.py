"""Response distillation: train the student on (student prompt -> teacher label) with TRL's SFTTrainer.

The loss is on the label tokens only. Most of the cost of a classification SFT step on CPU is the LM
head over every position (sequence × 49k vocabulary), yet only the label positions have a loss; the
trainer below runs the head only there. Every logging step reports tokens/s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import SFTConfig, SFTTrainer

from potstill.config import StudentConfig
from potstill.prompts import PromptTemplate, label_completion


def sft_examples(rows: list[dict[str, Any]], prompt: PromptTemplate) -> list[dict[str, str]]:
    """Prompt-completion pairs: the student prompt, then ` <label>` (TRL appends EOS)."""
    return [{"prompt": prompt.render(r), "completion": label_completion(r["label"])} for r in rows]


def label_only_loss(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over label tokens, running the LM head only at positions that have a label."""
    hidden = model.get_decoder()(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
    ).last_hidden_state
    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, labels[keep]), int(keep.sum())


class LabelOnlySFTTrainer(SFTTrainer):
    """SFTTrainer whose loss computes logits only where the completion mask has labels."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._tokens = 0
        self._clock = time.perf_counter()

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        loss, _ = label_only_loss(model, inputs)
        self._tokens += int(inputs["attention_mask"].sum())
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            logs["tokens_per_s"] = round(self._tokens / max(now - self._clock, 1e-9), 1)
            self._tokens, self._clock = 0, now
        super().log(logs, start_time)


class _Forward(TrainerCallback):
    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if logs:
            self.fn(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, int | float)})


@dataclass(frozen=True)
class TrainResult:
    steps: int
    examples: int
    seconds: float
    tokens_per_s: float
    final_loss: float
    history: list[dict[str, float]]


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
    """Train in place on accepted teacher labels; returns what happened, with throughput."""
    if not rows:
        raise ValueError("no training rows: every teacher label was routed to review")
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        max_length=cfg.max_length,
        completion_only_loss=True,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=cfg.use_cpu,
        optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length",
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = LabelOnlySFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(sft_examples(rows, prompt)),
        processing_class=tokenizer,
        callbacks=[_Forward(on_log)] if on_log else None,
    )
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    history = [h for h in trainer.state.log_history if "loss" in h]
    tps = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    return TrainResult(
        steps=out.global_step,
        examples=len(rows),
        seconds=seconds,
        tokens_per_s=sum(tps) / len(tps) if tps else 0.0,
        final_loss=history[-1]["loss"] if history else float(out.training_loss),
        history=history,
    )
