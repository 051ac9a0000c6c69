"""Closed kinds: classification, NLI and multiple choice, all labeled by scoring options, never generating.

Each option is scored as `" " + option` after the rendered prompt (`backend.score`), and the summed
log-probabilities are normalised over the row's options: the argmax is the label, its probability the
confidence, and the whole distribution is kept. Scoring instead of generating means the answer is always
one of the options, so a closed kind only has a parse error when the row itself is unusable (a missing
prompt field, fewer than two choices).

With `spec.top_logprobs` > 0 the chosen option's teacher-forced tokens (" <option>" then EOS, each with
its top-k alternatives over the full vocabulary) travel with the record (`Labeled.tokens`), read from the
scoring forward itself (`SignalScorer.score_with_signals`), so `potstill.labeling.shards` stores them as
signals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from potstill.kinds.common import KindSpec, Labeled, normalise, ok, parse_failure, render
from potstill.labeling.teacher.base import ChoiceGenerator, SignalScorer, TeacherBackend, TokenLogprobs
from potstill.prompts import PromptError, PromptTemplate, label_completion

NLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _usable_rows(
    template: PromptTemplate, rows: Sequence[dict[str, Any]], options: Sequence[Sequence[str] | str]
) -> tuple[list[Labeled | None], list[int], list[str]]:
    """(records so far: the parse failures of unusable rows, None elsewhere; the indices of the usable
    rows; their rendered prompts). A str in `options` is that row's parse-error reason."""
    out: list[Labeled | None] = [None] * len(rows)
    todo: list[int] = []
    prompts: list[str] = []
    for i, (row, opts) in enumerate(zip(rows, options, strict=True)):
        prompt = render(template, row) if not isinstance(opts, str) else None
        if isinstance(opts, str):
            out[i] = parse_failure(row, opts, distribution=None)
        elif isinstance(prompt, PromptError):
            out[i] = parse_failure(row, f"prompt: {prompt}", distribution=None)
        else:
            todo.append(i)
            prompts.append(prompt)
    return out, todo, prompts


def _score_rows(
    backend: TeacherBackend,
    template: PromptTemplate,
    rows: Sequence[dict[str, Any]],
    options: Sequence[Sequence[str] | str],
    top_k: int = 0,
) -> list[Labeled]:
    """Score each row's options (a str in `options` is that row's parse-error reason); with `top_k` the
    chosen option's teacher-forced signals come along."""
    out, todo, prompts = _usable_rows(template, rows, options)
    if todo:
        completions = [[label_completion(o) for o in options[i]] for i in todo]
        forced: list[list[tuple[TokenLogprobs, ...]]] = [[] for _ in todo]
        if top_k:
            if not isinstance(backend, SignalScorer):
                raise ValueError(
                    f"teacher signals for a closed kind need token-id top-k alternatives, which the "
                    f"{type(backend).__name__} backend cannot give; use the transformers or vllm backend, "
                    "or turn teacher.store_signals off"
                )
            scored, forced = backend.score_with_signals(prompts, completions, top_k)
        else:
            scored = backend.score(prompts, completions)
        for n, (i, logps) in enumerate(zip(todo, scored, strict=True)):
            opts = list(options[i])
            try:
                probs = normalise(logps)
            except ValueError as exc:
                out[i] = parse_failure(rows[i], f"scores: {exc}", distribution=None)
                continue
            best = max(range(len(opts)), key=lambda j: probs[j])
            record = {
                **rows[i],
                "label": opts[best],
                "confidence": probs[best],
                "distribution": dict(zip(opts, probs, strict=True)),
            }
            out[i] = ok(record, forced[n][best] if top_k else ())
    return [o for o in out if o is not None]


def _choose_rows(
    backend: TeacherBackend,
    template: PromptTemplate,
    rows: Sequence[dict[str, Any]],
    options: Sequence[Sequence[str] | str],
    top_k: int = 0,
) -> list[Labeled]:
    """Multiple choice by guided generation (`teacher.vllm.guided_choice`): the teacher writes one of the
    row's options; the confidence is exp(sum of its token log-probabilities), the probability of the
    whole option, and no distribution over the others exists. An answer that is none of the options (a
    backend ignoring the constraint) is a parse error."""
    if not isinstance(backend, ChoiceGenerator):
        raise ValueError(
            f"teacher.vllm.guided_choice needs a backend that generates constrained to choices (vllm); "
            f"{type(backend).__name__} cannot"
        )
    out, todo, prompts = _usable_rows(template, rows, options)
    if todo:
        completions = [[label_completion(o) for o in options[i]] for i in todo]
        generations = backend.choose(prompts, completions, top_k)
        for i, gen in zip(todo, generations, strict=True):
            opts = list(options[i])
            text = " ".join(gen.text.split())
            if text not in opts:
                out[i] = parse_failure(rows[i], f"guided choice wrote {gen.text!r}, none of {opts}")
                continue
            confidence = math.exp(sum(t.logprob for t in gen.tokens)) if gen.tokens else 0.0
            record = {**rows[i], "label": text, "confidence": confidence, "distribution": None}
            out[i] = ok(record, gen.tokens if top_k else ())
    return [o for o in out if o is not None]


def label_classification(
    backend: TeacherBackend, rows: Sequence[dict[str, Any]], template: PromptTemplate, spec: KindSpec
) -> list[Labeled]:
    """Fixed label set from the catalog entry (`spec.labels`)."""
    if len(spec.labels) < 2:
        raise ValueError(f"{spec.kind} needs at least two labels, got {spec.labels}")
    return _score_rows(backend, template, rows, [spec.labels] * len(rows), spec.top_logprobs)


def label_nli(
    backend: TeacherBackend, rows: Sequence[dict[str, Any]], template: PromptTemplate, spec: KindSpec
) -> list[Labeled]:
    """Premise/hypothesis pairs; the labels default to entailment/neutral/contradiction."""
    labels = spec.labels or NLI_LABELS
    return _score_rows(backend, template, rows, [labels] * len(rows), spec.top_logprobs)


def choice_options(row: dict[str, Any], field: str = "choices") -> list[str] | str:
    """The row's choices, or the reason they are unusable (fewer than two, duplicates, not a list)."""
    choices = row.get(field)
    if not isinstance(choices, list | tuple) or len(choices) < 2:
        return f"row needs a list of at least two {field!r}, got {choices!r}"
    opts = [" ".join(str(c).split()) for c in choices]
    if any(not o for o in opts) or len(set(opts)) != len(opts):
        return f"choices must be distinct and non-empty: {opts}"
    return opts


def format_choices(options: Sequence[str]) -> str:
    """`A. first B. second ...`: the `{choices_text}` a template can show (templates flatten newlines)."""
    return " ".join(f"{CHOICE_LETTERS[i]}. {o}" for i, o in enumerate(options))


def label_multiple_choice(
    backend: TeacherBackend, rows: Sequence[dict[str, Any]], template: PromptTemplate, spec: KindSpec
) -> list[Labeled]:
    """Choices come from each row; each choice's text is scored and the confidence is normalised over
    that row's choices only. `label` is the chosen text, `label_index` its position (letters are then a
    presentation detail of the student prompt)."""
    options = [choice_options(r, spec.choices_field) for r in rows]
    shown = [
        {**r, "choices_text": format_choices(o)} if not isinstance(o, str) else r
        for r, o in zip(rows, options, strict=True)
    ]
    if spec.guided_choice:
        labeled = _choose_rows(backend, template, shown, options, spec.top_logprobs)
    else:
        labeled = _score_rows(backend, template, shown, options, spec.top_logprobs)
    for item, opts in zip(labeled, options, strict=True):
        item.record.pop("choices_text", None)
        if not item.record["parse_error"] and not isinstance(opts, str):
            item.record["label_index"] = opts.index(item.record["label"])
    return labeled
