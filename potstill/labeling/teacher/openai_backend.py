"""A teacher behind any OpenAI-compatible HTTP endpoint: `vllm serve`, llama.cpp, SGLang, hosted APIs.

Why it looks the way it does:
- Bounded concurrency (a thread pool over one pooled `httpx.Client`): servers batch concurrent requests
  (vLLM, SGLang) or queue them (llama.cpp), and a hosted API rate-limits; unbounded fan-out only buys 429s.
- Retries with exponential backoff and jitter on 429, 5xx, timeouts and dropped connections, honouring
  `Retry-After`; other 4xx are the caller's mistake and fail at once.
- The API key comes from the environment only (`POTSTILL_TEACHER_API_KEY`, else `OPENAI_API_KEY`) and is
  kept out of reprs, logs and exception messages (server error bodies are redacted before quoting). It is
  bound to hosts, also set in the environment (`POTSTILL_TEACHER_API_HOSTS`, comma-separated; loopback
  when unset): `teacher.openai.base_url` is config, which a deployment parameter can change, so a base URL
  on any other host is refused before a request carries the key there.
- `score` uses the legacy completions endpoint with `echo=True, logprobs=1, max_tokens=1`: the server
  returns the log-probability of every prompt token, and the option's tokens are the ones whose text
  offset falls after the prompt. The seam is the server's tokenization of prompt + option together, so a
  token straddling the seam is counted with the option. llama-cpp-python's echo logprobs are one position
  off for models without a BOS token: start it with BOS forced on (infra/llama-cpp/README.md).
  Servers without echo logprobs (llama.cpp's C++ `llama-server`, chat-only hosted APIs) can use
  `score_mode="first_token"`: one request per prompt, reading each option from the top-k alternatives
  of the first generated token (exact for single-token options inside the top k, -inf otherwise; k is
  capped at 20 by most servers).
- `generate` uses completions (raw prompt) or, with `chat=True`, chat completions (the prompt becomes one
  user message and the server applies the chat template). Servers that ignore `n` (llama.cpp) are topped
  up with extra single-sample requests.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from potstill.labeling.teacher.base import Generation, SamplingSpec, TokenLogprobs

API_KEY_ENV = ("POTSTILL_TEACHER_API_KEY", "OPENAI_API_KEY")
KEY_HOSTS_ENV = "POTSTILL_TEACHER_API_HOSTS"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class TeacherHTTPError(RuntimeError):
    """A request the server refused or kept failing; the message never contains the API key."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def api_key_from_env(names: Sequence[str] = API_KEY_ENV) -> str | None:
    """The first non-empty of the given environment variables (the only place a key may come from)."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def key_hosts() -> tuple[str, ...]:
    """The hosts the API key may be sent to: `POTSTILL_TEACHER_API_HOSTS`, else loopback only."""
    listed = tuple(h.strip().lower() for h in os.environ.get(KEY_HOSTS_ENV, "").split(",") if h.strip())
    return listed or LOOPBACK_HOSTS


def check_key_host(base_url: str, hosts: Sequence[str]) -> None:
    """Refuse a base URL whose host the key is not bound to (the message names the host, not the key)."""
    host = (httpx.URL(base_url).host or "").lower()
    if host not in hosts:
        raise TeacherHTTPError(
            f"the teacher API key ({' / '.join(API_KEY_ENV)}) is bound to {', '.join(hosts)}, and "
            f"teacher.openai.base_url {base_url} is on {host or 'no host'}: the key is not sent there. If "
            f"that server is yours, add {host} to {KEY_HOSTS_ENV} (comma-separated) in the environment"
        )


class OpenAIBackend:
    """A `TeacherBackend` over an OpenAI-compatible `/v1` base URL."""

    def __init__(
        self,
        base_url: str,
        model: str,
        name: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        chat: bool = False,
        score_mode: str = "echo",
        api_key_env: Sequence[str] = API_KEY_ENV,
    ) -> None:
        if score_mode not in ("echo", "first_token"):
            raise ValueError(f"score_mode must be 'echo' or 'first_token', not {score_mode!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or f"{model}@{self.base_url}"
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.chat = chat
        self.score_mode = score_mode
        self.__key = api_key_from_env(api_key_env)  # name-mangled, never printed
        if self.__key:
            check_key_host(self.base_url, key_hosts())
        headers = {"Authorization": f"Bearer {self.__key}"} if self.__key else {}
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._client = httpx.Client(headers=headers, timeout=timeout_s, limits=limits)
        self._seed_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, "
            f"max_concurrency={self.max_concurrency}, api_key={'set' if self.__key else 'unset'})"
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- HTTP with retries

    def _redact(self, text: str) -> str:
        return text.replace(self.__key, "***") if self.__key else text

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                resp = self._client.post(url, json=payload)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout_s}s"
            except httpx.TransportError as e:
                last = f"connection failed ({type(e).__name__})"
            else:
                if resp.status_code < 400:
                    return resp.json()
                body = self._redact(resp.text)[:300]  # redact first: a cut key would leak its start
                last = f"HTTP {resp.status_code}: {body}"
                if resp.status_code not in RETRY_STATUS:
                    raise TeacherHTTPError(f"POST {path} failed: {last}", resp.status_code)
                try:
                    retry_after = float(resp.headers.get("Retry-After", ""))
                except ValueError:
                    retry_after = None
            if attempt < self.max_retries:
                wait = self.backoff_s * 2**attempt * (1 + random.random())
                time.sleep(min(retry_after if retry_after is not None else wait, 60.0))
        raise TeacherHTTPError(f"POST {path} failed after {self.max_retries + 1} attempts: {last}")

    def _map(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
        if len(jobs) <= 1 or self.max_concurrency <= 1:
            return [fn(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(jobs))) as pool:
            return list(pool.map(fn, jobs))

    # ---- score

    def score(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[float]]:
        if len(prompts) != len(options):
            raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
        if self.score_mode == "first_token":
            return self._map(
                lambda po: self._score_first_token(*po), list(zip(prompts, options, strict=True))
            )
        jobs = [(p, o) for p, opts in zip(prompts, options, strict=True) for o in opts]
        flat = iter(self._map(lambda po: self._score_echo(*po), jobs))
        return [[next(flat) for _ in opts] for opts in options]

    def _score_echo(self, prompt: str, option: str) -> float:
        payload = {
            "model": self.model,
            "prompt": prompt + option,
            "echo": True,
            "logprobs": 1,
            "max_tokens": 1,  # 0 means "no limit" on llama.cpp; the one generated token is ignored
            "temperature": 0.0,
        }
        lp = self._post("/completions", payload)["choices"][0].get("logprobs")
        if not lp or not lp.get("text_offset"):
            raise TeacherHTTPError(
                "the server returned no prompt logprobs for echo=True (try score_mode='first_token')"
            )
        start, end, total = len(prompt), len(prompt) + len(option), 0.0
        seen = False
        for off, tok, value in zip(lp["text_offset"], lp["tokens"], lp["token_logprobs"], strict=False):
            if off + len(tok) <= start or off >= end:  # prompt tokens, and the generated one
                continue
            if value is None:
                raise TeacherHTTPError(
                    "the server gave no logprob for an option token (is it the first token?)"
                )
            total += float(value)
            seen = True
        if not seen:
            raise TeacherHTTPError("no option tokens in the echoed prompt (did the server echo it?)")
        return total

    def _score_first_token(self, prompt: str, opts: Sequence[str]) -> list[float]:
        payload = {"model": self.model, "prompt": prompt, "max_tokens": 1, "logprobs": 20, "temperature": 0.0}
        lp = self._post("/completions", payload)["choices"][0].get("logprobs") or {}
        top = (lp.get("top_logprobs") or [None])[0] or {}
        return [float(top.get(o, -math.inf)) for o in opts]

    # ---- generate

    def generate(self, prompts: Sequence[str], spec: SamplingSpec) -> list[list[Generation]]:
        if spec.n < 1:
            raise ValueError("spec.n must be at least 1")
        return self._map(lambda p: self._generate_one(p, spec), list(prompts))

    def _generate_one(self, prompt: str, spec: SamplingSpec) -> list[Generation]:
        out: list[Generation] = []
        attempt = 0
        while len(out) < spec.n:
            want = spec.n - len(out)
            seed = None if spec.seed is None else spec.seed + attempt
            got = self._request_generation(prompt, spec, want, seed)
            if not got:
                raise TeacherHTTPError("the server returned no choices")
            out.extend(got[:want])  # servers that ignore n (llama.cpp) give one per request
            attempt += 1
        return out

    def _request_generation(
        self, prompt: str, spec: SamplingSpec, n: int, seed: int | None
    ) -> list[Generation]:
        k = spec.top_logprobs
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": spec.max_new_tokens,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "n": n,
        }
        if spec.stop:
            payload["stop"] = list(spec.stop)
        if seed is not None:
            payload["seed"] = seed
        if self.chat:
            payload.update(messages=[{"role": "user", "content": prompt}], logprobs=True, top_logprobs=k)
            choices = self._post("/chat/completions", payload)["choices"]
            parse: Callable[[dict[str, Any]], Generation] = lambda c: _chat_choice(c, k)  # noqa: E731
        else:
            payload.update(prompt=prompt, logprobs=max(k, 1))
            choices = self._post("/completions", payload)["choices"]
            parse = lambda c: _completion_choice(c, k)  # noqa: E731
        return [parse(c) for c in sorted(choices, key=lambda c: c.get("index", 0))]


def _completion_choice(choice: dict[str, Any], k: int) -> Generation:
    """Legacy completions logprobs: parallel lists tokens / token_logprobs / top_logprobs (text -> lp)."""
    lp = choice.get("logprobs") or {}
    tokens = []
    tops = lp.get("top_logprobs") or []
    for i, (tok, value) in enumerate(
        zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], strict=False)
    ):
        alts = tops[i] if i < len(tops) and tops[i] else {}
        top = tuple(sorted(alts.items(), key=lambda kv: -kv[1])[:k]) if k else ()
        tokens.append(TokenLogprobs(tok, float(value) if value is not None else 0.0, None, top))
    return Generation(choice.get("text", ""), tuple(tokens), choice.get("finish_reason"))


def _chat_choice(choice: dict[str, Any], k: int) -> Generation:
    """Chat logprobs: `content` is a list of {token, logprob, top_logprobs: [{token, logprob}]}."""
    content = ((choice.get("logprobs") or {}).get("content")) or []
    tokens = []
    for entry in content:
        alts = [(a["token"], float(a["logprob"])) for a in entry.get("top_logprobs") or []]
        top = tuple(sorted(alts, key=lambda kv: -kv[1])[:k]) if k else ()
        tokens.append(TokenLogprobs(entry["token"], float(entry["logprob"]), None, top))
    text = (choice.get("message") or {}).get("content") or ""
    return Generation(text, tuple(tokens), choice.get("finish_reason"))
