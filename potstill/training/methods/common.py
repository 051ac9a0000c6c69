"""What every distillation method shares: trainer arguments, tokens/s and loss-part logging, DDP-safe custom
losses, LoRA wrapping and merging, and the run that turns a trainer into a `TrainResult`.

Every method is a TRL trainer subclass with its own `compute_loss`; the pieces here keep them from
drifting apart in the parts that must agree: all of them honour `student.use_cpu`/`student.bf16` (a DDP
run under `accelerate launch` needs both right), log the same keys, and save a plain merged model.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback
from trl.models.utils import _ForwardRedirection

from potstill.config.training import LogitOptions
from potstill.training.losses import LossParts, TeacherSignal, distillation_loss
from potstill.training.methods.inputs import DistillInputs

T = TypeVar("T", bound=Trainer)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    examples: int
    seconds: float
    tokens_per_s: float
    final_loss: float
    history: list[dict[str, float]]
    method: str = field(default="sft")


class ForwardLogs(TrainerCallback):
    """Hands every logging step's numbers to a plain callback (the Prefect task logs them to MLflow)."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if logs:
            self.fn(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, int | float)})


def trainer_kwargs(inputs: DistillInputs) -> dict[str, Any]:
    """TrainingArguments fields common to every method, from `student:` (CPU-safe: TRL's defaults assume
    a GPU, and without `use_cpu` the ranks of a multi-process run would silently train alone)."""
    cfg = inputs.student
    return {
        "output_dir": str(inputs.output_dir),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.learning_rate,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "warmup_steps": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "lr_scheduler_type": "linear",
        "bf16": cfg.bf16,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "use_cpu": cfg.use_cpu,
        "optim": "adamw_torch_fused",  # ~17x faster optimizer step than the default on AVX2-only CPUs
        "logging_steps": cfg.logging_steps,
        "save_strategy": "no",
        "report_to": "none",
        "seed": inputs.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


def custom_data_kwargs() -> dict[str, Any]:
    """SFTConfig fields for methods that tokenize and collate themselves (extra columns must survive)."""
    return {
        "remove_unused_columns": False,
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "train_sampling_strategy": "group_by_length",  # reads the dataset's `length` column
    }


_redirect = _ForwardRedirection()


class MeteredMixin:
    """Mixin for a TRL trainer: tokens/s and the mean loss parts (`kd_loss`, `ce_loss`, `hidden_loss`, ...)
    of every logging step, and a DDP-safe way to run a custom loss function on the student."""

    accelerator: Any

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._meter_tokens = 0
        self._meter_clock = time.perf_counter()
        self._meter_parts: dict[str, list[float]] = defaultdict(list)

    def meter(self, tokens: int, **parts: float) -> None:
        """Count the tokens a step processed and remember its loss parts (detached floats)."""
        self._meter_tokens += int(tokens)
        for name, value in parts.items():
            self._meter_parts[name].append(float(value))

    def through_student(self, model: Any, fn: Callable[..., Any], *args: Any) -> Any:
        """Call `fn(unwrapped_student, *args)` through the DDP/FSDP wrapper's forward when there is one, so
        gradients are synchronised even though the loss calls the backbone and head directly."""
        inner = self.accelerator.unwrap_model(model)
        if inner is model:
            return fn(model, *args)
        return _redirect(model, inner, fn, inner, *args)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            logs["tokens_per_s"] = round(self._meter_tokens / max(now - self._meter_clock, 1e-9), 1)
            for name, values in self._meter_parts.items():
                logs[f"{name}_loss"] = sum(values) / len(values)
            self._meter_tokens, self._meter_clock = 0, now
            self._meter_parts.clear()
        super().log(logs, start_time)  # type: ignore[misc]


def with_lora(model: PreTrainedModel, inputs: DistillInputs) -> PreTrainedModel:
    """The student wrapped in LoRA adapters when `distill.lora.enabled` (else the model itself)."""
    lora = inputs.distill.lora
    if not lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    wrapped = get_peft_model(model, config)
    if inputs.student.gradient_checkpointing:
        wrapped.enable_input_require_grads()
    return wrapped


def merge_lora(trained: Any, original: PreTrainedModel) -> PreTrainedModel:
    """Fold LoRA adapters into the weights in place, so the saved student is a plain full model that
    `Classifier.load`, the registry and the vLLM export read without peft."""
    if trained is original:
        return original
    merged = trained.merge_and_unload()
    if merged is not original:  # peft merges into the wrapped model object; keep callers' reference valid
        original.load_state_dict(merged.state_dict())
    for p in original.parameters():
        p.requires_grad_(True)
    return original


def run(trainer: Trainer, inputs: DistillInputs, trained: Any, examples: int) -> TrainResult:
    """Train, merge LoRA back, put the student in eval mode and summarise what happened."""
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    merge_lora(trained, inputs.model)
    inputs.model.eval()
    history = [h for h in trainer.state.log_history if "loss" in h]
    tps = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    return TrainResult(
        steps=out.global_step,
        examples=examples,
        seconds=seconds,
        tokens_per_s=sum(tps) / len(tps) if tps else 0.0,
        final_loss=history[-1]["loss"] if history else float(out.training_loss),
        history=history,
        method=inputs.distill.method,
    )


def callbacks(inputs: DistillInputs) -> list[TrainerCallback] | None:
    return [ForwardLogs(inputs.on_log)] if inputs.on_log else None


def require_rows(inputs: DistillInputs) -> None:
    if not inputs.rows:
        raise ValueError("no training rows: every teacher label was routed to review")


def self_collated_trainer(
    cls: type[T], inputs: DistillInputs, rows: list[dict[str, Any]], collator: Any, **extra: Any
) -> T:
    """A TRL SFT trainer of class `cls` for a method that tokenizes and collates its own `rows`: the
    shared arguments, LoRA when configured, tokens/s logging. `extra` goes to the trainer's constructor."""
    from datasets import Dataset
    from trl import SFTConfig

    args = SFTConfig(**trainer_kwargs(inputs), max_length=inputs.student.max_length, **custom_data_kwargs())
    return cls(
        model=with_lora(inputs.model, inputs),
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=collator,
        processing_class=inputs.tokenizer,
        callbacks=callbacks(inputs),
        **extra,
    )


def configured_loss(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    signal: TeacherSignal | None,
    labels: torch.Tensor,
    d: LogitOptions,
) -> LossParts:
    """`distillation_loss` with the divergence, β, temperature, weights and chunk size of the method's
    section of `distill:` (logit_offline, logit_online, hidden_states)."""
    return distillation_loss(
        hidden,
        lm_head,
        signal,
        divergence=d.divergence,
        beta=d.beta,
        temperature=d.temperature,
        labels=labels,
        kd_weight=d.kd_weight,
        ce_weight=d.ce_weight,
        chunk_size=d.chunk_size,
    )


def completion_hidden(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], prefix: str = ""
) -> torch.Tensor:
    """The student's last hidden states at the loss positions [N, H] (LM head not applied)."""
    hidden = model.get_decoder()(
        input_ids=batch[f"{prefix}input_ids"],
        attention_mask=batch[f"{prefix}attention_mask"],
        use_cache=False,
    ).last_hidden_state
    return hidden[batch[f"{prefix}rows"], batch[f"{prefix}cols"]]


def load_teacher(inputs: DistillInputs) -> tuple[PreTrainedModel, int]:
    """The teacher of an online method, frozen in eval mode, and the vocabulary size logits are compared
    over; the vocabulary check runs here, before any training step."""
    from potstill.models import load_model
    from potstill.training.methods.vocab import check_vocab

    method = inputs.distill.method
    if not inputs.teacher_model:
        raise ValueError(f"distill.method {method} loads the teacher in memory: set teacher.model")
    teacher, teacher_tok = load_model(inputs.teacher_model)
    shared = check_vocab(inputs.model, teacher, inputs.tokenizer, teacher_tok, method)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher, int(shared if shared is not None else teacher.config.vocab_size)
