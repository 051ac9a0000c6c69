"""Labeled English sentiment sentences from other domains than movie reviews, for drift simulations.

The `vaderSentiment` source distribution (MIT) ships the ground truth of Hutto & Gilbert (ICWSM 2014) in
`additional_resources/hutto_ICWSM_2014.tar.gz`: sentence snippets from Amazon product reviews (Hu & Liu
2004: 3,708 snippets of 309 reviews of 5 electronics products), tweets (4,200) and NYT editorials (5,190),
each with the mean of 20 human ratings on a -4..+4 scale. It is fetched from the package registry like
the demo corpus (`pip download --no-deps --no-binary :all: vaderSentiment`); nothing is installed.

A mean rating is an intensity, not a polarity: snippets whose |mean| is below a margin (factual sentences
such as "repost from january 13, 2004") have no polarity a movie-review classifier could be scored on, so
they are dropped, and the rest become `positive` / `negative`, the labels of the demo task.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
DOMAINS = {
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}


def download_sdist(dest: Path) -> Path:
    """`pip download` the vaderSentiment sdist into dest (reuses a file already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob("vaderSentiment-*.tar.gz")) + sorted(dest.glob("vadersentiment-*.tar.gz"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q"]
        proc = subprocess.run(
            [*cmd, "-d", str(dest), "vaderSentiment==3.3.2"], capture_output=True, text=True
        )
        found = sorted(dest.glob("[vV]ader[sS]entiment-*.tar.gz"))
        if proc.returncode != 0 or not found:
            raise RuntimeError(
                f"could not download vaderSentiment from the package index: {proc.stderr[-800:]}"
            )
    return found[-1]


def read_ground_truth(sdist: Path, domain: str) -> str:
    """The text of one `*_GroundTruth.txt` file from the archive inside the sdist."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; known: {sorted(DOMAINS)}")
    with tarfile.open(sdist) as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith(INNER_ARCHIVE)), None)
        if member is None:
            raise RuntimeError(f"{sdist.name} has no {INNER_ARCHIVE}")
        inner_bytes = outer.extractfile(member)
        assert inner_bytes is not None
        with tarfile.open(fileobj=io.BytesIO(inner_bytes.read())) as inner:
            found = next((m for m in inner.getmembers() if m.name.endswith("/" + DOMAINS[domain])), None)
            if found is None:
                raise RuntimeError(f"{INNER_ARCHIVE} has no {DOMAINS[domain]}")
            data = inner.extractfile(found)
            assert data is not None
            return data.read().decode("utf-8", errors="replace")


def parse_ground_truth(text: str, domain: str, margin: float = 1.0) -> list[dict[str, Any]]:
    """Tab-separated `ID, MEAN-RATING, TEXT` lines -> rows {id, text, label, rating}; rows with
    |rating| < margin are dropped (no clear polarity), >= margin is positive, <= -margin negative."""
    if margin <= 0:
        raise ValueError("margin must be positive: a rating of 0 has no polarity")
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 3:
            continue
        rid, raw, sentence = parts[0].strip(), parts[1].strip(), " ".join("\t".join(parts[2:]).split())
        try:
            rating = float(raw)
        except ValueError:
            continue
        if not sentence or abs(rating) < margin:
            continue
        label = "positive" if rating > 0 else "negative"
        rows.append({"id": f"{domain}-{rid}", "text": sentence, "label": label, "rating": rating})
    return rows


def load_domain(cache: Path, domain: str, margin: float = 1.0, seed: int = 0) -> list[dict[str, Any]]:
    """All polar rows of one domain in a seeded random order (the files are grouped by review/product, so
    a first-N slice of the file order would be a few products only), de-duplicated by text."""
    rows = parse_ground_truth(read_ground_truth(download_sdist(cache), domain), domain, margin)
    seen: set[str] = set()
    unique = []
    for r in rows:
        key = r["text"].casefold()
        if key not in seen:
            seen.add(key)
            unique.append(r)
    random.Random(seed).shuffle(unique)
    return unique
