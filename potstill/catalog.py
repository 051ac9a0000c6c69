"""The data catalog: every dataset and prompt addressed by name, declared in `catalog/catalog.yaml`.

Tasks never build paths; they ask the catalog for an entry by name. `_resolve` is the single seam where
versioned storage plugs in: today it maps a name to the workspace file, later to a DVC revision.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from potstill.prompts import PromptTemplate

Role = Literal["prompts", "gold_eval", "teacher_labels", "training_set", "review_queue", "incoming"]
Kind = Literal["classification", "nli", "multiple_choice", "math", "summarization", "chat"]


class CatalogError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class DatasetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    format: Literal["jsonl", "csv"] = "jsonl"
    kind: Kind
    role: Role
    labels: list[str] = Field(default_factory=list)
    description: str = ""


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


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class Catalog:
    def __init__(self, root: Path, datasets: dict[str, DatasetEntry], prompts: dict[str, PromptEntry]):
        self.root = root
        self.datasets = datasets
        self.prompts = prompts

    @classmethod
    def from_file(cls, path: str | Path) -> Catalog:
        path = Path(path).resolve()
        raw = yaml.safe_load(path.read_text()) or {}
        unknown = set(raw) - {"datasets", "prompts"}
        if unknown:
            raise CatalogError(
                f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: datasets, prompts"
            )
        try:
            datasets = {n: DatasetEntry(name=n, **e) for n, e in (raw.get("datasets") or {}).items()}
            prompts = {n: PromptEntry(name=n, **e) for n, e in (raw.get("prompts") or {}).items()}
        except ValidationError as exc:
            raise CatalogError(f"{path}: {exc}") from None
        return cls(path.parent.parent, datasets, prompts)

    def dataset(self, name: str) -> DatasetEntry:
        if name not in self.datasets:
            raise CatalogError(f"no dataset {name!r} in the catalog; known: {sorted(self.datasets)}")
        return self.datasets[name]

    def _resolve(self, name: str, version: str | None = None) -> Path:
        entry = self.dataset(name)
        if version not in (None, "workspace"):
            raise CatalogError(f"{name}@{version}: versioned reads need the DVC catalog (not configured)")
        return self.root / entry.path

    def exists(self, name: str) -> bool:
        return self._resolve(name).exists()

    def load(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        entry, path = self.dataset(name), self._resolve(name, version)
        if not path.exists():
            raise CatalogError(f"dataset {name!r} has no data yet at {path}")
        if entry.format == "csv":
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise CatalogError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        return rows

    def save(self, name: str, rows: list[dict[str, Any]]) -> Saved:
        """Write atomically (temp file + rename) so a killed run never leaves half a dataset."""
        entry, path = self.dataset(name), self._resolve(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            if entry.format == "csv":
                fields = sorted({k for r in rows for k in r})
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            else:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return Saved(name, path, len(rows), file_digest(path))

    def digest(self, name: str) -> str:
        return file_digest(self._resolve(name))

    def prompt(self, name: str) -> PromptTemplate:
        if name not in self.prompts:
            raise CatalogError(f"no prompt {name!r} in the catalog; known: {sorted(self.prompts)}")
        text = (self.root / self.prompts[name].path).read_text(encoding="utf-8")
        return PromptTemplate(name, text.removesuffix("\n"))
