"""Task-tuning a small teacher on NLI with explanations (e-SNLI), so it is worth distilling from.

SmolLM2-135M-Instruct alone is near chance on NLI (DESIGN.md: 23% on ConjNLI dev), which makes every
distillation method look alike. Fine-tuning it on e-SNLI pairs with their human explanation gives a
teacher that, after the teacher prompt, answers ` <label>` (scored on label words exactly like any
teacher) and then `\\nExplanation: <text>` (a rationale it can generate for step-by-step distillation).

The loss is the weighted sum of two means over the completion: the label tokens (everything before the
first newline) and the explanation tokens (newline, text, EOS). Averaging them separately keeps the
one- or two-token label from drowning in the ~20 explanation tokens; the label decides accuracy.

The held-out split is by premise: e-SNLI pairs three hypotheses with each premise, and a premise seen in
training makes its held-out hypotheses easier, so no held-out premise is ever trained on.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from potstill.prompts import PromptTemplate, label_completion
from potstill.training.methods.common import ForwardLogs

EXPLANATION_PREFIX = "\nExplanation:"
META_FILE = "teacher_tuning.json"


@dataclass(frozen=True)
class TuningSettings:
    """Everything that decides the tuned weights: its digest keys the cache of a tuned teacher."""

    rows: int | None = 1200  # training rows (null: every non-held-out row)
    holdout: int = 300  # last e-SNLI rows kept out of tuning and distillation (evaluation only)
    epochs: float = 1.0
    learning_rate: float = 1e-4
    batch_size: int = 16
    max_length: int = 128
    warmup_ratio: float = 0.05
    label_weight: float = 1.0
    explanation_weight: float = 1.0
    seed: int = 13

    def digest(self, base: str = "", prompt: str = "") -> str:
        """Short hash of the settings, the base model's identity and the prompt text."""
        payload = json.dumps({"settings": asdict(self), "base": base, "prompt": prompt}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TuningResult:
    steps: int
    examples: int
    seconds: float
    tokens_per_s: float
    first_loss: float
    final_loss: float
    history: list[dict[str, float]]


def explanation_text(text: str | None) -> str:
    """One line of explanation: whitespace collapsed (e-SNLI writes `word .`), never empty."""
    clean = " ".join(str(text or "").split()).replace(" .", ".").replace(" ,", ",")
    return clean or "no explanation given."


def completion_text(label: str, explanation: str | None) -> str:
    """` <label>\\nExplanation: <text>`: the label first, so label scoring reads the same tokens."""
    return label_completion(label) + EXPLANATION_PREFIX + " " + explanation_text(explanation)


def tuning_examples(rows: list[dict[str, Any]], prompt: PromptTemplate) -> list[dict[str, str]]:
    """Prompt-completion pairs for SFTTrainer (it appends EOS to the completion)."""
    return [
        {"prompt": prompt.render(r), "completion": completion_text(r["label"], r.get("explanation"))}
        for r in rows
    ]


def split_holdout(
    rows: list[dict[str, Any]], holdout: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tuning rows, held-out rows): the last `holdout` rows are held out, and every row that shares a
    premise with one of them is dropped from tuning too (no held-out premise is ever trained on)."""
    if holdout <= 0:
        return list(rows), []
    if holdout >= len(rows):
        raise ValueError(f"holdout {holdout} leaves no tuning rows of {len(rows)}")
    held = list(rows[-holdout:])
    premises = {r["premise"] for r in held}
    return [r for r in rows[:-holdout] if r["premise"] not in premises], held


def completion_masks(labels: torch.Tensor, newline_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(label mask, explanation mask) over shifted targets `labels` [B, T] (-100 = no loss): label
    tokens are the completion tokens before the first newline target, the rest is the explanation."""
    keep = labels != -100
    after = torch.cumsum((labels == newline_id) & keep, dim=1) > 0
    return keep & ~after, keep & after


def weighted_completion_loss(
    model: PreTrainedModel,
    inputs: dict[str, torch.Tensor],
    newline_id: int,
    label_weight: float,
    explanation_weight: float,
) -> tuple[torch.Tensor, float, float]:
    """label_weight·mean CE(label tokens) + explanation_weight·mean CE(explanation tokens); the LM head
    runs only at completion positions. Returns (loss, label CE, explanation CE) — the parts detached."""
    hidden = model.get_decoder()(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
    ).last_hidden_state
    labels = inputs["labels"][:, 1:]
    label_mask, expl_mask = completion_masks(labels, newline_id)
    keep = label_mask | expl_mask
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    ce = F.cross_entropy(logits, labels[keep], reduction="none")
    is_label = label_mask[keep]
    zero = ce.sum() * 0.0
    label_ce = ce[is_label].mean() if bool(is_label.any()) else zero
    expl_ce = ce[~is_label].mean() if bool((~is_label).any()) else zero
    loss = label_weight * label_ce + explanation_weight * expl_ce
    return loss, float(label_ce.detach()), float(expl_ce.detach())


class TeacherTuningTrainer(SFTTrainer):
    """SFTTrainer with the weighted label/explanation loss; logs both parts and tokens/s."""

    def __init__(
        self, *args: Any, newline_id: int, label_weight: float, explanation_weight: float, **kw: Any
    ):
        super().__init__(*args, **kw)
        self._newline_id, self._weights = newline_id, (label_weight, explanation_weight)
        self._tokens, self._clock = 0, time.perf_counter()
        self._parts: list[tuple[float, float]] = []

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        loss, label_ce, expl_ce = weighted_completion_loss(model, inputs, self._newline_id, *self._weights)
        self._tokens += int(inputs["attention_mask"].sum())
        self._parts.append((label_ce, expl_ce))
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            logs["tokens_per_s"] = round(self._tokens / max(now - self._clock, 1e-9), 1)
            if self._parts:
                logs["label_ce"] = sum(p[0] for p in self._parts) / len(self._parts)
                logs["explanation_ce"] = sum(p[1] for p in self._parts) / len(self._parts)
            self._tokens, self._clock, self._parts = 0, now, []
        super().log(logs, start_time)


def as_trainable(model: PreTrainedModel) -> PreTrainedModel:
    """A plain copy of a model whose config still carries a GGUF quantization record (the converted
    package teacher): the Trainer refuses to fine-tune a model it believes is quantized, although its
    weights are dequantized fp32. Models without such a record are returned as they are."""
    if (
        getattr(model.config, "quantization_config", None) is None
        and getattr(model, "hf_quantizer", None) is None
    ):
        return model
    from potstill.training.student import prune_layers

    return prune_layers(model, list(range(int(model.config.num_hidden_layers))))


def tune_teacher(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    prompt: PromptTemplate,
    settings: TuningSettings,
    output_dir: Path,
    logging_steps: int = 5,
    use_cpu: bool = True,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> TuningResult:
    """Fine-tune `model` in place on NLI rows with `label` and `explanation`; returns what happened.

    `model` must be trainable: pass the package teacher through `as_trainable` first."""
    if not rows:
        raise ValueError("no tuning rows")
    if settings.rows is not None:
        rows = rows[: settings.rows]
    newline_ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline_ids) != 1:
        raise ValueError(f"the tokenizer splits a newline into {newline_ids}: cannot find the label end")
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        warmup_steps=settings.warmup_ratio,
        lr_scheduler_type="linear",
        max_length=settings.max_length,
        completion_only_loss=True,
        bf16=False,
        use_cpu=use_cpu,
        optim="adamw_torch_fused",  # the unfused AdamW step is ~15x slower on these AVX2 CPUs
        train_sampling_strategy="group_by_length",
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    model.train()
    trainer = TeacherTuningTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(tuning_examples(rows, prompt)),
        processing_class=tokenizer,
        callbacks=[ForwardLogs(on_log)] if on_log else None,
        newline_id=newline_ids[0],
        label_weight=settings.label_weight,
        explanation_weight=settings.explanation_weight,
    )
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    history = [h for h in trainer.state.log_history if "loss" in h]
    tps = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    return TuningResult(
        steps=out.global_step,
        examples=len(rows),
        seconds=seconds,
        tokens_per_s=sum(tps) / len(tps) if tps else 0.0,
        first_loss=history[0]["loss"] if history else float(out.training_loss),
        final_loss=history[-1]["loss"] if history else float(out.training_loss),
        history=history,
    )


def save_teacher(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path, meta: dict[str, Any]
) -> Path:
    """Write the tuned teacher as a plain transformers folder (+ its tuning record), atomically: a
    half-written folder never looks like a cached teacher."""
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.hf_quantizer = None  # a model first loaded from GGUF refuses save_pretrained otherwise
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
