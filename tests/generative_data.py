"""A new user's own files for the generative kinds, in their own column names (what `potstill task new`
maps onto the kind's fields).

- `sums/`: math as JSONL, `problem` and (gold only) `solution` ending in `#### N` (conftest.math_questions,
  the questions the tiny math teacher was taught).
- `quiz/`: multiple choice as JSONL: `question`, a list of `options`, the gold `answer` (an option's text):
  what a real Pang & Lee review sentence says about the film; the last prompt has a single option, which
  the teacher cannot choose among (a parse error, routed to review).
- `digest/`: summarization as CSV: `article` (two review sentences), gold `highlight` (its first sentence).
- `talk/`: chat as JSONL: `message` (a request about a review sentence), gold `reply`.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

from conftest import math_questions

OPTIONS = ["the reviewer liked the film", "the reviewer disliked the film"]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_sums(folder: Path, prompts: int = 40, gold: int = 21) -> dict[str, Path]:
    rows = math_questions(prompts + gold)
    return {
        "prompts": _jsonl(folder / "sums.jsonl", [{"problem": r["problem"]} for r in rows[:prompts]]),
        "gold": _jsonl(folder / "sums_gold.jsonl", rows[prompts:]),
    }


def write_quiz(folder: Path, sentences: list[dict[str, str]], prompts: int = 40, gold: int = 20) -> dict:
    picked = random.Random(3).sample(sentences, prompts + gold)
    rows = [
        {
            "question": f"What does this review say? {s['text']}",
            "options": OPTIONS,
            "answer": OPTIONS[0] if s["label"] == "positive" else OPTIONS[1],
        }
        for s in picked
    ]
    unusable = {"question": "Which option is it?", "options": ["the only option"]}  # teacher: parse error
    return {
        "prompts": _jsonl(
            folder / "quiz.jsonl",
            [{k: r[k] for k in ("question", "options")} for r in rows[:prompts]] + [unusable],
        ),
        "gold": _jsonl(folder / "quiz_gold.jsonl", rows[prompts:]),
    }


def write_digest(folder: Path, sentences: list[dict[str, str]], prompts: int = 32, gold: int = 16) -> dict:
    rng = random.Random(4)
    picked = rng.sample(sentences, 2 * (prompts + gold))
    pairs = [(picked[2 * i]["text"], picked[2 * i + 1]["text"]) for i in range(prompts + gold)]
    folder.mkdir(parents=True, exist_ok=True)
    out = {"prompts": folder / "digest.csv", "gold": folder / "digest_gold.csv"}
    with out["prompts"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["article"])
        w.writerows([f"{a} {b}"] for a, b in pairs[:prompts])
    with out["gold"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["article", "highlight"])
        w.writerows([f"{a} {b}", a] for a, b in pairs[prompts:])
    return out


def write_talk(folder: Path, sentences: list[dict[str, str]], prompts: int = 32, gold: int = 16) -> dict:
    picked = random.Random(5).sample(sentences, prompts + gold)
    rows = [{"message": f"Repeat this review back to me: {s['text']}", "reply": s["text"]} for s in picked]
    return {
        "prompts": _jsonl(folder / "talk.jsonl", [{"message": r["message"]} for r in rows[:prompts]]),
        "gold": _jsonl(folder / "talk_gold.jsonl", rows[prompts:]),
    }


# `potstill task new NAME --kind KIND ...` column options for each file set
DECLARATIONS: dict[str, tuple[str, list[str]]] = {
    "sums": ("math", ["--column", "question=problem", "--column", "label=solution"]),
    "quiz": ("multiple_choice", ["--column", "text=question,choices=options,label=answer"]),
    "digest": ("summarization", ["--column", "text=article", "--column", "label=highlight"]),
    "talk": ("chat", ["--column", "text=message", "--column", "label=reply"]),
}


def declare(name: str, files: dict[str, Path]) -> list[str]:
    kind, columns = DECLARATIONS[name]
    return ["task", "new", name, "--kind", kind, "--prompts", str(files["prompts"]),
            "--gold", str(files["gold"]), *columns]  # fmt: skip
