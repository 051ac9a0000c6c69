"""The data catalog: every dataset and prompt addressed by name, declared in `catalog/catalog.yaml`.

Tasks never build paths; they ask the catalog for an entry by name. Entries marked `versioned: true`
get a new version (DVC add + push, see `potstill.data.versioning`) whenever a save changes their content, and
any past version can be loaded back by name: `catalog.load("teacher_labels", version="v3")`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import ValidationError

from potstill.config import CatalogConfig
from potstill.data.entries import (
    TABULAR,
    CatalogError,
    DatasetEntry,
    PromptEntry,
    Role,
    Saved,
    count_rows,
    file_digest,
    md5_bytes,
    parse_rows,
)
from potstill.data.readers import ReadResult, read_rows
from potstill.data.tasks import TaskSpec, load_tasks
from potstill.data.versioning import (
    DvcStore,
    ScopedVersionLog,
    VersionLog,
    VersionRecord,
    is_git_repo,
)
from potstill.errors import TaskError
from potstill.files import atomic_write, atomic_write_text, file_lock, fsync_dir
from potstill.pipeline import is_step_output, stage_outputs
from potstill.prompts import PromptTemplate

log = logging.getLogger(__name__)


def _short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class Catalog:
    def __init__(
        self,
        root: Path,
        datasets: dict[str, DatasetEntry],
        prompts: dict[str, PromptEntry],
        settings: CatalogConfig | None = None,
        tasks: dict[str, TaskSpec] | None = None,
        scope: str | None = None,
    ):
        self.root = root
        self.datasets = datasets
        self.prompts = prompts
        self.tasks = tasks or {}
        self.scope = scope
        self.settings = settings or CatalogConfig()
        self.versions = VersionLog(root)
        self.store = DvcStore(root, self.settings.remote)
        self._store_ready = False

    @classmethod
    def from_file(cls, path: str | Path, settings: CatalogConfig | None = None) -> Catalog:
        """`catalog/catalog.yaml` plus every task declared in `catalog/tasks/`."""
        path = Path(path).resolve()
        raw = yaml.safe_load(path.read_text()) if path.exists() else {}
        raw = raw or {}
        unknown = set(raw) - {"datasets", "prompts"}
        if unknown:
            raise CatalogError(
                f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: datasets, prompts"
            )
        root = path.parent.parent
        tasks = load_tasks(root)
        try:
            datasets = {n: DatasetEntry(name=n, **e) for n, e in (raw.get("datasets") or {}).items()}
            prompts = {n: PromptEntry(name=n, **e) for n, e in (raw.get("prompts") or {}).items()}
            for task in tasks.values():
                for short, fields in task.entries().items():
                    full = f"{task.name}/{short}"
                    datasets[full] = DatasetEntry(name=full, task=task.name, **fields)
                for short, fields in task.prompt_entries().items():
                    full = f"{task.name}/{short}"
                    prompts[full] = PromptEntry(name=full, **fields)
        except ValidationError as exc:
            raise CatalogError(f"{path}: {exc}") from None
        return cls(root, datasets, prompts, settings, tasks)

    # ---- tasks: the same catalog seen from one task

    def for_task(self, name: str) -> Catalog:
        """This catalog with `name`'s entries addressable by their short names (`train_set`)."""
        self.task(name)
        view = Catalog(self.root, self.datasets, self.prompts, self.settings, self.tasks, scope=name)
        view.versions, view.store = ScopedVersionLog(self.versions, view), self.store  # type: ignore[assignment]
        return view

    def task(self, name: str | None = None) -> TaskSpec:
        """A declared task (default: the one this view is scoped to)."""
        name = name or self.scope
        if name is None:
            raise CatalogError("no task given: pass --task NAME (declared tasks: " + self._task_list() + ")")
        if name not in self.tasks:
            raise TaskError(
                f"unknown task {name!r}; declared tasks: {self._task_list()}. Declare one with "
                "`potstill task new NAME --kind KIND --prompts FILE --gold FILE`"
            )
        return self.tasks[name]

    def _task_list(self) -> str:
        return ", ".join(sorted(self.tasks)) or "none"

    def full_name(self, name: str) -> str:
        """The catalog name of `name`: a task view resolves its short names first."""
        if self.scope and "/" not in name:
            full = f"{self.scope}/{name}"
            if full in self.datasets or full in self.prompts:
                return full
        return name

    def dataset(self, name: str) -> DatasetEntry:
        full = self.full_name(name)
        if full not in self.datasets:
            known = sorted(self.visible_datasets())
            raise CatalogError(f"no dataset {name!r} in the catalog; known: {known}")
        return self.datasets[full]

    def visible_datasets(self) -> list[str]:
        """Names this view answers to: a task's short names, else every full name."""
        if self.scope:
            prefix = f"{self.scope}/"
            return [n.removeprefix(prefix) for n in self.datasets if n.startswith(prefix)]
        return list(self.datasets)

    def _resolve(self, name: str) -> Path:
        return self.root / self.dataset(name).path

    def exists(self, name: str) -> bool:
        return self._resolve(name).exists()

    def file(self, name: str) -> Path:
        """The workspace file of an entry (for messages, MLflow dataset sources and DVC)."""
        return self._resolve(name)

    def run_dir(self, run_id: str) -> Path:
        """Where one run of this view's task keeps what no other run may replace (its model folders)."""
        return self.root / self.task().run_dir(run_id)

    def task_dir(self) -> Path:
        return self.root / self.task().data_dir if self.scope else self.root / "catalog" / "data"

    def quarantine_path(self, name: str) -> Path:
        """Rows of `name` set aside by validation (catalog/data/<task>/quarantine/<entry>.jsonl)."""
        return self.task_dir() / "quarantine" / f"{self.dataset(name).short_name}.jsonl"

    def validation_record_path(self, name: str) -> Path:
        """The last validation of `name`, for `potstill catalog show`."""
        return self.task_dir() / "validation" / f"{self.dataset(name).short_name}.json"

    def locked(self) -> AbstractContextManager[None]:
        """The project's catalog lock: a write and the version it records happen as one step, so two runs
        saving the same entry at once can neither interleave version numbers nor record each other's
        content. Not re-entrant: only the public writing methods take it."""
        return file_lock(self.root / ".cache" / "locks" / "catalog.lock")

    def save_json(self, name: str, obj: Any, run_id: str | None = None) -> Saved:
        name = self.full_name(name)
        entry, path = self.dataset(name), self._resolve(name)
        if entry.format != "json":
            raise CatalogError(f"{name!r} is not a json entry")
        text = json.dumps(obj, indent=2, sort_keys=True, default=str)
        record = self._write(name, path, lambda f: f.write(text.encode("utf-8")), None, run_id)
        return Saved(
            name, path, 1, file_digest(path), record.name if record else None, record.md5 if record else None
        )

    def load_json(self, name: str, version: str | None = None) -> Any:
        name = self.full_name(name)
        return json.loads(self.read_bytes(name, version))

    def is_versioned(self, name: str) -> bool:
        return self.dataset(name).versioned and self.settings.versioning

    def read_bytes(self, name: str, version: str | None = None) -> bytes:
        """The bytes of the workspace file, or of a past version from git/DVC cache/remote."""
        name = self.full_name(name)
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
        if (
            record.tag
            and is_git_repo(self.root)
            and not self._produced_by_a_stage(name)
            and self.store.has_tag(record.tag)  # a run killed between record and commit left no tag
        ):
            return self.store.read_at_tag(self.dataset(name).path, record.tag)
        return self.store.read_md5(record.md5)

    def load(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        """Rows of an entry (a task's own files mapped onto the kind's fields), strict: a bad line fails."""
        name = self.full_name(name)
        entry = self.dataset(name)
        if entry.format not in TABULAR:
            raise CatalogError(f"{name!r} is a {entry.format} entry: use load_json")
        where = f"{self._resolve(name)}" + (f"@{version}" if version else "")
        rows = parse_rows(self.read_bytes(name, version), entry.format, where)
        mapping = entry.mapping
        return rows if mapping.is_identity else [mapping.apply(r, i) for i, r in enumerate(rows, 1)]

    def read_entry(self, name: str, required: list[str], limit: int | None = None) -> ReadResult:
        """Every row of the workspace file that parses, mapped onto the kind's fields, with its source row
        number; rows that do not parse are set aside with row and field (`potstill.data.readers`)."""
        entry = self.dataset(name)
        read = read_rows(self._resolve(name), entry.format, required, entry.mapping)  # type: ignore[arg-type]
        if limit is not None:
            read.rows, read.row_numbers = read.rows[:limit], read.row_numbers[:limit]
        return read

    def save(self, name: str, rows: list[dict[str, Any]], run_id: str | None = None) -> Saved:
        """Write atomically (temp file + rename) so a killed run never leaves half a dataset; then version."""
        name = self.full_name(name)
        entry, path = self.dataset(name), self._resolve(name)
        if entry.format not in ("jsonl", "csv"):
            raise CatalogError(f"{name!r} is a {entry.format} entry: save writes jsonl or csv entries")

        def write(f: IO[bytes]) -> None:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=True)
            if entry.format == "csv":
                fields = sorted({k for r in rows for k in r})
                writer = csv.DictWriter(text, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            else:
                for r in rows:
                    text.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
            text.detach()

        record = self._write(name, path, write, len(rows), run_id)
        return Saved(
            name,
            path,
            len(rows),
            file_digest(path),
            record.name if record else None,
            record.md5 if record else None,
        )

    def _write(
        self,
        name: str,
        path: Path,
        write: Callable[[IO[bytes]], Any],
        rows: int | None,
        run_id: str | None,
    ) -> VersionRecord | None:
        """Write an entry and record its version, in the order that keeps every record true to its
        content and run whatever moment a crash picks: (1) the new content goes to a temp file beside the
        entry, (2) into the DVC cache by hash and to the remote, (3) its version record is appended and
        fsynced, and only then (4) it replaces the workspace file, whose .dvc pointer and git tag follow.
        A crash before (3) leaves the old file and no record; after (3) the record names content that
        is in the DVC cache. Temp files a killed writer left behind are removed first (writes hold the
        catalog lock, so any that exist are orphans)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.locked():
            for orphan in path.parent.glob(f".{path.name}.*.tmp"):
                orphan.unlink(missing_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                record = self._record(name, tmp, rows, run_id) if self.is_versioned(name) else None
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(path.parent)
            if record is not None:
                self._finish(name, path, record)
        return record

    def _ensure_store(self) -> None:
        if not self._store_ready:
            self.store.ensure()
            self._store_ready = True
            self.retry_unpushed()

    def _store_content(self, path: Path) -> str:
        """Put a file's content into the DVC cache by hash and push it; returns its md5. A push that
        fails (remote down, no credentials) is not the run's failure: the version is recorded all the
        same, the object waits in `.cache/catalog/unpushed.txt`, and the next catalog write retries it
        (both say so in the log)."""
        self._ensure_store()
        md5 = self.store.put(path, push=False)
        if self.settings.push:
            try:
                self.store.push_md5(md5)
            except Exception as exc:  # any remote failure: the bytes are safe in the local cache
                unpushed = self._unpushed()
                unpushed.add(md5)
                self._save_unpushed(unpushed)
                log.warning(
                    "dvc push of %s failed (%s): the version is recorded and its content is in the local "
                    "DVC cache; the next run retries the push (%d object(s) waiting)",
                    md5,
                    _short_error(exc),
                    len(unpushed),
                )
        return md5

    def _unpushed_path(self) -> Path:
        return self.root / ".cache" / "catalog" / "unpushed.txt"

    def _unpushed(self) -> set[str]:
        path = self._unpushed_path()
        return set(path.read_text().split()) if path.exists() else set()

    def _save_unpushed(self, md5s: set[str]) -> None:
        atomic_write_text(self._unpushed_path(), "".join(f"{m}\n" for m in sorted(md5s)))

    def retry_unpushed(self) -> tuple[int, int]:
        """Push the objects earlier runs could not push; returns (pushed now, still waiting)."""
        waiting = self._unpushed()
        if not waiting or not self.settings.push:
            return 0, len(waiting)
        pushed = set()
        for md5 in sorted(waiting):
            try:
                self.store.push_md5(md5)
                pushed.add(md5)
            except Exception as exc:
                log.warning(
                    "dvc push still fails (%s): %d catalog object(s) wait in the local DVC cache only",
                    _short_error(exc),
                    len(waiting - pushed),
                )
                break
        self._save_unpushed(waiting - pushed)
        if pushed:
            log.info("pushed %d catalog object(s) that an earlier run could not push", len(pushed))
        return len(pushed), len(waiting - pushed)

    def _produced_by_a_stage(self, name: str) -> bool:
        entry = self.dataset(name)
        return is_step_output(entry.task, entry.short_name) or entry.path in stage_outputs(self.root)

    def _record(self, name: str, content: Path, rows: int | None, run_id: str | None) -> VersionRecord:
        """The version of `content` (a file not yet in the workspace, or the workspace file itself):
        stored in DVC by hash, and recorded when new; known content names the known version."""
        name = self.full_name(name)
        md5 = self._store_content(content)
        known = self.versions.find_md5(name, md5)
        if known is not None:
            return known
        commit = self.settings.commit and is_git_repo(self.root)
        tag = f"{name}@v{self.versions.next_version(name)}"
        return self.versions.append(
            name, md5=md5, rows=rows, size=content.stat().st_size, run_id=run_id, tag=tag if commit else None
        )

    def _finish(self, name: str, path: Path, record: VersionRecord) -> None:
        """Once the workspace file holds the recorded content: its .dvc pointer (entries no dvc.yaml stage
        produces) and, in commit mode, the git commit and tag of a new version."""
        if not self._produced_by_a_stage(name):
            self.store.add(path, push=False)
        if record.tag and not self.store.has_tag(record.tag):
            dvc_file = path.with_name(path.name + ".dvc")
            repo_files = [
                self.root / ".dvc" / "config",
                self.root / ".dvc" / ".gitignore",
                self.root / ".dvcignore",
            ]
            files = [dvc_file, self.versions.path(name), path.parent / ".gitignore", *repo_files]
            self.store.commit_and_tag(
                [f for f in files if f.exists()],
                f"catalog: {name} {record.name} (run {record.run_id})",
                record.tag,
            )

    def version_workspace(self, name: str, run_id: str | None = None) -> VersionRecord:
        """Version the workspace file as it is (e.g. edited or replaced by hand)."""
        name = self.full_name(name)
        path = self._resolve(name)
        with self.locked():
            record = self._record(name, path, count_rows(path, self.dataset(name).format), run_id)
            self._finish(name, path, record)
            return record

    def current_version(self, name: str) -> VersionRecord | None:
        """The logged version whose content is in the workspace now (None when unversioned or changed)."""
        name = self.full_name(name)
        path = self._resolve(name)
        if not path.exists():
            return None
        return self.versions.find_md5(name, md5_bytes(path.read_bytes()))

    def checkout(self, name: str, version: str) -> VersionRecord:
        """Restore a past version into the workspace (and its .dvc file), without making a new version."""
        name = self.full_name(name)
        record = self.versions.get(name, version)
        data = self.read_bytes(name, version)
        path = self._resolve(name)
        with self.locked():
            atomic_write(path, lambda f: f.write(data))  # a killed checkout leaves the old file whole
            if self.is_versioned(name) and not self._produced_by_a_stage(name):
                self._ensure_store()
                self.store.add(path, push=False)
        return record

    def digest(self, name: str) -> str:
        name = self.full_name(name)
        return file_digest(self._resolve(name))

    def prompt_key(self, name: str) -> str:
        """The version-log key of a prompt: `prompt.<name>`, or `<task>/prompt.<name>` for a task's."""
        full = self.full_name(name)
        task, sep, short = full.rpartition("/")
        return f"{task}/prompt.{short}" if sep else f"prompt.{full}"

    def prompt_version(self, name: str, run_id: str | None = None) -> VersionRecord:
        """The version of a prompt template's current text, logged as new when the text changed."""
        text = self.prompt(name).text
        md5 = md5_bytes(text.encode())
        key = self.prompt_key(name)
        with self.locked():
            known = self.versions.find_md5(key, md5)
            return known or self.versions.append(key, md5=md5, run_id=run_id, text=text)

    def prompt_at(self, name: str, version: str) -> PromptTemplate:
        record = self.versions.get(self.prompt_key(name), version)
        return PromptTemplate(name, record.text or "")

    def prompt(self, name: str) -> PromptTemplate:
        """A template by name (a task view: `teacher_prompt`, `student_prompt`, `rationale_prompt`)."""
        full = self.full_name(name)
        if full not in self.prompts:
            known = sorted(self.visible_prompts())
            raise CatalogError(f"no prompt {name!r} in the catalog; known: {known}")
        path = self.root / self.prompts[full].path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            where = f"task {self.scope!r}: " if self.scope else ""
            raise CatalogError(f"{where}prompt {name!r}: cannot read {path}: {exc.strerror}") from None
        return PromptTemplate(name, text.removesuffix("\n"))

    def visible_prompts(self) -> list[str]:
        if self.scope:
            prefix = f"{self.scope}/"
            return [n.removeprefix(prefix) for n in self.prompts if n.startswith(prefix)]
        return list(self.prompts)

    def has_prompt(self, name: str) -> bool:
        return self.full_name(name) in self.prompts


__all__ = [
    "TABULAR",
    "Catalog",
    "CatalogError",
    "DatasetEntry",
    "PromptEntry",
    "Role",
    "Saved",
    "count_rows",
    "file_digest",
    "md5_bytes",
    "parse_rows",
]
