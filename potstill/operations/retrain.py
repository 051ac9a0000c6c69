"""Retraining on a new batch: the next training set and the rows a continuation trains on.

Pure functions (no Prefect, no MLflow) so that the merge rule can be tested by hand and the retrain flow
stays wiring. The merged set is what the next retrain builds on, so it is saved as a `train_set` version
even when a continuation trains on only part of it.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_SPACE = re.compile(r"\s+")


def normalise_text(value: Any) -> str:
    """Case-, width- and whitespace-insensitive form of a prompt field: the same sentence pasted twice with
    different spacing or capitals is one training example, not two."""
    text = unicodedata.normalize("NFKC", str(value)).casefold()
    return _SPACE.sub(" ", text).strip()


def text_key(row: dict[str, Any], fields: Sequence[str]) -> tuple[str, ...]:
    """The normalised prompt fields of a row (the student prompt's fields: `text`, or premise+hypothesis)."""
    return tuple(normalise_text(row.get(f, "")) for f in fields)


@dataclass(frozen=True)
class MergedTrainSet:
    """rows: previous rows not superseded, then the new rows. replaced: previous rows a new row with the
    same id or text superseded (its label is newer: the current teacher or a person); duplicates: new rows
    dropped as repeats of an earlier new row."""

    rows: list[dict[str, Any]]
    previous: int
    new: int
    replaced: int
    duplicates: int


def merge_train_sets(
    previous: list[dict[str, Any]], new: list[dict[str, Any]], fields: Sequence[str]
) -> MergedTrainSet:
    """Previous train_set + new accepted rows, de-duplicated by id and by normalised text; on a clash the
    new row wins, within the new rows the first one wins."""
    ids: set[str] = set()
    texts: set[tuple[str, ...]] = set()
    fresh: list[dict[str, Any]] = []
    for row in new:
        rid, key = str(row["id"]), text_key(row, fields)
        if rid in ids or key in texts:
            continue
        ids.add(rid)
        texts.add(key)
        fresh.append(row)
    kept = [r for r in previous if str(r["id"]) not in ids and text_key(r, fields) not in texts]
    # previous rows may repeat each other too (hand-edited sets): keep their first occurrence
    seen_ids, seen_texts, old = set(ids), set(texts), []
    for row in kept:
        rid, key = str(row["id"]), text_key(row, fields)
        if rid in seen_ids or key in seen_texts:
            continue
        seen_ids.add(rid)
        seen_texts.add(key)
        old.append(row)
    return MergedTrainSet(
        rows=old + fresh,
        previous=len(previous),
        new=len(fresh),
        replaced=len(previous) - len(kept),
        duplicates=len(new) - len(fresh),
    )


def continuation_rows(
    merged: MergedTrainSet, mode: str, replay_rows: int | None, seed: int
) -> list[dict[str, Any]]:
    """What a continuation trains on: the merged set, or the new rows plus a seeded replay sample of the
    previous ones (`retrain.train_on: new_plus_replay`)."""
    if mode == "merged":
        return list(merged.rows)
    if mode != "new_plus_replay":
        raise ValueError(f"retrain.train_on must be merged or new_plus_replay, got {mode!r}")
    old, new = merged.rows[: len(merged.rows) - merged.new], merged.rows[len(merged.rows) - merged.new :]
    n = len(new) if replay_rows is None else replay_rows
    replay = random.Random(seed).sample(old, min(n, len(old)))
    return replay + new


def train_set_version(tag: str | None) -> str | None:
    """`v3 md5:...` (the lineage tag of a model version) -> `v3`."""
    if not tag or not tag.startswith("v"):
        return None
    return tag.split()[0]


def gold_slice(rows: list[dict[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Incoming rows that carry a known gold `label` (simulations, or batches labeled later): the new
    slice on which champion and retrained student are compared. Without a label set (generative kinds)
    any non-empty label is a reference answer; a number (a math answer written as `7` in a JSON file) is
    read as its text."""
    if not labels:
        return [
            r if isinstance(r["label"], str) else {**r, "label": str(r["label"])}
            for r in rows
            if _reference_answer(r.get("label"))
        ]
    return [r for r in rows if r.get("label") in labels]


def _reference_answer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == value  # NaN (an empty cell of a table) is no answer
    return isinstance(value, str) and bool(value.strip())
