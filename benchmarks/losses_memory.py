"""Peak memory of the chunked distillation loss against the unchunked one, written to BENCHMARKS.md.

    .venv/bin/python benchmarks/losses_memory.py [--n 2048] [--vocab 49152] [--hidden 576] [--device cpu]

One forward + backward of `potstill.training.losses.distillation_loss` (KD against a teacher signal + CE on
labels)
from [N, H] hidden states through an [H → V] LM head, at each chunk size and unchunked (chunk = N). Each
setting runs in a fresh subprocess so that peaks do not mix. On CPU the peak is the rise of the process's
resident memory (`getrusage` max RSS after, minus the resident size before the call, inputs already
allocated; glibc's mmap threshold is fixed so that freed buffers leave RSS). On CUDA it is
`torch.cuda.max_memory_allocated` minus the allocation before the call. The numbers are what the loss adds
on top of its inputs and of the gradients of hidden and LM head.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Distillation loss memory"
MIB = 1024**2
# glibc raises its mmap threshold (up to 32 MiB) after the first large free, so later chunk-sized buffers
# come from the heap and freed heap pages stay resident: RSS would measure the allocator, not the loss.
# A fixed threshold keeps every large buffer mmapped and returned to the system when freed.
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}


def _rss_now() -> int:
    """Current resident set size in bytes (Linux /proc; the peak so far elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: argparse.Namespace) -> None:
    """One measurement; prints a JSON line."""
    import torch

    from potstill.training.losses import DenseSignal, SparseSignal, distillation_loss

    torch.manual_seed(0)
    device = torch.device(args.device)
    n, v, h = args.n, args.vocab, args.hidden
    head = torch.nn.Linear(h, v, bias=False).to(device)
    hidden = torch.randn(n, h, device=device, requires_grad=True)
    labels = torch.randint(0, v, (n,), device=device)
    if args.teacher == "dense":
        teacher = DenseSignal(torch.randn(n, v, device=device) * 3)
    else:
        top_logprobs = torch.log_softmax(torch.randn(n, args.k + 1, device=device) * 3, dim=-1)[:, : args.k]
        top_logprobs = top_logprobs.sort(dim=-1, descending=True).values
        # k distinct ids per row (a random run of consecutive ids: placement does not change the cost)
        top_ids = torch.randint(0, v - args.k, (n, 1), device=device) + torch.arange(args.k, device=device)
        tail = (1 - top_logprobs.exp().sum(-1)).clamp_min(0)
        teacher = SparseSignal(top_ids, top_logprobs, tail)
    chunk = args.chunk or n
    # Allocate the parameter gradient up front: it is the same in every setting, not the loss's memory.
    head.weight.grad = torch.zeros_like(head.weight)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_now()
    start = time.perf_counter()
    parts = distillation_loss(
        hidden, head, teacher, divergence=args.divergence, labels=labels, ce_weight=1.0, chunk_size=chunk
    )
    parts.loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    seconds = time.perf_counter() - start
    print(
        json.dumps({"chunk": args.chunk, "peak_bytes": peak, "seconds": seconds, "loss": parts.loss.item()})
    )


def write_section(lines: list[str]) -> None:
    """Replace this benchmark's section of BENCHMARKS.md (or append it)."""
    path = ROOT / "BENCHMARKS.md"
    old = path.read_text().splitlines() if path.exists() else ["# Benchmarks", ""]
    out: list[str] = []
    skipping = False
    for line in old:
        if line.startswith(HEADING):
            skipping = True
            continue
        if skipping and line.startswith("## "):
            skipping = False
        if not skipping:
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    path.write_text("\n".join([*out, "", *lines]) + "\n")
    print(f"written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2048, help="loss positions (batch × sequence)")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size (SmolLM2: 49152)")
    parser.add_argument("--hidden", type=int, default=576, help="hidden width (SmolLM2-135M: 576)")
    parser.add_argument("--k", type=int, default=64, help="top-k of the sparse teacher signal")
    parser.add_argument("--teacher", choices=["sparse", "dense"], default="sparse")
    parser.add_argument("--divergence", default="forward_kl")
    parser.add_argument("--chunks", default="128,512,0", help="chunk sizes; 0 = unchunked")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch BENCHMARKS.md")
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    rows = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        cmd = [sys.executable, __file__, "--child", "--chunk", str(chunk)]
        for name in ("n", "vocab", "hidden", "k", "teacher", "divergence", "device"):
            cmd += [f"--{name}", str(getattr(args, name))]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=CHILD_ENV)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(row)
        label = row["chunk"] or "unchunked"
        print(f"chunk {label}: peak +{row['peak_bytes'] / MIB:.0f} MiB, {row['seconds']:.2f} s", flush=True)

    logits_mib = args.n * args.vocab * 4 / MIB
    unchunked = next((r for r in rows if not r["chunk"]), None)
    threads = torch.get_num_threads() if args.device == "cpu" else torch.cuda.get_device_name()
    machine = (
        f"{platform.node()} ({platform.machine()}, {threads}{' threads' if args.device == 'cpu' else ''})"
    )
    command = f"python benchmarks/losses_memory.py --n {args.n} --vocab {args.vocab} --hidden {args.hidden} "
    command += f"--k {args.k} --teacher {args.teacher} --divergence {args.divergence} --chunks {args.chunks} "
    command += f"--device {args.device}"
    lines = [
        f"{HEADING} — {dt.date.today().isoformat()} — {machine}",
        "",
        f"`{command}`",
        "",
        f"One forward + backward of `distillation_loss` ({args.divergence} against a {args.teacher} teacher"
        + (f" signal, top-{args.k} + tail" if args.teacher == "sparse" else " signal")
        + f", plus CE on labels) for N={args.n} positions, V={args.vocab}, H={args.hidden}; "
        "each setting in a fresh process. Peak = memory the call adds over its inputs and parameter gradient "
        + ("(CPU: max RSS rise). " if args.device == "cpu" else "(CUDA max allocated). ")
        + f"One float32 [N, V] logits tensor is {logits_mib:.0f} MiB. Seconds are wall time"
        + (
            f" (1-minute load average at the end: {os.getloadavg()[0]:.1f})." if args.device == "cpu" else "."
        ),
        "",
        "| chunk size | peak memory (MiB) | vs unchunked | fwd+bwd seconds |",
        "|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row['peak_bytes'] / unchunked['peak_bytes']:.2f}×" if unchunked else "-"
        lines.append(
            f"| {row['chunk'] or f'unchunked ({args.n})'} | {row['peak_bytes'] / MIB:.0f} | {ratio} "
            f"| {row['seconds']:.2f} |"
        )
    values = [r["loss"] for r in rows]
    spread = (max(values) - min(values)) / abs(values[0]) if values[0] else 0.0
    lines += [
        "",
        f"Loss {values[0]:.5f} in every setting (largest relative difference {spread:.1e}, float32).",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section(lines)


if __name__ == "__main__":
    main()
