"""The shifted-domain sentiment reader (benchmarks/support/vader_corpus.py) on hand-written ground-truth
lines and a hand-built sdist with the same nesting as vaderSentiment's (no download)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from benchmarks.support.vader_corpus import load_domain, parse_ground_truth, read_ground_truth

LINES = "\r\n".join(
    [
        "1_1\t-0.9\ttroubleshooting   no picture.",  # |rating| < 1: no clear polarity, dropped
        "1_2\t2.5\tworks great,\tlove it",  # a tab inside the text stays part of the text
        "1_3\t-1.0\tthe battery died.",  # exactly at the margin: negative
        "1_4\tn/a\tbroken rating",  # not a number: dropped
        "1_5\t1.2",  # no text field: dropped
        "1_6\t3.1\tWORKS GREAT, LOVE IT",  # same text as 1_2 up to case: kept by the parser
    ]
)


def test_parse_keeps_polar_rows_and_maps_sign_to_label() -> None:
    rows = parse_ground_truth(LINES, "amazon")
    assert [(r["id"], r["label"], r["rating"]) for r in rows] == [
        ("amazon-1_2", "positive", 2.5),
        ("amazon-1_3", "negative", -1.0),
        ("amazon-1_6", "positive", 3.1),
    ]
    assert rows[0]["text"] == "works great, love it"
    assert [r["id"] for r in parse_ground_truth(LINES, "amazon", margin=0.5)] == [
        "amazon-1_1",
        "amazon-1_2",
        "amazon-1_3",
        "amazon-1_6",
    ]
    with pytest.raises(ValueError):
        parse_ground_truth(LINES, "amazon", margin=0)


def _sdist(folder: Path) -> Path:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        data = LINES.encode()
        info = tarfile.TarInfo("hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path = folder / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    return path


def test_load_domain_reads_the_nested_archive_dedups_and_shuffles_by_seed(tmp_path: Path) -> None:
    sdist = _sdist(tmp_path)
    assert read_ground_truth(sdist, "amazon") == LINES
    with pytest.raises(RuntimeError, match="tweets_GroundTruth"):
        read_ground_truth(sdist, "tweets")
    rows = load_domain(tmp_path, "amazon", seed=0)  # the sdist is already there: no download
    assert sorted(r["id"] for r in rows) == ["amazon-1_2", "amazon-1_3"]  # 1_6 repeats 1_2's text
    assert load_domain(tmp_path, "amazon", seed=0) == rows
