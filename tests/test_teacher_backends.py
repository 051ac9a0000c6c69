"""Teacher backends against references: the transformers backend on the tiny Llama (real SmolLM2
tokenizer) against naive one-prompt-at-a-time forward passes, `score_labels` and `model.generate`; the
openai backend against a real llama.cpp server (infra/llama-cpp/server.sh) serving the packaged SmolLM2,
checked against the transformers backend on the same weights, plus retry/timeout/secret handling
against a small local HTTP stub."""

from __future__ import annotations

import contextlib
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import torch

from potstill.labeling.scoring import score_labels
from potstill.labeling.teacher import TeacherBackend, load_backend
from potstill.labeling.teacher.base import SamplingSpec
from potstill.labeling.teacher.openai_backend import OpenAIBackend, TeacherHTTPError
from potstill.labeling.teacher.transformers_backend import TransformersBackend

PREFIX = "Classify the sentiment of each review.\nReview: a dull film.\nSentiment: negative\n"
BODIES = [
    "Review: great fun.\nSentiment:",
    "Review: boring and long, far too long.\nSentiment:",
    "Review: ok\nSentiment:",
]


def naive_logprob(model, ids: list[int], start: int) -> float:
    """Sum of log p(ids[t] | ids[:t]) for t >= start, one sequence, no batching or cache."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))


@pytest.fixture(scope="module")
def backend(tiny_model, tokenizer) -> TransformersBackend:
    return TransformersBackend(tiny_model, tokenizer, name="tiny", batch_size=2)


def test_protocol_and_repr(backend):
    assert isinstance(backend, TeacherBackend)
    assert "tiny" in repr(backend)


def test_score_matches_naive_reference(backend, tiny_model, tokenizer):
    prompts = [PREFIX + b for b in BODIES]
    options = [[" negative", " positive"], [" neutral", " very positive indeed", " no"], [" positive"]]
    got = backend.score(prompts, options)
    for p, opts, row in zip(prompts, options, got, strict=True):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        for o, value in zip(opts, row, strict=True):
            o_ids = tokenizer(o, add_special_tokens=False)["input_ids"]
            assert value == pytest.approx(naive_logprob(tiny_model, p_ids + o_ids, len(p_ids)), abs=1e-4)
    no_reuse = TransformersBackend(tiny_model, tokenizer, batch_size=8, reuse_prefix=False)
    for a, b in zip(got, no_reuse.score(prompts, options), strict=True):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("labels", [["negative", "positive"], ["negative", "mildly positive"]])
def test_score_agrees_with_score_labels(backend, tiny_model, tokenizer, labels):
    enc = tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
    for b in BODIES:  # precondition: prefix and body tokenize the same apart as together
        assert (
            enc + tokenizer(b, add_special_tokens=False)["input_ids"]
            == tokenizer(PREFIX + b, add_special_tokens=False)["input_ids"]
        )
    ref = score_labels(tiny_model, tokenizer, PREFIX, BODIES, labels, batch_size=2)
    got = backend.score([PREFIX + b for b in BODIES], [[" " + lab for lab in labels]] * len(BODIES))
    for r, row in zip(ref, got, strict=True):
        probs = torch.softmax(torch.tensor(row, dtype=torch.float64), dim=0).tolist()
        assert probs == pytest.approx([r.distribution[lab] for lab in labels], abs=1e-5)


def test_generate_greedy_matches_model_generate_and_naive_logprobs(backend, tiny_model, tokenizer):
    prompts = ["Review: great fun.\nSentiment:", "The capital of France is", "1, 2, 3,"]
    spec = SamplingSpec(max_new_tokens=6, top_logprobs=3)
    gens = backend.generate(prompts, spec)
    assert [len(g) for g in gens] == [1, 1, 1]
    for prompt, (gen,) in zip(prompts, gens, strict=True):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ref = tiny_model.generate(
            torch.tensor([p_ids]), max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )[0, len(p_ids) :].tolist()
        ids = [t.token_id for t in gen.tokens]
        assert ids == ref[: len(ids)]
        assert gen.finish_reason == ("length" if len(ids) == 6 else "stop")
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(torch.tensor([p_ids + ids])).logits[0].float(), dim=-1)
        for s, tok in enumerate(gen.tokens):
            row = logp[len(p_ids) + s - 1]
            assert tok.logprob == pytest.approx(float(row[tok.token_id]), abs=1e-4)
            vals, idx = row.topk(3)
            assert [a for a, _ in tok.top] == idx.tolist()
            assert [v for _, v in tok.top] == pytest.approx(vals.tolist(), abs=1e-4)
            assert tok.top[0][0] == tok.token_id  # greedy picks the best alternative
        assert gen.text == tokenizer.decode(ids, skip_special_tokens=True)


def test_generate_samples_n_with_seed_and_naive_logprobs(backend, tiny_model, tokenizer):
    prompts = ["Once upon a time", "Hello"]
    spec = SamplingSpec(max_new_tokens=5, n=3, temperature=1.0, seed=7)
    gens = backend.generate(prompts, spec)
    assert [len(g) for g in gens] == [3, 3]
    assert gens == backend.generate(prompts, spec)  # same seed, same samples
    assert len({tuple(t.token_id for t in g.tokens) for g in gens[0]}) > 1  # random weights: samples differ
    for prompt, samples in zip(prompts, gens, strict=True):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for gen in samples:
            ids = [t.token_id for t in gen.tokens]
            total = naive_logprob(tiny_model, p_ids + ids, len(p_ids))
            assert sum(t.logprob for t in gen.tokens) == pytest.approx(total, abs=1e-3)


def test_generate_stop_string_is_cut(backend, tokenizer):
    (free,) = backend.generate(["1, 2, 3,"], SamplingSpec(max_new_tokens=8))[0:1]
    stop = free[0].text[2:4]
    if not stop.strip():
        pytest.skip("the tiny model's continuation has no usable stop string")
    (cut,) = backend.generate(["1, 2, 3,"], SamplingSpec(max_new_tokens=8, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and free[0].text.startswith(cut.text)


def test_load_backend_transformers(tiny_model_dir):
    b = load_backend({"backend": "transformers", "model": str(tiny_model_dir), "batch_size": 4})
    assert isinstance(b, TransformersBackend) and b.batch_size == 4


# ---- openai backend: retries, timeouts and secrets against a local stub


class _Stub(BaseHTTPRequestHandler):
    script: ClassVar[list[tuple[int, dict]]] = []
    seen: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"auth": self.headers.get("Authorization"), "body": body})
        status, payload = type(self).script.pop(0) if type(self).script else (500, {"error": "empty"})
        if status == 0:  # hang past the client's timeout
            threading.Event().wait(1.0)
            status = 200
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client timed out and hung up: the test's point
            self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    _Stub.script, _Stub.seen = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


COMPLETION = {"choices": [{"index": 0, "text": " hi", "finish_reason": "length", "logprobs": None}]}


def test_openai_retries_429_and_5xx_then_succeeds(stub, monkeypatch):
    monkeypatch.setenv("POTSTILL_TEACHER_API_KEY", "sk-secret-123")
    _Stub.script = [(429, {"error": "slow down"}), (503, {"error": "busy"}), (200, COMPLETION)]
    b = OpenAIBackend(stub, "m", max_retries=3, backoff_s=0.01, timeout_s=5)
    (gens,) = b.generate(["x"], SamplingSpec(max_new_tokens=1))
    assert gens[0].text == " hi"
    assert len(_Stub.seen) == 3
    assert _Stub.seen[0]["auth"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(b)


def test_openai_gives_up_without_leaking_the_key(stub, monkeypatch):
    monkeypatch.setenv("POTSTILL_TEACHER_API_KEY", "sk-secret-123")
    _Stub.script = [(500, {"error": "sk-secret-123 boom"})] * 3
    b = OpenAIBackend(stub, "m", max_retries=2, backoff_s=0.01, timeout_s=5)
    with pytest.raises(TeacherHTTPError) as err:
        b.generate(["x"], SamplingSpec(max_new_tokens=1))
    assert len(_Stub.seen) == 3
    assert "sk-secret" not in str(err.value) and "sk-secret" not in repr(err.value)


def test_a_key_where_the_error_body_is_cut_does_not_leak_its_start(stub, monkeypatch):
    """The body is quoted up to 300 characters; cut before redaction, a key across the cut kept its start."""
    key = "sk-secret-abcdefghijklmnop"
    monkeypatch.setenv("POTSTILL_TEACHER_API_KEY", key)
    filler = "x" * (300 - len('{"error": "') - 10)  # the key begins 10 characters before the cut
    _Stub.script = [(400, {"error": filler + key})]
    b = OpenAIBackend(stub, "m", max_retries=0, backoff_s=0.01, timeout_s=5)
    with pytest.raises(TeacherHTTPError) as err:
        b.generate(["x"], SamplingSpec(max_new_tokens=1))
    assert "sk-secret" not in str(err.value) and "***" in str(err.value)


def test_the_key_goes_only_to_the_hosts_the_environment_binds_it_to(stub, monkeypatch):
    """`teacher.openai.base_url` is config (a deployment parameter can set it); the key is bound to hosts in
    the environment, loopback by default: a base URL elsewhere fails before any request, naming the host."""
    key = "sk-secret-bound-123"
    monkeypatch.setenv("POTSTILL_TEACHER_API_KEY", key)
    monkeypatch.delenv("POTSTILL_TEACHER_API_HOSTS", raising=False)
    with pytest.raises(TeacherHTTPError, match=r"is on collector\.example: the key is not sent") as err:
        OpenAIBackend("http://collector.example:8000/v1", "m")
    assert key not in str(err.value) and "POTSTILL_TEACHER_API_HOSTS" in str(err.value)
    _Stub.script = [(200, COMPLETION)]
    OpenAIBackend(stub, "m", max_retries=0).generate(["x"], SamplingSpec(max_new_tokens=1))
    assert _Stub.seen[-1]["auth"] == f"Bearer {key}"  # loopback: sent
    monkeypatch.setenv("POTSTILL_TEACHER_API_HOSTS", "teacher.internal, vllm-openai")
    OpenAIBackend("http://vllm-openai:8000/v1", "m").close()  # listed: accepted (no request made here)
    with pytest.raises(TeacherHTTPError, match=r"bound to teacher\.internal, vllm-openai"):
        OpenAIBackend(stub, "m")  # a list replaces the loopback default
    monkeypatch.delenv("POTSTILL_TEACHER_API_KEY")
    OpenAIBackend("http://collector.example:8000/v1", "m").close()  # no key, nothing to leak


def test_openai_timeout_is_retried(stub):
    _Stub.script = [(0, COMPLETION), (200, COMPLETION)]
    b = OpenAIBackend(stub, "m", max_retries=1, backoff_s=0.01, timeout_s=0.3)
    assert b.generate(["x"], SamplingSpec(max_new_tokens=1))[0][0].text == " hi"
    _Stub.script = [(400, {"error": "bad"})]
    with pytest.raises(TeacherHTTPError, match="400"):  # client errors are not retried
        b.generate(["x"], SamplingSpec(max_new_tokens=1))


# ---- openai backend against a real llama.cpp server


def test_llama_cpp_score_matches_transformers(llama_cpp_server, smollm_folder):
    """Echo scoring through /v1/completions agrees with the in-process model on the same weights
    (Q4_1 GGUF there, dequantized to fp32 here: llama.cpp's kernels differ, so a small tolerance).
    The test server prepends BOS (see the fixture), so the reference conditions on it too."""
    remote = OpenAIBackend(llama_cpp_server.base_url, llama_cpp_server.model, max_concurrency=2)
    local = TransformersBackend.from_spec(str(smollm_folder))
    prompts = [PREFIX + b for b in BODIES]
    options = [[" negative", " positive"], [" negative", " positive", " neutral stuff"], [" positive"]]
    got = remote.score(prompts, options)
    ref = local.score(["<|im_start|>" + p for p in prompts], options)
    print("llama.cpp", got, "transformers", ref)
    for a, b in zip(got, ref, strict=True):
        assert a == pytest.approx(b, abs=0.2)
        if len(a) > 1:
            assert max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)


def test_llama_cpp_generate_with_logprobs(llama_cpp_server):
    b = OpenAIBackend(llama_cpp_server.base_url, llama_cpp_server.model, max_concurrency=2)
    spec = SamplingSpec(max_new_tokens=5, top_logprobs=3)
    gens = b.generate(["The capital of France is", "1, 2, 3,"], spec)
    assert [len(g) for g in gens] == [1, 1]
    for (gen,) in gens:
        assert 1 <= len(gen.tokens) <= 5 and gen.text
        assert "".join(t.token for t in gen.tokens) == gen.text
        for t in gen.tokens:
            assert t.logprob <= 0 and len(t.top) >= 1
            assert all(isinstance(a, str) and v <= 1e-6 for a, v in t.top)
            assert math.isclose(max(v for _, v in t.top), t.top[0][1])
    again = b.generate(["The capital of France is"], spec)
    assert again[0][0].text == gens[0][0].text  # greedy is deterministic
    samples = b.generate(["Hello"], SamplingSpec(max_new_tokens=4, n=2, temperature=1.0, seed=1))
    assert len(samples[0]) == 2


def test_llama_cpp_chat_generate(llama_cpp_server):
    b = OpenAIBackend(llama_cpp_server.base_url, llama_cpp_server.model, chat=True)
    (gens,) = b.generate(["Say hi."], SamplingSpec(max_new_tokens=4, top_logprobs=2))
    assert gens[0].text and gens[0].tokens and gens[0].tokens[0].top


def test_generate_static_cache_matches_dynamic(backend, tiny_model, tokenizer):
    static = TransformersBackend(tiny_model, tokenizer, batch_size=2, cache_implementation="static")
    prompts = ["Once upon a time", "1, 2, 3,", "Hello there, how"]
    spec = SamplingSpec(max_new_tokens=4, top_logprobs=2)
    for a, b in zip(backend.generate(prompts, spec), static.generate(prompts, spec), strict=True):
        assert [t.token_id for t in a[0].tokens] == [t.token_id for t in b[0].tokens]
        assert [t.logprob for t in a[0].tokens] == pytest.approx([t.logprob for t in b[0].tokens], abs=1e-4)


def test_openai_first_token_score_mode_reads_top_alternatives(stub):
    top = {" positive": -0.2, " negative": -1.8}
    lp = {"tokens": [" positive"], "token_logprobs": [-0.2], "top_logprobs": [top], "text_offset": [5]}
    _Stub.script = [(200, {"choices": [{"index": 0, "text": " positive", "logprobs": lp}]})]
    b = OpenAIBackend(stub, "m", score_mode="first_token")
    (row,) = b.score(["x"], [[" negative", " positive", " neutral"]])
    assert row == [-1.8, -0.2, -math.inf]
    assert _Stub.seen[0]["body"]["logprobs"] == 20 and "echo" not in _Stub.seen[0]["body"]


def test_label_task_through_the_openai_backend_on_llama_cpp(
    prefect_api, llama_cpp_server, tmp_path, monkeypatch
):
    """`teacher.backend: openai` in the run config: the label task scores through the real server."""
    from potstill.config import TeacherConfig
    from potstill.prompts import PromptTemplate
    from tasks.label import label_with_teacher

    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path))  # fresh shard folders
    cfg = TeacherConfig(
        model=llama_cpp_server.model,
        backend="openai",
        openai={"base_url": llama_cpp_server.base_url, "score_mode": "first_token", "max_concurrency": 2},
    )
    prompt = PromptTemplate("t", "Review: a great film.\nSentiment: positive\n\nReview:{text}\nSentiment:")
    rows = [{"id": f"r{i}", "text": t} for i, t in enumerate(["a wonderful movie", "dull and tedious"])]
    from prefect import flow

    @flow
    def label() -> dict:
        return label_with_teacher(rows, cfg, prompt, "classification", ["negative", "positive"], "test")

    out = label()
    assert [r["id"] for r in out["rows"]] == ["r0", "r1"]
    for r in out["rows"]:
        assert r["label"] in ("negative", "positive") and 0.5 <= r["confidence"] <= 1
        assert sum(r["distribution"].values()) == pytest.approx(1.0)
    assert math.isnan(out["params"])  # a server's weights are not ours to count
