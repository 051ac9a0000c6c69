"""What the catalog is made of: dataset and prompt entries, what a save reports, and reading rows from
bytes. Kept apart from `potstill.data.catalog` (the catalog's behaviour) so each stays one concept."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from potstill.data.readers import ColumnMap
from potstill.errors import UserError

Role = Literal[
    "prompts",
    "gold_eval",
    "teacher_labels",
    "training_set",
    "review_queue",
    "reviewed",
    "review_outbox",
    "review_import",
    "incoming",
    "predictions",
    "state",
    "model",
    "metrics",
]
TABULAR = ("jsonl", "csv", "parquet")


class CatalogError(UserError, KeyError):
    """An entry, version or file the catalog does not have."""


class DatasetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    format: Literal["jsonl", "csv", "parquet", "json"] = "jsonl"  # json: one document
    kind: str | None = None
    role: Role
    labels: list[str] = Field(default_factory=list)
    versioned: bool = False
    # Written outside the dvc.yaml stages (e.g. by the review sync flow); None: a stage produces it.
    produced_by: str | None = None
    description: str = ""
    task: str | None = None  # the task the entry belongs to (None: a free-standing dataset)
    columns: dict[str, str] = Field(default_factory=dict)  # field -> the file's column
    label_map: dict[str, str] = Field(default_factory=dict)  # the file's label value -> label
    id_prefix: str | None = None  # rows without an id get <prefix><row number>

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str | None) -> str | None:
        from potstill.kinds import KINDS

        if v is not None and v not in KINDS:
            raise ValueError(f"unknown kind {v!r}; known kinds: {', '.join(KINDS)}")
        return v

    @property
    def mapping(self) -> ColumnMap:
        return ColumnMap.of(self.columns, self.label_map, self.id_prefix)

    @property
    def short_name(self) -> str:
        return self.name.split("/", 1)[1] if self.task else self.name


class PromptEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    description: str = ""


@dataclass(frozen=True)
class Saved:
    """What a save wrote: enough to record lineage in MLflow."""

    name: str
    path: Path
    rows: int
    digest: str
    version: str | None = None  # "v3" for versioned entries
    md5: str | None = None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # DVC's content hash of a file


def parse_rows(data: bytes, fmt: str, where: str) -> list[dict[str, Any]]:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(pa.BufferReader(data)).to_pylist()
        except Exception as exc:  # pyarrow raises several types for bytes that are not Parquet
            raise CatalogError(f"{where}: not a Parquet file ({exc})") from None
    text = data.decode("utf-8-sig")
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CatalogError(f"{where}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


def count_rows(path: Path, fmt: str) -> int | None:
    """Rows of a file as it is, without parsing them (a hand-edited file may hold broken lines, which the
    reader reports later): non-empty lines, less the CSV header; Parquet's own row count."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.read_metadata(path).num_rows)
        except Exception:  # not Parquet: the reader says so, with the file
            return None
    if fmt not in TABULAR:
        return None
    lines = sum(1 for line in path.read_bytes().splitlines() if line.strip())
    return max(lines - (fmt == "csv"), 0)
