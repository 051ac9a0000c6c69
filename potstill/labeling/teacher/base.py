"""The one small interface every teacher backend implements: score options, or generate.

Kinds (classification, NLI, multiple choice, math, summarization, chat) are built on these two calls, so
a backend never knows which task it serves and a kind never knows which engine runs it:

- `score`: log p(option | prompt) summed over the option's tokens, for every option of every prompt
  (classification, NLI, multiple choice: no free-running generation);
- `generate`: n samples per prompt with per-token log-probabilities and, when asked, the top-k
  alternatives at each position (math self-consistency, summarization/chat confidence, logit
  distillation signals).

Optional capabilities. `ChoiceGenerator`: `choose` generates constrained to each prompt's options (vLLM's
guided choice), for multiple choice when scoring every option is not wanted. `SignalScorer`:
`score_with_signals` also returns, for every option, the teacher-forced tokens of option + EOS with their
top-k alternatives over the full vocabulary, the signals offline logit distillation stores for a closed
kind. The transformers and vLLM backends have it; an
OpenAI-compatible server gives alternatives as text only, which cannot be put in a student's vocabulary.

Backends: `transformers` (in process; batched, length-sorted, shared-prefix KV reuse), `openai` (any
OpenAI-compatible HTTP server), `vllm` (offline engine, imported only inside its own module).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token: its id (None when the server gives only text), text, log-probability and
    the top-k alternatives as (token id or text, log-probability), best first."""

    token: str
    logprob: float
    token_id: int | None = None
    top: tuple[tuple[int | str, float], ...] = ()


@dataclass(frozen=True)
class Generation:
    """One sampled completion of one prompt."""

    text: str
    tokens: tuple[TokenLogprobs, ...] = field(default=(), repr=False)
    finish_reason: str | None = None

    @property
    def mean_logprob(self) -> float | None:
        return sum(t.logprob for t in self.tokens) / len(self.tokens) if self.tokens else None

    @property
    def min_logprob(self) -> float | None:
        return min(t.logprob for t in self.tokens) if self.tokens else None


@dataclass(frozen=True)
class SamplingSpec:
    max_new_tokens: int = 256
    n: int = 1  # samples per prompt (self-consistency)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_logprobs: int = 0  # k alternatives per position (0: none)
    stop: tuple[str, ...] = ()
    seed: int | None = None


@runtime_checkable
class TeacherBackend(Protocol):
    """`name` identifies the model for caches, lineage and Label Studio's model_version."""

    name: str

    def score(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[float]]:
        """log p(option | prompt) for each option of each prompt; options are appended to the prompt as
        they are (the caller adds the leading space a label word needs)."""
        ...

    def generate(self, prompts: Sequence[str], spec: SamplingSpec) -> list[list[Generation]]:
        """`spec.n` generations for each prompt, in prompt order."""
        ...


@runtime_checkable
class SignalScorer(Protocol):
    """A backend that can score options and return their teacher-forced top-k signals in one pass."""

    def score_with_signals(
        self, prompts: Sequence[str], options: Sequence[Sequence[str]], top_k: int
    ) -> tuple[list[list[float]], list[list[tuple[TokenLogprobs, ...]]]]:
        """(`score`'s log p(option | prompt), and per option the tokens of option + EOS, each with its
        log-probability and top-k alternatives as token ids); the EOS is not part of the score."""
        ...


@runtime_checkable
class ChoiceGenerator(Protocol):
    """A backend that can generate constrained to a list of choices (vLLM's guided choice)."""

    def choose(
        self, prompts: Sequence[str], options: Sequence[Sequence[str]], top_k: int = 0
    ) -> list[Generation]:
        """One greedy generation per prompt whose text is exactly one of that prompt's options (each
        written as `label_completion` writes it, with its leading space), with token log-probabilities."""
        ...
