"""A teacher on vLLM's offline engine (`vllm.LLM`), for GPU hosts.

vLLM is imported only inside `VLLMBackend.__init__`, so nothing else in potstill needs it: it has no CPU
wheel and pins its own torch/transformers/fastapi, which conflict with this project's stack, so it lives
in its own environment or image (see infra/llama-cpp/README.md, "vLLM"). The conversion of vLLM's outputs
to our records is plain functions over duck-typed objects, unit-tested without vLLM.

- `score` feeds prompt and option token ids (tokenized separately, like the transformers backend) as a
  `TokensPrompt` with `SamplingParams(max_tokens=1, prompt_logprobs=0)` and sums the option positions'
  prompt logprobs; vLLM's automatic prefix caching reuses the shared prefix's KV blocks across requests.
- `score_with_signals` feeds prompt + option + EOS with `prompt_logprobs=k`: vLLM returns the top k (and
  the actual token) at every prompt position, so the option positions and the EOS give the teacher-forced
  signals of a closed kind in the same request.
- `choose` (multiple choice with `teacher.vllm.guided_choice`) generates greedily constrained to each row's
  options: `SamplingParams(structured_outputs=StructuredOutputsParams(choice=...))` on vLLM >= 0.11, the
  older `guided_decoding=GuidedDecodingParams(choice=...)` before (`choice_constraint`), one request each.
- `generate` uses `SamplingParams(n, temperature, top_p, stop, seed, logprobs=k)`; vLLM refuses more than
  `max_logprobs` (20 by default) alternatives, so the engine is built with `max_logprobs` raised to k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from potstill.labeling.teacher.base import Generation, SamplingSpec, TokenLogprobs


def _logprob_value(entry: Any) -> float:
    """vLLM's `Logprob` dataclass (logprob, rank, decoded_token), or a bare float."""
    return float(getattr(entry, "logprob", entry))


def token_logprobs_from_vllm(
    token_ids: Sequence[int], logprobs: Sequence[Mapping[int, Any]] | None, k: int
) -> tuple[TokenLogprobs, ...]:
    """`CompletionOutput.token_ids` + `.logprobs` (one {token id: Logprob} per position, holding the top
    k and the sampled token, which may rank below k) -> our records, alternatives best first."""
    if not logprobs:
        return ()
    out = []
    for tid, pos in zip(token_ids, logprobs, strict=False):
        chosen = pos.get(tid)
        if chosen is None:
            raise ValueError(f"vLLM logprobs hold no entry for the sampled token {tid}")
        ranked = sorted(pos.items(), key=lambda kv: -_logprob_value(kv[1]))
        top = tuple((int(t), _logprob_value(v)) for t, v in ranked[:k]) if k else ()
        text = getattr(chosen, "decoded_token", None) or ""
        out.append(TokenLogprobs(text, _logprob_value(chosen), int(tid), top))
    return tuple(out)


def generation_from_vllm(completion: Any, k: int) -> Generation:
    """One `CompletionOutput` (text, token_ids, logprobs, finish_reason) -> `Generation`."""
    tokens = token_logprobs_from_vllm(list(completion.token_ids), completion.logprobs, k)
    return Generation(completion.text, tokens, completion.finish_reason)


def generations_from_vllm(request_output: Any, k: int) -> list[Generation]:
    """All samples of one `RequestOutput`, in sample index order."""
    outs = sorted(request_output.outputs, key=lambda c: c.index)
    return [generation_from_vllm(c, k) for c in outs]


def option_logprob_from_vllm(request_output: Any, option_start: int) -> float:
    """Sum of the prompt logprobs from `option_start` on: `RequestOutput.prompt_logprobs` has one
    {token id: Logprob} (or None for the first token) per prompt token, including the actual token."""
    ids, plps = list(request_output.prompt_token_ids), request_output.prompt_logprobs
    if plps is None or len(plps) != len(ids):
        raise ValueError("the request output has no prompt logprobs for every prompt token")
    if option_start < 1 or option_start >= len(ids):
        raise ValueError(f"option starts at {option_start}, prompt has {len(ids)} tokens")
    total = 0.0
    for pos in range(option_start, len(ids)):
        entry = plps[pos]
        if entry is None or ids[pos] not in entry:
            raise ValueError(f"no prompt logprob for token {ids[pos]} at position {pos}")
        total += _logprob_value(entry[ids[pos]])
    return total


def forced_tokens_from_vllm(request_output: Any, start: int, k: int) -> tuple[TokenLogprobs, ...]:
    """The prompt positions from `start` on as teacher-forced tokens: each prompt token's logprob and the
    top k of the {token id: Logprob} vLLM keeps there (best first)."""
    ids, plps = list(request_output.prompt_token_ids), request_output.prompt_logprobs
    if plps is None or len(plps) != len(ids):
        raise ValueError("the request output has no prompt logprobs for every prompt token")
    out = []
    for pos in range(start, len(ids)):
        entry = plps[pos]
        if entry is None or ids[pos] not in entry:
            raise ValueError(f"no prompt logprob for token {ids[pos]} at position {pos}")
        ranked = sorted(entry.items(), key=lambda kv: -_logprob_value(kv[1]))[:k]
        chosen = entry[ids[pos]]
        text = getattr(chosen, "decoded_token", None) or ""
        top = tuple((int(t), _logprob_value(v)) for t, v in ranked)
        out.append(TokenLogprobs(text, _logprob_value(chosen), int(ids[pos]), top))
    return tuple(out)


def choice_constraint(sampling_params: Any, choices: Sequence[str]) -> dict[str, Any]:
    """The `SamplingParams` keyword that constrains a generation to `choices`, in the spelling of the
    installed vLLM (`vllm.sampling_params`): `structured_outputs` (>= 0.11) or `guided_decoding`."""
    if hasattr(sampling_params, "StructuredOutputsParams"):
        return {"structured_outputs": sampling_params.StructuredOutputsParams(choice=list(choices))}
    if hasattr(sampling_params, "GuidedDecodingParams"):
        return {"guided_decoding": sampling_params.GuidedDecodingParams(choice=list(choices))}
    raise ValueError("this vLLM has neither StructuredOutputsParams nor GuidedDecodingParams (guided choice)")


class VLLMBackend:
    """A `TeacherBackend` on `vllm.LLM`; extra keyword arguments go to the engine
    (`tensor_parallel_size`, `gpu_memory_utilization`, `max_model_len`, ...)."""

    def __init__(
        self,
        model: str,
        name: str | None = None,
        max_logprobs: int = 20,
        dtype: str = "bfloat16",
        enable_prefix_caching: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        from vllm import LLM  # only here: vLLM is an optional, GPU-side install

        self.name = name or model
        self.max_logprobs = max_logprobs
        self._llm = LLM(
            model=model,
            dtype=dtype,
            max_logprobs=max_logprobs,
            enable_prefix_caching=enable_prefix_caching,
            **engine_kwargs,
        )
        self._tokenizer = self._llm.get_tokenizer()

    def __repr__(self) -> str:
        return f"VLLMBackend(name={self.name!r}, max_logprobs={self.max_logprobs})"

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def score(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompts) != len(options):
            raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
        requests, starts = [], []
        for prompt, opts in zip(prompts, options, strict=True):
            p_ids = self._encode(prompt)
            for opt in opts:
                requests.append(TokensPrompt(prompt_token_ids=p_ids + self._encode(opt)))
                starts.append(len(p_ids))
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outs = self._llm.generate(requests, params, use_tqdm=False)
        flat = iter(option_logprob_from_vllm(o, s) for o, s in zip(outs, starts, strict=True))
        return [[next(flat) for _ in opts] for opts in options]

    def score_with_signals(
        self, prompts: Sequence[str], options: Sequence[Sequence[str]], top_k: int
    ) -> tuple[list[list[float]], list[list[tuple[TokenLogprobs, ...]]]]:
        """`score` plus the teacher-forced top-k signals of option + EOS (see the transformers backend)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompts) != len(options):
            raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
        if top_k > self.max_logprobs:
            raise ValueError(f"top_logprobs={top_k} > max_logprobs={self.max_logprobs}: raise max_logprobs")
        eos = self._tokenizer.eos_token_id
        requests, starts = [], []
        for prompt, opts in zip(prompts, options, strict=True):
            p_ids = self._encode(prompt)
            for opt in opts:
                requests.append(TokensPrompt(prompt_token_ids=p_ids + self._encode(opt) + [eos]))
                starts.append(len(p_ids))
        params = SamplingParams(max_tokens=1, prompt_logprobs=top_k, temperature=0.0)
        outs = self._llm.generate(requests, params, use_tqdm=False)
        flat = iter(forced_tokens_from_vllm(o, s, top_k) for o, s in zip(outs, starts, strict=True))
        tokens = [[next(flat) for _ in opts] for opts in options]
        scores = [[sum(t.logprob for t in seq[:-1]) for seq in per] for per in tokens]  # EOS not scored
        return scores, tokens

    def generate(self, prompts: Sequence[str], spec: SamplingSpec) -> list[list[Generation]]:
        from vllm import SamplingParams

        if spec.top_logprobs > self.max_logprobs:
            raise ValueError(
                f"top_logprobs={spec.top_logprobs} > max_logprobs={self.max_logprobs}: build the backend "
                "with max_logprobs raised (vLLM refuses more than the engine's limit)"
            )
        params = SamplingParams(
            n=spec.n,
            max_tokens=spec.max_new_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            stop=list(spec.stop) or None,
            seed=spec.seed,
            logprobs=spec.top_logprobs,  # k alternatives (+ the sampled token); 0: the sampled token only
        )
        outs = self._llm.generate(list(prompts), params, use_tqdm=False)
        return [generations_from_vllm(o, spec.top_logprobs) for o in outs]

    def choose(
        self, prompts: Sequence[str], options: Sequence[Sequence[str]], top_k: int = 0
    ) -> list[Generation]:
        """One greedy generation per prompt constrained to that prompt's options (guided choice)."""
        import vllm.sampling_params as sp
        from vllm import SamplingParams

        if len(prompts) != len(options):
            raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
        params = [
            SamplingParams(
                max_tokens=max(len(self._encode(o)) for o in opts) + 1,
                temperature=0.0,
                logprobs=top_k,
                **choice_constraint(sp, opts),
            )
            for opts in options
        ]
        outs = self._llm.generate(list(prompts), params, use_tqdm=False)
        return [generation_from_vllm(o.outputs[0], top_k) for o in outs]
