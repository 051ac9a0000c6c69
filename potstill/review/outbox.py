"""Getting routed rows to reviewers whatever the state of the server: push, outbox, or import file.

- Label Studio configured and up: rows become tasks in the project (`push_rows`).
- Configured but unreachable: the tasks wait in a local JSONL outbox and go out, oldest first, on the
  next push or `sync_outbox`; delivered rows leave the outbox. Nothing is lost (a line leaves only after
  its import succeeded) and nothing is duplicated (the import skips row ids already in the project,
  also after a crash between import and outbox rewrite).
- Not configured (no LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY): `route_to_review` writes a Label Studio
  import file instead and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from potstill.review.client import ReviewClient, ReviewServerUnavailable
from potstill.review.labeling import ReviewProjectSpec, build_tasks, write_import_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    target: Literal["label-studio", "outbox", "file"]
    created: int  # tasks created in Label Studio by this call (outbox deliveries included)
    skipped: int  # rows already in the project
    queued: int  # tasks waiting in the outbox after this call (all projects)
    delivered_from_outbox: int  # of `created`, those that had waited in the outbox
    location: str  # the project's URL, or the file written
    message: str  # one line for the run log
    project_id: int | None = None


class Outbox:
    """A JSONL file of `{"project": <spec>, "task": <task>}` lines, one per row waiting for the server.

    Every change holds an exclusive lock on `<path>.lock`, so two flows sharing an outbox do not
    interleave writes; rewrites go through a temporary file and `os.replace`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a crash mid-append: report, keep going
                    log.warning("outbox %s: line %d is not JSON and is skipped", self.path, n)
        return entries

    def _write(self, entries: list[dict[str, Any]]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def entries(self) -> list[dict[str, Any]]:
        with self._locked():
            return self._read()

    def __len__(self) -> int:
        return len(self.entries())

    def add(self, spec: ReviewProjectSpec, tasks: Iterable[Mapping[str, Any]]) -> int:
        """Queue tasks for the spec's project; a row already queued for it is not queued twice (the
        newer task replaces it, so a re-routed row carries its latest teacher answer)."""
        with self._locked():
            entries = self._read()
            new = {str(t["data"]["row_id"]): {"project": spec.to_dict(), "task": dict(t)} for t in tasks}
            kept = [
                e for e in entries if not (_key(e) == spec.key and str(e["task"]["data"]["row_id"]) in new)
            ]
            self._write(kept + list(new.values()))
            return len(new)

    def remove(self, spec: ReviewProjectSpec, row_ids: Iterable[str]) -> None:
        gone = set(row_ids)
        with self._locked():
            entries = self._read()
            kept = [
                e for e in entries if not (_key(e) == spec.key and str(e["task"]["data"]["row_id"]) in gone)
            ]
            if len(kept) != len(entries):
                self._write(kept)


def _key(entry: Mapping[str, Any]) -> str:
    return ReviewProjectSpec.from_dict(entry["project"]).key


def sync_outbox(client: ReviewClient, outbox: str | Path | Outbox) -> int:
    """Deliver everything waiting in the outbox, project by project; returns tasks created.

    A project's rows leave the outbox only after their import succeeded; an unreachable server raises
    `ReviewServerUnavailable` with the rest still queued.
    """
    box = outbox if isinstance(outbox, Outbox) else Outbox(outbox)
    groups: dict[str, tuple[ReviewProjectSpec, list[dict[str, Any]]]] = {}
    for e in box.entries():
        spec = ReviewProjectSpec.from_dict(e["project"])
        groups.setdefault(spec.key, (spec, []))[1].append(e["task"])
    created = 0
    for spec, tasks in groups.values():
        pid = client.ensure_project(spec)
        created += client.import_tasks(pid, tasks).created
        box.remove(spec, (str(t["data"]["row_id"]) for t in tasks))
    return created


def push_rows(
    client: ReviewClient,
    spec: ReviewProjectSpec,
    rows: Iterable[Mapping[str, Any]],
    *,
    dataset_version: str | None = None,
    outbox: str | Path | None = None,
) -> PushResult:
    """Deliver the outbox, then import these rows into the spec's project.

    With an `outbox`, an unreachable server queues the rows there instead of failing; without one,
    `ReviewServerUnavailable` propagates. Other errors (a wrong token) always propagate: queueing
    cannot fix them.
    """
    tasks = build_tasks(rows, spec, dataset_version)
    box = Outbox(outbox) if outbox is not None else None
    delivered = 0
    try:
        if box is not None:
            delivered = sync_outbox(client, box)
        pid = client.ensure_project(spec)
        result = client.import_tasks(pid, tasks)
    except ReviewServerUnavailable as e:
        if box is None:
            raise
        box.add(spec, tasks)
        queued = len(box)
        return PushResult(
            target="outbox",
            created=delivered,
            skipped=0,
            queued=queued,
            delivered_from_outbox=delivered,
            location=str(box.path),
            message=f"{e}; {len(tasks)} review rows wait in {box.path} ({queued} in all) "
            "and go out on the next push or review sync",
        )
    queued = len(box) if box is not None else 0
    return PushResult(
        target="label-studio",
        created=result.created + delivered,
        skipped=result.skipped,
        queued=queued,
        delivered_from_outbox=delivered,
        location=client.project_url(pid),
        project_id=pid,
        message=f"{result.created} review tasks created, {result.skipped} already there"
        + (f", {delivered} delivered from the outbox" if delivered else "")
        + f": {client.project_url(pid)}",
    )


def route_to_review(
    rows: Iterable[Mapping[str, Any]],
    spec: ReviewProjectSpec,
    *,
    import_file: str | Path,
    outbox: str | Path | None = None,
    dataset_version: str | None = None,
    env: Mapping[str, str] | None = None,
) -> PushResult:
    """Send routed rows to Label Studio when LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are set (outbox
    on connection errors), else write them to `import_file` for a later import by hand."""
    rows = list(rows)
    client = ReviewClient.from_env(env)
    if client is not None:
        return push_rows(client, spec, rows, dataset_version=dataset_version, outbox=outbox)
    path = write_import_file(rows, import_file, spec=spec, dataset_version=dataset_version)
    return PushResult(
        target="file",
        created=0,
        skipped=0,
        queued=0,
        delivered_from_outbox=0,
        location=str(path),
        message=f"Label Studio not configured (set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY): wrote "
        f"{len(rows)} review tasks to {path}; import it into a project with the labeling config "
        f"{path.with_name(path.stem + '.label_config.xml')}",
    )
