"""What every kind shares: the labeling spec, the labeled-record shape, and the parse-error convention.

A row the teacher's output cannot be read for is never dropped: it comes back as a record with
`parse_error: True`, a `parse_error_reason` and confidence 0, so routing sends it to review and the
validation suite can bound the failure rate (the `parse_error` column of `potstill.data.expectations`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from potstill.labeling.teacher.base import TokenLogprobs
from potstill.prompts import PromptError, PromptTemplate


@dataclass(frozen=True)
class KindSpec:
    """How to label: one object for every kind, so the shard runner and the Prefect task pass one thing.

    `samples` and `temperature` matter for math self-consistency (n samples, majority vote); free-text
    kinds use `samples=1` greedy. `top_logprobs` > 0 asks the backend for top-k alternatives per answer
    token (teacher signals for logit distillation): per generated token for open kinds, and for closed
    kinds per token of the chosen option + EOS, teacher-forced in the scoring forward.
    """

    kind: str = "classification"
    labels: tuple[str, ...] = ()
    samples: int = 1
    temperature: float = 0.7  # used only when samples > 1; one sample is greedy
    max_new_tokens: int = 256
    top_logprobs: int = 0
    seed: int | None = 0
    stop: tuple[str, ...] = ()  # generation stops here (e.g. the next few-shot "\n\nQuestion:")
    choices_field: str = "choices"  # multiple choice: the row field holding the list of choices
    guided_choice: bool = False  # multiple choice: generate constrained to the options (a ChoiceGenerator)

    def digest_payload(self) -> dict[str, Any]:
        """Everything that changes the labels, for run-folder and cache keys."""
        return {
            "kind": self.kind,
            "labels": list(self.labels),
            "samples": self.samples,
            "temperature": self.temperature if self.samples > 1 else 0.0,
            "max_new_tokens": self.max_new_tokens,
            "top_logprobs": self.top_logprobs,
            "seed": self.seed,
            "stop": list(self.stop),
            "choices_field": self.choices_field,
            **({"guided_choice": True} if self.guided_choice else {}),  # absent: old run folders stay valid
        }


@dataclass
class Labeled:
    """One labeled row: the record that goes into `teacher_labels`, and the tokens of the teacher's
    answer (with top-k alternatives when asked) that `potstill.labeling.signals` can store beside it."""

    record: dict[str, Any]
    tokens: tuple[TokenLogprobs, ...] = field(default=(), repr=False)


def parse_failure(row: dict[str, Any], reason: str, **extra: Any) -> Labeled:
    """The record for a row whose output could not be read: kept, confidence 0, routed to review."""
    return Labeled({**row, "label": None, "confidence": 0.0, **extra, **_flag(reason)})


def _flag(reason: str | None) -> dict[str, Any]:
    return {"parse_error": reason is not None, "parse_error_reason": reason}


def ok(record: dict[str, Any], tokens: Sequence[TokenLogprobs] = ()) -> Labeled:
    return Labeled({**record, **_flag(None)}, tuple(tokens))


def render(template: PromptTemplate, row: dict[str, Any]) -> str | PromptError:
    """The full prompt, or the error (a row missing a field is a per-row failure, not a crash)."""
    try:
        return template.render(row)
    except PromptError as exc:
        return exc


def normalise(logps: Sequence[float]) -> list[float]:
    """Softmax of summed option log-probabilities: p(option | prompt, one of these options)."""
    top = max(logps)
    if not math.isfinite(top):
        raise ValueError(f"no option has a finite log-probability: {list(logps)}")
    exps = [math.exp(v - top) for v in logps]
    total = sum(exps)
    return [e / total for e in exps]


def routing_confidence(record: dict[str, Any]) -> float:
    """The confidence routing should use: 0 for a parse error whatever the record says, so an unreadable
    row is always the first candidate for review."""
    if record.get("parse_error") is True or record.get("confidence") is None:
        return 0.0
    return float(record["confidence"])
