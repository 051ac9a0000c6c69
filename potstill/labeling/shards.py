"""Sharded, resumable labeling: results are written per shard as they finish, so a killed run loses at
most the shard in flight and a rerun picks up where it stopped.

A run folder is keyed by what determines the labels (teacher identity, prompt digest, row-set digest,
kind settings): the same inputs find the same folder and its finished shards; different inputs never
mix. Inside it:

- `manifest.json`: the identity and the shard plan (shard index -> row ids), fixed by the first run; a
  resumed run follows the stored plan even if `shard_rows` changed, so shard boundaries never shift.
- `shard-00000.jsonl` (+ `shard-00000.signals.npz` when teacher signals are stored): a shard exists only
  once complete. Each file is written to a temp file, fsynced and renamed (atomic on POSIX), signals
  first, so the `.jsonl` rename is the commit point; a half-written shard is a temp file nobody reads.

The merge checks that every input row id appears exactly once, in the shard the manifest assigned it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from potstill.files import atomic_write_text
from potstill.kinds.common import Labeled

MANIFEST = "manifest.json"
DEFAULT_SHARD_ROWS = 64


class ShardError(RuntimeError):
    """A run folder that does not match its inputs, or a merge that would lose or duplicate a row."""


def _key(row_id: Any) -> str:
    return json.dumps(row_id)


def rows_digest(rows: Sequence[dict[str, Any]]) -> str:
    """Digest of the row set as the teacher sees it: ids and every field except a gold `label`."""
    h = hashlib.sha256()
    for r in rows:
        h.update(
            json.dumps({k: v for k, v in r.items() if k != "label"}, sort_keys=True, default=str).encode()
        )
        h.update(b"\n")
    return h.hexdigest()[:16]


def run_folder(
    base: Path, teacher: str, prompt_digest: str, row_digest: str, settings: dict[str, Any]
) -> Path:
    """`base/<digest of (teacher, prompt, rows, settings)>`: one folder per distinct labeling job."""
    payload = {"teacher": teacher, "prompt": prompt_digest, "rows": row_digest, "settings": settings}
    return base / hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class ShardRun:
    """The shard plan and finished shards of one run folder."""

    folder: Path
    shards: list[list[Any]]  # shard index -> row ids
    identity: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        folder: Path,
        row_ids: Sequence[Any],
        shard_rows: int = DEFAULT_SHARD_ROWS,
        identity: dict[str, Any] | None = None,
    ) -> ShardRun:
        """Load the folder's plan, or write a new one; refuse a folder planned for other rows."""
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        keys = [_key(i) for i in row_ids]
        if len(set(keys)) != len(keys):
            dupes = sorted({k for k in keys if keys.count(k) > 1})[:5]
            raise ShardError(f"row ids must be unique to label in shards; repeated: {dupes}")
        manifest = folder / MANIFEST
        if manifest.exists():
            stored = json.loads(manifest.read_text())
            run = cls(folder, stored["shards"], stored.get("identity", {}))
            if [_key(i) for s in run.shards for i in s] != keys:
                raise ShardError(f"{folder} was planned for other rows; delete it or change the run key")
            return run
        ids = list(row_ids)
        run = cls(folder, [ids[s : s + shard_rows] for s in range(0, len(ids), shard_rows)], identity or {})
        manifest_doc = {
            "identity": run.identity,
            "shard_rows": shard_rows,
            "rows": len(ids),
            "shards": run.shards,
        }
        atomic_write_text(manifest, json.dumps(manifest_doc, default=str))
        return run

    def shard_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.jsonl"

    def signals_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.signals.npz"

    def signal_footprint(self) -> tuple[int, int]:
        """(teacher tokens with a stored signal, bytes on disk) over the shards' signal files."""
        from potstill.labeling.signals import read_signals

        tokens = size = 0
        for i in range(len(self.shards)):
            path = self.signals_path(i)
            if path.exists():
                tokens += sum(s.n_tokens for s in read_signals(path))
                size += path.stat().st_size
        return tokens, size

    def finished(self) -> list[int]:
        return [i for i in range(len(self.shards)) if self.shard_path(i).exists()]

    def write(self, index: int, records: Sequence[dict[str, Any]]) -> None:
        ids = [_key(r.get("id")) for r in records]
        if ids != [_key(i) for i in self.shards[index]]:
            raise ShardError(f"shard {index}: records are not the planned rows in order")
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, default=str) + "\n" for r in records)
        atomic_write_text(self.shard_path(index), text)

    def read(self, index: int) -> list[dict[str, Any]]:
        lines = self.shard_path(index).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def merge(self, row_ids: Sequence[Any]) -> list[dict[str, Any]]:
        """Every shard's records in input order; ShardError unless each input id appears exactly once."""
        missing_shards = [i for i in range(len(self.shards)) if not self.shard_path(i).exists()]
        if missing_shards:
            raise ShardError(f"{len(missing_shards)} shard(s) not finished: {missing_shards[:10]}")
        by_id: dict[str, dict[str, Any]] = {}
        repeated = []
        for i in range(len(self.shards)):
            for r in self.read(i):
                k = _key(r.get("id"))
                if k in by_id:
                    repeated.append(k)
                by_id[k] = r
        wanted = [_key(i) for i in row_ids]
        lost = [k for k in wanted if k not in by_id]
        extra = sorted(set(by_id) - set(wanted))
        if repeated or lost or extra:
            raise ShardError(
                f"merge of {self.folder}: {len(lost)} row(s) missing {lost[:5]}, {len(repeated)} labeled "
                f"twice {repeated[:5]}, {len(extra)} not in the input {extra[:5]}"
            )
        return [by_id[k] for k in wanted]


@dataclass(frozen=True)
class ShardResult:
    records: list[dict[str, Any]]
    folder: Path
    resumed_rows: int  # rows found in finished shards
    labeled_rows: int  # rows labeled by this call
    seconds: float  # labeling time of this call
    signal_tokens: int = 0
    signal_bytes: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.labeled_rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def signal_bytes_per_token(self) -> float:
        return self.signal_bytes / self.signal_tokens if self.signal_tokens else 0.0


def label_sharded(
    rows: Sequence[dict[str, Any]],
    label_fn: Callable[[list[dict[str, Any]]], list[Labeled]],
    folder: Path,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    identity: dict[str, Any] | None = None,
    signals_top_k: int | None = None,
    progress: Callable[[int], None] | None = None,
    after_shard: Callable[[int], None] | None = None,
) -> ShardResult:
    """Label `rows` (each with a unique `id`) shard by shard into `folder`, skipping finished shards.

    `label_fn` labels one shard's rows (e.g. `functools.partial(kinds.label_rows, backend, ...)` adapted
    to one argument). `signals_top_k` stores each answer's top-k signals beside its shard.
    `progress(n)` gets the resumed rows first, then each shard's rows; `after_shard(index)` runs after a
    shard is committed (tests use it to slow a run down enough to kill it mid-way).
    """
    row_ids = [r["id"] if "id" in r else _missing_id(r) for r in rows]
    run = ShardRun.open(folder, row_ids, shard_rows, identity)
    by_id = {_key(r["id"]): r for r in rows}
    done = set(run.finished())
    resumed = sum(len(run.shards[i]) for i in done)
    if progress is not None and resumed:
        progress(resumed)
    labeled, seconds = 0, 0.0
    for index, ids in enumerate(run.shards):
        if index in done:
            continue
        shard_rows_ = [by_id[_key(i)] for i in ids]
        start = time.perf_counter()
        items = label_fn(shard_rows_)
        seconds += time.perf_counter() - start
        if len(items) != len(shard_rows_):
            raise ShardError(
                f"shard {index}: labeler returned {len(items)} records for {len(shard_rows_)} rows"
            )
        if signals_top_k:
            from potstill.labeling.signals import from_tokens, write_signals

            sig = [
                from_tokens(r["id"], it.tokens, signals_top_k)
                for r, it in zip(shard_rows_, items, strict=True)
            ]
            write_signals(run.signals_path(index), sig)
        run.write(index, [it.record for it in items])
        labeled += len(ids)
        if progress is not None:
            progress(len(ids))
        if after_shard is not None:
            after_shard(index)
    records = run.merge(row_ids)
    tokens, size = run.signal_footprint() if signals_top_k else (0, 0)
    return ShardResult(records, folder, resumed, labeled, seconds, tokens, size)


def _missing_id(row: dict[str, Any]) -> Any:
    raise ShardError(f"every row needs an `id` to be labeled in shards; got a row with {sorted(row)}")
