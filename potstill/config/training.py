"""What the student is and how it learns from the teacher: student and distill sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from potstill.config.base import Section


class StudentConfig(Section):
    """The student model and its distillation training (TRL SFTTrainer, loss on the label only)."""

    model: str = Field(
        "pruned-teacher",
        description="`pruned-teacher` (a copy of the teacher with `layers` kept) or any causal LM as a "
        "local folder or hub id.",
    )
    layers: list[int] | None = Field(
        default_factory=lambda: [*range(14), 29],
        description="Teacher layers the pruned student keeps, in order (null: all). Default: first 14, last.",
    )
    epochs: float = Field(1.0, gt=0, description="Training epochs over the accepted teacher labels.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    batch_size: int = Field(16, ge=1, description="Rows per optimizer step.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_length: int | None = Field(
        None,
        ge=8,
        description="Student prompt + answer tokens; longer rows are cut from the prompt's start (null: 96 "
        "for closed kinds, 320 for generative ones, whose answers are sentences or chains of thought).",
    )
    response: Literal["full", "answer"] = Field(
        "full",
        description="What a math student learns to write: `full` (the teacher's chain of thought ending in "
        "`#### N`) or `answer` (`#### N` alone). step_by_step always teaches the answer on the label task "
        "and the chain of thought as the rationale task. Other kinds: the teacher's answer as it is.",
    )
    max_new_tokens: int = Field(
        128, ge=1, description="Longest answer a generative student writes (evaluation, serving)."
    )
    bf16: bool = Field(False, description="bf16 autocast (GPU only; TRL's default assumes a GPU).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (GPU-sized models).")
    use_cpu: bool = Field(True, description="Train on CPU even when an accelerator is visible.")
    logging_steps: int = Field(10, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    num_processes: int = Field(
        1,
        ge=1,
        description="Training processes (ranks). >1: the train step runs `accelerate launch` with this many "
        "ranks (potstill/training/launch.py); batch_size stays the global batch and must divide evenly.",
    )
    accelerate_config: str | None = Field(
        None,
        description="accelerate config file for num_processes > 1 (e.g. infra/accelerate/fsdp2.yaml); "
        "null: DDP (`--multi_gpu`; over gloo on CPU with use_cpu).",
    )

    def for_kind(self, kind: Any) -> StudentConfig:
        """These settings with `max_length` resolved for a task kind (a `potstill.kinds.Kind`)."""
        if self.max_length is not None:
            return self
        return self.model_copy(update={"max_length": 96 if kind.fixed_labels else 320})

    @field_validator("layers")
    @classmethod
    def _layers_unique(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("must keep at least one layer")
            if len(set(v)) != len(v) or any(i < 0 for i in v):
                raise ValueError(f"must be distinct non-negative layer indices, got {v}")
        return v


Divergence = Literal["forward_kl", "reverse_kl", "jsd", "tv"]


class LoraSettings(Section):
    """LoRA adapters (peft) for any method: only the adapters train, merged into the saved student."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters: `all-linear` (all but the LM head) or names."
    )


class SftOptions(Section):
    """`sft`: cross-entropy on the teacher's label tokens (nothing to set beyond `student:`)."""


class StepByStepOptions(Section):
    """`step_by_step` (Hsieh et al. 2023): the label task and a `[rationale] ` task on the teacher's
    explanation; inference uses the label task only."""

    label_weight: float = Field(
        1.0, gt=0, description="Weight of the label task (the one used at inference)."
    )
    rationale_weight: float = Field(1.0, ge=0, description="Weight of the rationale task.")
    rationale_max_length: int = Field(
        256, ge=8, description="Prompt + rationale tokens of the rationale task (longer: cut)."
    )
    chunk_size: int = Field(256, ge=1, description="Positions per LM-head chunk (memory: chunk × vocab).")


class LogitOptions(Section):
    """What every logit method shares: the divergence to the teacher's distribution and its weights."""

    divergence: Divergence = Field(
        "forward_kl", description="forward_kl | reverse_kl | jsd (with beta) | tv (total variation)."
    )
    beta: float = Field(
        0.5, ge=0.0, le=1.0, description="Generalized JSD mix (jsd): 0 forward, 1 reverse KL."
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of both sides (loss times T²).")
    kd_weight: float = Field(1.0, ge=0, description="Weight of the divergence to the teacher.")
    ce_weight: float = Field(
        0.0, ge=0, description="Weight of cross-entropy on the teacher's label tokens beside the divergence."
    )
    chunk_size: int = Field(256, ge=1, description="Positions per LM-head chunk (memory: chunk × vocab).")

    @model_validator(mode="after")
    def _something_to_train(self) -> LogitOptions:
        if self.kd_weight + self.ce_weight <= 0 and not isinstance(self, HiddenStatesOptions):
            raise ValueError("kd_weight and ce_weight are both 0: nothing would be trained")
        return self


class LogitOfflineOptions(LogitOptions):
    """`logit_offline`: the teacher's stored top-k log-probabilities (+ tail) at the answer positions."""

    missing_signals: Literal["error", "label"] = Field(
        "error",
        description="A training row with no stored teacher signal stops the run (error) or trains on its "
        "label alone (label). The retrain flow uses `label` for the rows it carries over from the "
        "champion's train_set, whose signals belong to an earlier labeling.",
    )


class LogitOnlineOptions(LogitOptions):
    """`logit_online`: the teacher in memory, its full-vocabulary distribution at the answer positions."""


class HiddenStatesOptions(LogitOptions):
    """`hidden_states`: matched layer outputs (learned projections when widths differ) plus the logit loss."""

    layer_map: list[tuple[int, int]] | None = Field(
        None,
        description="[student_layer, teacher_layer] pairs of decoder layers whose outputs are matched (null: "
        "each layer of a pruned-teacher student to the layer it was cut from, else evenly spaced with last "
        "to last).",
    )
    loss: Literal["mse", "cosine"] = Field(
        "cosine", description="Distance of (projected) student and teacher hidden states."
    )
    weight: float = Field(1.0, ge=0, description="Weight of the hidden-state loss.")

    @model_validator(mode="after")
    def _layer_map(self) -> HiddenStatesOptions:
        if self.weight + self.kd_weight + self.ce_weight <= 0:
            raise ValueError("weight, kd_weight and ce_weight are all 0: nothing would be trained")
        if self.layer_map is not None:
            if not self.layer_map:
                raise ValueError("layer_map must name at least one [student, teacher] pair (or be null)")
            if any(s < 0 or t < 0 for s, t in self.layer_map):
                raise ValueError(f"layer_map entries must be layer indices >= 0, got {self.layer_map}")
            students = [s for s, _ in self.layer_map]
            if len(set(students)) != len(students):
                raise ValueError(f"layer_map maps a student layer twice: {self.layer_map}")
        return self


class OnPolicyOptions(Section):
    """`on_policy`: TRL's DistillationTrainer, generalized JSD on the student's own generations."""

    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="Mapped onto TRL's generalized JSD beta (0 forward, 1 reverse KL)."
    )
    beta: float = Field(0.5, ge=0.0, le=1.0, description="jsd: the mix (0 forward, 1 reverse KL).")
    temperature: float = Field(1.0, gt=0, description="Sampling and softmax temperature.")
    lmbda: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of batches on the student's own generations; the others use the teacher's label "
        "as the completion (GKD's lambda; 1: fully on-policy, TRL's behaviour).",
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="Longest student generation in tokens during training (null: 8 for closed kinds, whose "
        "answer is a label word; `student.max_new_tokens` for generative kinds).",
    )


Method = Literal["sft", "step_by_step", "logit_offline", "logit_online", "hidden_states", "on_policy"]
METHOD_OPTIONS: dict[str, type[Section]] = {
    "sft": SftOptions,
    "step_by_step": StepByStepOptions,
    "logit_offline": LogitOfflineOptions,
    "logit_online": LogitOnlineOptions,
    "hidden_states": HiddenStatesOptions,
    "on_policy": OnPolicyOptions,
}


class DistillConfig(Section):
    """How the student learns from the teacher (potstill/training/methods/): the method, its own section
    of options (TRL style: one config per trainer), and LoRA. Training length, batch size, learning rate
    and precision come from `student`."""

    method: Method = Field(
        "sft",
        description="`sft`: cross-entropy on the teacher's label; `step_by_step`: label + teacher rationale "
        "as two tasks; `logit_offline`: the stored top-k teacher log-probs; `logit_online`: the teacher in "
        "memory, full vocabulary; `hidden_states`: matched layers + logits; `on_policy`: TRL's "
        "DistillationTrainer on the student's own generations. Logit and hidden-state methods need the "
        "teacher's vocabulary.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sft: SftOptions = Field(default_factory=SftOptions)
    step_by_step: StepByStepOptions = Field(default_factory=StepByStepOptions)
    logit_offline: LogitOfflineOptions = Field(default_factory=LogitOfflineOptions)
    logit_online: LogitOnlineOptions = Field(default_factory=LogitOnlineOptions)
    hidden_states: HiddenStatesOptions = Field(default_factory=HiddenStatesOptions)
    on_policy: OnPolicyOptions = Field(default_factory=OnPolicyOptions)

    @property
    def options(self) -> Section:
        """The selected method's own section."""
        return getattr(self, self.method)

    def with_options(self, **update: object) -> DistillConfig:
        """A copy with fields of the selected method's section replaced (e.g. missing_signals)."""
        return self.model_copy(update={self.method: self.options.model_copy(update=update)})
