"""Free-text kinds: summarization and chat. The teacher's greedy output is the label.

There is no option set to normalise over, so confidence comes from the output's own token
log-probabilities: `confidence = exp(mean log p)` (the geometric-mean token probability, comparable
across lengths) and `confidence_min = exp(min log p)` (the least sure token: one invented name in an
otherwise fluent summary shows up here, not in the mean). Both log-probabilities are stored so routing
can use either. An empty output is a parse error; a backend that returns no log-probabilities gives
confidence 0 (unknown is treated as unsure) with `mean_logprob: None`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from potstill.kinds.common import KindSpec, Labeled, ok, parse_failure, render
from potstill.kinds.math import sampling
from potstill.labeling.teacher.base import Generation, TeacherBackend
from potstill.prompts import PromptError, PromptTemplate


def text_confidence(generation: Generation) -> dict[str, float | None]:
    """mean/min token log-probability and their exponentials (None/0.0 when the backend gave none)."""
    mean, low = generation.mean_logprob, generation.min_logprob
    return {
        "mean_logprob": mean,
        "min_logprob": low,
        "confidence": math.exp(mean) if mean is not None else 0.0,
        "confidence_min": math.exp(low) if low is not None else 0.0,
    }


def label_text(
    backend: TeacherBackend, rows: Sequence[dict[str, Any]], template: PromptTemplate, spec: KindSpec
) -> list[Labeled]:
    """Record fields: `output` and `label` (the same text: `label` is what every kind's student learns),
    `confidence`, `confidence_min`, `mean_logprob`, `min_logprob`, `finish_reason`."""
    prompts = [render(template, r) for r in rows]
    todo = [i for i, p in enumerate(prompts) if not isinstance(p, PromptError)]
    one = replace(spec, samples=1)
    generations = backend.generate([prompts[i] for i in todo], sampling(one)) if todo else []
    by_row = dict(zip(todo, generations, strict=True))
    out = []
    for i, row in enumerate(rows):
        if i not in by_row:
            out.append(parse_failure(row, f"prompt: {prompts[i]}", output=None))
            continue
        gen = by_row[i][0]
        text = gen.text.strip()
        if not text:
            reason = f"empty output (finish_reason={gen.finish_reason})"
            out.append(parse_failure(row, reason, output=None, finish_reason=gen.finish_reason))
            continue
        record = {
            **row,
            "label": text,
            "output": text,
            **text_confidence(gen),
            "finish_reason": gen.finish_reason,
        }
        out.append(ok(record, gen.tokens))
    return out
