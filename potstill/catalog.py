"""The data catalog: every dataset and prompt addressed by name, declared in `catalog/catalog.yaml`.

Tasks never build paths; they ask the catalog for an entry by name. Entries marked `versioned: true`
get a new version (DVC add + push, see `potstill.versioning`) whenever a save changes their content, and
any past version can be loaded back by name: `catalog.load("teacher_labels", version="v3")`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from potstill.config import CatalogConfig
from potstill.pipeline import stage_outputs
from potstill.prompts import PromptTemplate
from potstill.versioning import DvcStore, VersionLog, VersionRecord, file_lock, is_git_repo

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
Kind = Literal["classification", "nli", "multiple_choice", "math", "summarization", "chat"]


class CatalogError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class DatasetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    format: Literal["jsonl", "csv", "json", "dir"] = "jsonl"  # json: one document; dir: a model folder
    kind: Kind | None = None
    role: Role
    labels: list[str] = Field(default_factory=list)
    versioned: bool = False
    # Written outside the dvc.yaml stages (e.g. by the review sync flow); None: a stage produces it.
    produced_by: str | None = None
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


class Catalog:
    def __init__(
        self,
        root: Path,
        datasets: dict[str, DatasetEntry],
        prompts: dict[str, PromptEntry],
        settings: CatalogConfig | None = None,
    ):
        self.root = root
        self.datasets = datasets
        self.prompts = prompts
        self.settings = settings or CatalogConfig()
        self.versions = VersionLog(root)
        self.store = DvcStore(root, self.settings.remote)
        self._store_ready = False

    @classmethod
    def from_file(cls, path: str | Path, settings: CatalogConfig | None = None) -> Catalog:
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
        return cls(path.parent.parent, datasets, prompts, settings)

    def dataset(self, name: str) -> DatasetEntry:
        if name not in self.datasets:
            raise CatalogError(f"no dataset {name!r} in the catalog; known: {sorted(self.datasets)}")
        return self.datasets[name]

    def _resolve(self, name: str) -> Path:
        return self.root / self.dataset(name).path

    def exists(self, name: str) -> bool:
        return self._resolve(name).exists()

    def path(self, name: str) -> Path:
        """Where a `dir` entry (a model folder) lives; datasets are read with `load` instead."""
        if self.dataset(name).format != "dir":
            raise CatalogError(f"{name!r} is a {self.dataset(name).format} dataset: use load/save")
        return self._resolve(name)

    def locked(self) -> AbstractContextManager[None]:
        """The project's catalog lock: a write and the version it records happen as one step, so two runs
        saving the same entry at once can neither interleave version numbers nor record each other's
        content. Not re-entrant: only the public writing methods take it."""
        return file_lock(self.root / ".cache" / "locks" / "catalog.lock")

    def save_json(self, name: str, obj: Any, run_id: str | None = None) -> Saved:
        entry, path = self.dataset(name), self._resolve(name)
        if entry.format != "json":
            raise CatalogError(f"{name!r} is not a json entry")
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.locked():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2, sort_keys=True, default=str)
            os.replace(tmp, path)
            record = self._version(name, path, None, run_id) if self.is_versioned(name) else None
        return Saved(
            name, path, 1, file_digest(path), record.name if record else None, record.md5 if record else None
        )

    def load_json(self, name: str, version: str | None = None) -> Any:
        return json.loads(self.read_bytes(name, version))

    def is_versioned(self, name: str) -> bool:
        return self.dataset(name).versioned and self.settings.versioning

    def read_bytes(self, name: str, version: str | None = None) -> bytes:
        """The bytes of the workspace file, or of a past version from git/DVC cache/remote."""
        path = self._resolve(name)
        if version in (None, "workspace"):
            if not path.exists():
                raise CatalogError(f"dataset {name!r} has no data yet at {path}")
            return path.read_bytes()
        record = self.versions.get(name, version)
        if path.exists():
            data = path.read_bytes()
            if md5_bytes(data) == record.md5:
                return data
        if record.tag and is_git_repo(self.root) and self.dataset(name).path not in stage_outputs(self.root):
            return self.store.read_at_tag(self.dataset(name).path, record.tag)
        return self.store.read_md5(record.md5)

    def load(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        where = f"{self._resolve(name)}" + (f"@{version}" if version else "")
        return parse_rows(self.read_bytes(name, version), self.dataset(name).format, where)

    def save(self, name: str, rows: list[dict[str, Any]], run_id: str | None = None) -> Saved:
        """Write atomically (temp file + rename) so a killed run never leaves half a dataset; then version."""
        entry, path = self.dataset(name), self._resolve(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.locked():
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
            record = self._version(name, path, len(rows), run_id) if self.is_versioned(name) else None
        return Saved(
            name,
            path,
            len(rows),
            file_digest(path),
            record.name if record else None,
            record.md5 if record else None,
        )

    def _ensure_store(self) -> None:
        if not self._store_ready:
            self.store.ensure()
            self._store_ready = True

    def _track(self, name: str, path: Path, push: bool) -> str:
        """Put the file's content in the DVC cache (and remote); returns its md5.

        A path that a dvc.yaml stage produces is tracked by dvc.lock under `dvc repro`, and DVC refuses to
        `dvc add` it as well, so those are stored by content only."""
        self._ensure_store()
        if self.dataset(name).path in stage_outputs(self.root):
            return self.store.put(path, push=push)
        return self.store.add(path, push=push)

    def _version(self, name: str, path: Path, rows: int | None, run_id: str | None) -> VersionRecord:
        """Record a new version when the content is new; saving known content names the known version."""
        md5 = self._track(name, path, push=self.settings.push)
        known = self.versions.find_md5(name, md5)
        if known is not None:
            return known
        tag = f"{name}@v{(self.versions.latest(name).version if self.versions.latest(name) else 0) + 1}"
        commit = self.settings.commit and is_git_repo(self.root)
        record = self.versions.append(
            name, md5=md5, rows=rows, size=path.stat().st_size, run_id=run_id, tag=tag if commit else None
        )
        if commit:
            dvc_file = path.with_name(path.name + ".dvc")
            repo_files = [
                self.root / ".dvc" / "config",
                self.root / ".dvc" / ".gitignore",
                self.root / ".dvcignore",
            ]
            files = [dvc_file, self.versions.path(name), path.parent / ".gitignore", *repo_files]
            self.store.commit_and_tag(
                [f for f in files if f.exists()], f"catalog: {name} {record.name} (run {run_id})", tag
            )
        return record

    def version_workspace(self, name: str, run_id: str | None = None) -> VersionRecord:
        """Version the workspace file as it is (e.g. edited or replaced by hand)."""
        path = self._resolve(name)
        with self.locked():
            rows = sum(1 for line in path.read_bytes().splitlines() if line.strip())
            return self._version(name, path, rows - (self.dataset(name).format == "csv"), run_id)

    def current_version(self, name: str) -> VersionRecord | None:
        """The logged version whose content is in the workspace now (None when unversioned or changed)."""
        path = self._resolve(name)
        if not path.exists():
            return None
        return self.versions.find_md5(name, md5_bytes(path.read_bytes()))

    def checkout(self, name: str, version: str) -> VersionRecord:
        """Restore a past version into the workspace (and its .dvc file), without making a new version."""
        record = self.versions.get(name, version)
        data = self.read_bytes(name, version)
        path = self._resolve(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.locked():
            path.write_bytes(data)
            if self.is_versioned(name):
                self._track(name, path, push=False)
        return record

    def digest(self, name: str) -> str:
        return file_digest(self._resolve(name))

    def prompt_version(self, name: str, run_id: str | None = None) -> VersionRecord:
        """The version of a prompt template's current text, logged as new when the text changed."""
        text = self.prompt(name).text
        md5 = md5_bytes(text.encode())
        with self.locked():
            known = self.versions.find_md5(f"prompt.{name}", md5)
            return known or self.versions.append(f"prompt.{name}", md5=md5, run_id=run_id, text=text)

    def prompt_at(self, name: str, version: str) -> PromptTemplate:
        record = self.versions.get(f"prompt.{name}", version)
        return PromptTemplate(name, record.text or "")

    def prompt(self, name: str) -> PromptTemplate:
        if name not in self.prompts:
            raise CatalogError(f"no prompt {name!r} in the catalog; known: {sorted(self.prompts)}")
        text = (self.root / self.prompts[name].path).read_text(encoding="utf-8")
        return PromptTemplate(name, text.removesuffix("\n"))
