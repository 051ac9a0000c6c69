"""Importers: the shared benchmark files (`../shared/data`) as catalog entries.

Flows only read catalog entries, so external files are converted once into the entry's JSON-lines path
with stable ids, one field per prompt placeholder (`premise`/`hypothesis` for NLI, `question` for math,
the fields `potstill.data.expectations.TEXT_FIELDS` expects). Gold labels of entries with role `prompts` are
kept as `gold_label` / `gold_answer`, never as `label`, so nothing mistakes them for teacher labels.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from potstill.data.catalog import Catalog, Saved
from potstill.kinds.closed import NLI_LABELS
from potstill.kinds.numbers import extract_answer

Row = dict[str, Any]


def shared_data_dir(root: Path | None = None) -> Path:
    """`POTSTILL_SHARED_DATA`, else `<project>/../shared/data`."""
    if os.environ.get("POTSTILL_SHARED_DATA"):
        return Path(os.environ["POTSTILL_SHARED_DATA"])
    return (root or Path.cwd()).resolve().parent / "shared" / "data"


def read_conjnli(path: Path, prefix: str) -> Iterator[Row]:
    """ConjNLI TSV: UTF-8 with a BOM, tab-separated, quotes are literal text (QUOTE_NONE)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        for i, r in enumerate(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
            label = (r.get("Label") or "").strip()
            if label not in NLI_LABELS:
                raise ValueError(f"{path}:{i + 2}: label {label!r} is not one of {NLI_LABELS}")
            yield {
                "id": f"{prefix}-{i}",
                "premise": r["Premise"],
                "hypothesis": r["Hypothesis"],
                "label": label,
            }


def read_esnli(path: Path, prefix: str) -> Iterator[Row]:
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(x for x in f if x.strip()):
            r = json.loads(line)
            yield {
                "id": f"{prefix}-{i}",
                "premise": r["premise"],
                "hypothesis": r["hypothesis"],
                "label": r["label"],
                "explanation": r.get("explanation"),
            }


def read_gsm8k(path: Path, prefix: str) -> Iterator[Row]:
    """GSM8K lines: `question`, and `answer` = worked solution ending in `#### <number>`."""
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(x for x in f if x.strip()):
            r = json.loads(line)
            yield {
                "id": f"{prefix}-{i}",
                "question": r["question"],
                "label": extract_answer(r["answer"]),
                "solution": r["answer"],
            }


# catalog entry -> (file under the shared data folder, reader, id prefix)
SOURCES: dict[str, tuple[str, Callable[[Path, str], Iterator[Row]], str]] = {
    "conjnli_dev": ("conjnli/conj_dev.tsv", read_conjnli, "conjnli-dev"),
    "conjnli_train": ("conjnli/adversarial_train_15k.tsv", read_conjnli, "conjnli-adv"),
    "esnli_dev": ("esnli/esnli_dev.jsonl", read_esnli, "esnli-dev"),
    "gsm8k_train": ("gsm8k/train.jsonl", read_gsm8k, "gsm8k-train"),
}


def read_source(name: str, source_dir: Path, limit: int | None = None, role: str | None = None) -> list[Row]:
    """The rows of a shared file as entry `name` stores them (first `limit` rows)."""
    if name not in SOURCES:
        raise KeyError(f"no importer for {name!r}; known: {sorted(SOURCES)}")
    rel, reader, prefix = SOURCES[name]
    rows = list(islice(reader(source_dir / rel, prefix), limit))
    if role == "prompts":  # unlabeled for the pipeline; the gold stays for measuring the teacher
        key = "gold_answer" if name.startswith("gsm8k") else "gold_label"
        rows = [{**{k: v for k, v in r.items() if k != "label"}, key: r["label"]} for r in rows]
    return rows


def import_shared(
    catalog: Catalog, name: str, source_dir: Path | None = None, limit: int | None = None
) -> Saved:
    """Convert one shared file into catalog entry `name` (atomic write; versioned if the entry is)."""
    rows = read_source(name, source_dir or shared_data_dir(catalog.root), limit, catalog.dataset(name).role)
    return catalog.save(name, rows)
