"""Keys of older `params.yaml` files: each one still works from its new place, or fails at start naming it.

The config used to be flat per section (one `distill:` bag for six methods, one `teacher:` bag for three
backends) and held what is now the task's own declaration (kind, prompts, data entries). A key that
moved one-to-one is moved before validation with a warning; a key whose meaning moved into the task
declaration stops the run with the place to put it.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from potstill.config.base import ConfigError


class ConfigMovedWarning(UserWarning):
    """An old key was read from its new place."""


_TASK_FILE = "catalog/tasks/<task>.yaml"
MOVED_TO_TASK = {
    "data.prompts": "the task's prompts file: declare a task with `potstill task new NAME --prompts FILE "
    "--gold FILE ...` and select it with `task: NAME` (or --task NAME)",
    "data.gold": "the task's gold file: declare a task with `potstill task new NAME --prompts FILE "
    "--gold FILE ...` and select it with `task: NAME` (or --task NAME)",
    "data.eval_rows": "`demo: {eval_rows: N}` in catalog/tasks/polarity.yaml (only the demo builds a split)",
    "teacher.kind": f"`kind:` in {_TASK_FILE}",
    "teacher.prompt": f"`templates: {{teacher: FILE}}` in {_TASK_FILE}",
    "teacher.rationale_prompt": f"`templates: {{rationale: FILE}}` in {_TASK_FILE}",
    "student.prompt": f"`templates: {{student: FILE}}` in {_TASK_FILE}",
}
RENAMED = {
    **{f"teacher.{k}": f"teacher.transformers.{k}" for k in ("batch_size", "reuse_prefix_cache", "device",
                                                             "compile")},
    **{f"teacher.{k}": f"teacher.openai.{k}" for k in ("base_url", "max_concurrency", "timeout_s",
                                                       "max_retries", "score_mode", "chat")},
    "teacher.ray_address": "teacher.ray.address",
    "teacher.num_gpus": "teacher.ray.num_gpus",
    "teacher.num_cpus": "teacher.ray.num_cpus",
    "distill.lora_r": "distill.lora.r",
    "distill.lora_alpha": "distill.lora.alpha",
    "distill.lora_dropout": "distill.lora.dropout",
    "distill.lora_target_modules": "distill.lora.target_modules",
    "distill.label_weight": "distill.step_by_step.label_weight",
    "distill.rationale_weight": "distill.step_by_step.rationale_weight",
    "distill.rationale_max_length": "distill.step_by_step.rationale_max_length",
    "distill.missing_signals": "distill.logit_offline.missing_signals",
    "distill.layer_map": "distill.hidden_states.layer_map",
    "distill.hidden_loss": "distill.hidden_states.loss",
    "distill.hidden_weight": "distill.hidden_states.weight",
    "distill.lmbda": "distill.on_policy.lmbda",
    "distill.max_new_tokens": "distill.on_policy.max_new_tokens",
}  # fmt: skip
_LOGIT = ("logit_offline", "logit_online", "hidden_states")
# A flat key every method with that option read: copied into each of their sections.
SHARED = {
    "teacher.dtype": ("teacher.transformers", "teacher.vllm"),
    "distill.divergence": (*(f"distill.{m}" for m in _LOGIT), "distill.on_policy"),
    "distill.beta": (*(f"distill.{m}" for m in _LOGIT), "distill.on_policy"),
    "distill.temperature": (*(f"distill.{m}" for m in _LOGIT), "distill.on_policy"),
    "distill.kd_weight": tuple(f"distill.{m}" for m in _LOGIT),
    "distill.ce_weight": tuple(f"distill.{m}" for m in _LOGIT),
    "distill.chunk_size": (*(f"distill.{m}" for m in _LOGIT), "distill.step_by_step"),
}


def _pop(raw: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    section, _, key = dotted.partition(".")
    node = raw.get(section)
    if isinstance(node, dict) and key in node and not isinstance(node[key], dict):
        return True, node.pop(key)
    return False, None


def _put(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a nested key unless the file sets it at its new place already (the new place wins)."""
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return
    node.setdefault(last, value)


def migrate(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the config with one-to-one moves applied, a note per moved key); raises ConfigError for keys
    that now belong to the task declaration."""
    out = copy.deepcopy(raw)
    stops = []
    for old, where in MOVED_TO_TASK.items():
        found, _ = _pop(out, old)
        if found:
            stops.append(f"{old}: moved to {where}")
    if stops:
        raise ConfigError("invalid run config:\n  " + "\n  ".join(stops))
    notes = []
    distill = out.get("distill")
    if isinstance(distill, dict) and isinstance(distill.get("lora"), bool):
        distill["lora"] = {"enabled": distill["lora"]}
        notes.append("distill.lora: true/false is now distill.lora.enabled")
    for old, new in RENAMED.items():
        found, value = _pop(out, old)
        if found:
            _put(out, new, value)
            notes.append(f"{old} is now {new}")
    for old, sections in SHARED.items():
        found, value = _pop(out, old)
        if found:
            for section in sections:
                if section == "distill.on_policy" and old == "distill.divergence" and value == "tv":
                    continue  # on_policy has no total variation; it keeps its own default
                _put(out, f"{section}.{old.rsplit('.', 1)[1]}", value)
            notes.append(
                f"{old} is now set in each of: {', '.join(s + '.' + old.split('.')[1] for s in sections)}"
            )
    for note in notes:
        warnings.warn(
            f"run config: {note} (read from the old key this time)", ConfigMovedWarning, stacklevel=3
        )
    return out, notes
