"""Whether a run of a served deployment may use the parameters it was given: a pure decision.

`potstill deploy` serves each deployment with the project and run config resolved when it started. Anyone
who can create flow runs on the Prefect server can also give a run other parameters: another `project`
(code and data elsewhere on the machine), another `teacher.openai.base_url` (where prompts, and with a key
bound to it, the key would go), another `teacher.model`. A served run may differ from what was served only
in the settings of `OVERRIDABLE`; anything else is refused before the run reads a file. To change more,
restart `potstill deploy` with new `-o` overrides: the serving process's own command line is the authority,
not the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Set by `potstill deploy` to the file naming what each deployment serves (its flow-run processes inherit it).
SERVED_CONFIG_ENV = "POTSTILL_SERVED_CONFIG"

# Dotted settings of the run config a deployment run may change (sizes and review waiting: nothing that
# chooses code, hosts, models, files or credentials).
OVERRIDABLE: frozenset[str] = frozenset(
    {
        "data.max_prompts",
        "data.max_eval_rows",
        "review.wait",
        "review.timeout_s",
        "student.max_steps",
        "retrain.max_steps",
    }
)


@dataclass(frozen=True)
class DeploymentCheck:
    allowed: bool
    reasons: list[str] = field(default_factory=list)


def changed_settings(served: Any, given: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested mappings (a key on one side only counts)."""
    if isinstance(served, Mapping) and isinstance(given, Mapping):
        out: list[str] = []
        for key in sorted(set(served) | set(given), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            out += changed_settings(served.get(key), given.get(key), path)
        return out
    return [] if served == given else [prefix or "(the whole config)"]


def check_deployment_run(
    served_project: str,
    served_params: Mapping[str, Any],
    project: str | None,
    params: Mapping[str, Any] | None,
    overridable: frozenset[str] = OVERRIDABLE,
) -> DeploymentCheck:
    reasons = []
    if project != served_project:
        reasons.append(f"project {project!r} is not the served project {served_project!r}")
    refused = [k for k in changed_settings(served_params, params or {}) if k not in overridable]
    if refused:
        reasons.append(
            f"it changes {', '.join(refused)}; a deployment run may change only "
            f"{', '.join(sorted(overridable))} (restart `potstill deploy` with -o overrides for the rest)"
        )
    return DeploymentCheck(not reasons, reasons)
