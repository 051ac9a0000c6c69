"""Teacher backends (`base.TeacherBackend`): transformers in process, OpenAI-compatible HTTP, vLLM.

`load_backend` builds one from a config mapping (or a bare model spec), so task kinds and flows never
import a backend module themselves; the vLLM module is imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from potstill.labeling.teacher.base import Generation, SamplingSpec, TeacherBackend, TokenLogprobs

__all__ = ["Generation", "SamplingSpec", "TeacherBackend", "TokenLogprobs", "load_backend"]

_COMMON = ("backend", "model", "name")


def _as_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, str):
        return {"backend": "transformers", "model": config}
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "model_dump"):  # a pydantic config section
        return config.model_dump()
    return dict(vars(config))


def load_backend(config: Any) -> TeacherBackend:
    """A backend from a model spec string (transformers) or a mapping / pydantic section with
    `backend` (transformers | openai | vllm, default transformers), `model`, and backend options:

    - transformers: device, dtype, batch_size, reuse_prefix (or reuse_prefix_cache), cache_implementation,
      compile;
    - openai: base_url (required), max_concurrency, timeout_s, max_retries, backoff_s, chat, score_mode;
      the API key is read from POTSTILL_TEACHER_API_KEY / OPENAI_API_KEY, never from config;
    - vllm: max_logprobs, dtype, and any `vllm.LLM` engine argument under `engine` (a mapping).

    Unknown keys are ignored, so one config section can carry the fields of every backend.
    """
    cfg = _as_dict(config)
    kind = cfg.get("backend") or "transformers"
    model = cfg.get("model")
    if not model:
        raise ValueError("teacher config needs a `model`")
    name = cfg.get("name")

    def pick(*keys: str) -> dict[str, Any]:
        return {k: cfg[k] for k in keys if cfg.get(k) is not None}

    if kind == "transformers":
        from potstill.labeling.teacher.transformers_backend import TransformersBackend

        opts = pick("batch_size", "reuse_prefix", "cache_implementation", "compile")
        if "reuse_prefix" not in opts and cfg.get("reuse_prefix_cache") is not None:
            opts["reuse_prefix"] = cfg["reuse_prefix_cache"]
        device = cfg.get("device") or "cpu"
        return TransformersBackend.from_spec(model, device=device, dtype=cfg.get("dtype"), name=name, **opts)
    if kind == "openai":
        from potstill.labeling.teacher.openai_backend import OpenAIBackend

        if not cfg.get("base_url"):
            raise ValueError("the openai backend needs `base_url` (e.g. http://127.0.0.1:8000/v1)")
        opts = pick("max_concurrency", "timeout_s", "max_retries", "backoff_s", "chat", "score_mode")
        return OpenAIBackend(cfg["base_url"], model, name=name, **opts)
    if kind == "vllm":
        from potstill.labeling.teacher.vllm_backend import VLLMBackend

        opts = pick("max_logprobs", "dtype")
        return VLLMBackend(model, name=name, **opts, **dict(cfg.get("engine") or {}))
    raise ValueError(f"unknown teacher backend {kind!r} (transformers, openai or vllm)")
