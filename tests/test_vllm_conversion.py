"""The vLLM backend's conversion of vLLM outputs to our records.

vLLM itself is NOT run here (no CPU wheel, and it conflicts with this stack's pins). These tests build
objects shaped like vLLM's public output types (vllm.outputs.RequestOutput / CompletionOutput and
vllm.logprobs.Logprob, as documented at docs.vllm.ai) by hand and check the pure conversion functions;
the engine calls in `VLLMBackend` are exercised only on a GPU host with vLLM installed.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field

import pytest

from potstill.labeling.teacher.vllm_backend import (
    generation_from_vllm,
    generations_from_vllm,
    option_logprob_from_vllm,
    token_logprobs_from_vllm,
)


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput (fields we read)
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput (fields we read)
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


def test_vllm_is_not_imported_by_the_module():
    """Importing the backend module (and load_backend's package) must not need vLLM."""
    assert "vllm" not in sys.modules
    importlib.import_module("potstill.labeling.teacher")
    assert "vllm" not in sys.modules


def test_sample_logprobs_with_sampled_token_outside_top_k():
    # k=2: each position holds the top 2 plus the sampled token when it ranks lower (vLLM's behaviour)
    logprobs = [
        {5: Logprob(-0.1, 1, " yes"), 9: Logprob(-2.5, 2, " no")},
        {7: Logprob(-0.7, 1, "!"), 3: Logprob(-0.9, 2, "."), 11: Logprob(-3.0, 6, "?")},
    ]
    out = CompletionOutput(0, " yes?", [5, 11], -3.1, logprobs, "length")
    gen = generation_from_vllm(out, k=2)
    assert gen.text == " yes?" and gen.finish_reason == "length"
    assert [t.token_id for t in gen.tokens] == [5, 11]
    assert [t.token for t in gen.tokens] == [" yes", "?"]
    assert [t.logprob for t in gen.tokens] == [-0.1, -3.0]
    assert gen.tokens[0].top == ((5, -0.1), (9, -2.5))
    assert gen.tokens[1].top == ((7, -0.7), (3, -0.9))  # the sampled token is not among the top 2
    assert gen.mean_logprob == pytest.approx(-1.55)


def test_no_logprobs_requested_gives_text_only_and_k0_gives_no_alternatives():
    assert generation_from_vllm(CompletionOutput(0, "hi", [1], None, None, "stop"), k=0).tokens == ()
    out = CompletionOutput(0, "a", [4], -0.2, [{4: Logprob(-0.2, 1, "a")}], "stop")
    (tok,) = generation_from_vllm(out, k=0).tokens
    assert tok.top == () and tok.logprob == -0.2


def test_missing_sampled_token_is_an_error():
    with pytest.raises(ValueError, match="sampled token"):
        token_logprobs_from_vllm([4], [{5: Logprob(-0.1, 1, "b")}], k=1)


def test_samples_in_index_order():
    outs = [CompletionOutput(i, t, [i], None, None, "stop") for i, t in ((1, "b"), (0, "a"), (2, "c"))]
    req = RequestOutput("r", "p", [1, 2], None, outs)
    assert [g.text for g in generations_from_vllm(req, k=0)] == ["a", "b", "c"]


def test_option_logprob_sums_prompt_logprobs_after_the_prompt():
    # prompt tokens [10, 11] + option tokens [12, 13]; prompt_logprobs=0 still includes the actual token
    plps = [
        None,
        {11: Logprob(-1.0, 3)},
        {12: Logprob(-0.5, 1)},
        {13: Logprob(-0.25, 2), 99: Logprob(-0.2, 1)},
    ]
    req = RequestOutput("r", None, [10, 11, 12, 13], plps, [CompletionOutput(0, "x", [1], None, None)])
    assert option_logprob_from_vllm(req, option_start=2) == pytest.approx(-0.75)
    assert option_logprob_from_vllm(req, option_start=1) == pytest.approx(-1.75)
    with pytest.raises(ValueError):
        option_logprob_from_vllm(req, option_start=0)  # the first token has no logprob
    with pytest.raises(ValueError):
        option_logprob_from_vllm(RequestOutput("r", None, [1, 2], None), option_start=1)


def test_engine_arguments_from_params_reach_vllm(monkeypatch):
    """`teacher.vllm` in params.yaml becomes vllm.LLM's arguments (tensor parallelism, context length,
    memory share, max_logprobs raised to top_logprobs). vLLM cannot run here: a STAND-IN `vllm` module
    (a mock, named as such) records what the backend passes to `vllm.LLM`."""
    import types

    from potstill.config import validate
    from potstill.labeling.teacher import load_backend

    seen: dict = {}

    class StandInLLM:  # mock of vllm.LLM: records its arguments only
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def get_tokenizer(self):
            return None

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=StandInLLM))
    cfg = validate(
        {
            "teacher": {
                "model": "some/teacher",
                "backend": "vllm",
                "store_signals": True,
                "top_logprobs": 32,
                "vllm": {
                    "tensor_parallel_size": 4,
                    "max_model_len": 8192,
                    "gpu_memory_utilization": 0.85,
                    "engine": {"enforce_eager": True},
                },
            }
        }
    )
    load_backend(cfg.teacher.backend_settings())
    assert seen["model"] == "some/teacher" and seen["max_logprobs"] == 32
    assert seen["tensor_parallel_size"] == 4 and seen["max_model_len"] == 8192
    assert seen["gpu_memory_utilization"] == 0.85 and seen["enforce_eager"] is True


def test_guided_choice_in_both_vllm_spellings_and_multiple_choice_labeled_by_it(monkeypatch):
    """`teacher.vllm.guided_choice`: vLLM cannot run here. A STAND-IN `vllm` (a mock, named as such)
    records the SamplingParams the backend builds and answers the first option; the constraint is spelt
    `structured_outputs` on vLLM >= 0.11 and `guided_decoding` before."""
    import math
    import types

    from potstill.config import validate
    from potstill.kinds import KindSpec, label_rows
    from potstill.labeling.teacher import load_backend
    from potstill.labeling.teacher.vllm_backend import choice_constraint
    from potstill.prompts import PromptTemplate
    from tasks.label import kind_spec

    new = types.SimpleNamespace(StructuredOutputsParams=lambda choice: ("structured", tuple(choice)))
    old = types.SimpleNamespace(GuidedDecodingParams=lambda choice: ("guided", tuple(choice)))
    assert choice_constraint(new, ["a", "b"]) == {"structured_outputs": ("structured", ("a", "b"))}
    assert choice_constraint(old, ["a", "b"]) == {"guided_decoding": ("guided", ("a", "b"))}
    with pytest.raises(ValueError, match="guided choice"):
        choice_constraint(types.SimpleNamespace(), ["a"])

    sent: list = []

    class StandInTokenizer:  # mock: one token per character
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    class StandInLLM:  # mock of vllm.LLM: answers each request with its first allowed choice
        def __init__(self, **kwargs):
            pass

        def get_tokenizer(self):
            return StandInTokenizer()

        def generate(self, prompts, params, use_tqdm=False):
            sent.extend(params)
            outs = []
            for i, p in enumerate(params):
                text = p.kwargs["structured_outputs"][1][0]
                lps = [{ord(c): Logprob(-0.1)} for c in text]
                done = CompletionOutput(0, text, [ord(c) for c in text], None, lps, "stop")
                outs.append(RequestOutput(str(i), prompts[i], [], None, [done]))
            return outs

    class StandInSamplingParams:  # mock of vllm.SamplingParams: keeps its arguments
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    sampling = types.SimpleNamespace(StructuredOutputsParams=lambda choice: ("structured", tuple(choice)))
    fake = types.SimpleNamespace(
        LLM=StandInLLM, SamplingParams=StandInSamplingParams, sampling_params=sampling
    )
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    cfg = validate({"teacher": {"model": "some/teacher", "backend": "vllm", "vllm": {"guided_choice": True}}})
    assert "guided_choice" not in cfg.teacher.backend_settings()  # a labeling setting, not an engine one
    spec = kind_spec(cfg.teacher, "multiple_choice", [])
    assert spec.guided_choice and spec.digest_payload()["guided_choice"] is True
    assert "guided_choice" not in KindSpec(kind="multiple_choice").digest_payload()  # old caches stay valid
    backend = load_backend(cfg.teacher.backend_settings())
    rows = [{"id": 1, "text": "Capital of France?", "choices": ["Paris", "Rome"]}]
    template = PromptTemplate("t", "Q: {text}\nChoices: {choices_text}\nA:")
    (item,) = label_rows(backend, rows, template, spec)
    assert item.record["label"] == "Paris" and item.record["label_index"] == 0
    assert item.record["confidence"] == pytest.approx(math.exp(-0.1 * len(" Paris")))
    assert item.record["distribution"] is None and item.record["parse_error"] is False
    assert sent[0].kwargs["structured_outputs"] == ("structured", (" Paris", " Rome"))
    assert sent[0].kwargs["temperature"] == 0.0 and sent[0].kwargs["max_tokens"] == len(" Paris") + 1
