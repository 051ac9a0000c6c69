"""Getting routed rows to reviewers whatever the state of the server: push, outbox, or import file.

- Label Studio configured and up: rows become tasks in the project (`push_rows`).
- Configured but unreachable: the tasks wait in a local JSONL outbox and go out, oldest first, on the
  next push or `sync_outbox`; delivered rows leave the outbox. Nothing is lost (a line leaves only after
  its import succeeded) and nothing is duplicated (the import skips row ids already in the project,
  also after a crash between import and outbox rewrite).
- A task the server refuses (it answers 4xx or 500 to its content) would fail again on every retry and
  hold up every task behind it: the batch is split until the refused tasks are alone, and those go to a
  dead-letter file beside the outbox (`<outbox>.rejected.jsonl`, with the server's answer, its status
  and the time) while the rest is delivered. A line of the outbox that is not JSON (torn by a crash
  mid-write) is moved to `<outbox>.torn.txt` as it was, never dropped.
- Not configured (no LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY): `route_to_review` writes a Label Studio
  import file instead and says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from potstill.files import append_line, atomic_write_text, file_lock
from potstill.review.client import ReviewClient, ReviewServerError, ReviewServerUnavailable
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
    rejected: int = 0  # tasks the server refused, set aside in the outbox's dead-letter file


class Outbox:
    """A JSONL file of `{"project": <spec>, "task": <task>}` lines, one per row waiting for the server.

    Every change holds an exclusive lock on `<path>.lock` (with the timeout and holder message of
    `potstill.files.file_lock`), so two flows sharing an outbox do not interleave writes; rewrites are
    atomic. Beside it: `<path>.rejected.jsonl` (tasks the server refused, with its answer) and
    `<path>.torn.txt` (lines that were not JSON, kept as they were).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rejected_path = self.path.with_name(self.path.name + ".rejected.jsonl")
        self.torn_path = self.path.with_name(self.path.name + ".torn.txt")
        self._torn: list[tuple[int, str]] = []

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            yield

    def _read(self) -> list[dict[str, Any]]:
        self._torn = []
        if not self.path.exists():
            return []
        entries = []
        with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a crash mid-append: kept aside at rewrite
                    self._torn.append((n, line.rstrip("\n")))
        return entries

    def _write(self, entries: list[dict[str, Any]]) -> None:
        """Rewrite the outbox; lines `_read` could not parse go to the torn file first (a crash between
        the two leaves them in both, never in neither)."""
        for n, line in self._torn:
            append_line(self.torn_path, line.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            log.warning(
                "outbox %s: line %d is not JSON (torn by a crash?); moved to %s as it was",
                self.path,
                n,
                self.torn_path,
            )
        self._torn = []
        atomic_write_text(self.path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))

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
            if len(kept) != len(entries) or self._torn:
                self._write(kept)

    def reject(self, spec: ReviewProjectSpec, task: Mapping[str, Any], error: ReviewServerError) -> None:
        """Set a refused task aside with the server's answer, then take it out of the outbox (in that
        order: a crash between the two leaves it in both, and the next delivery refuses it again)."""
        record = {
            "project": spec.to_dict(),
            "task": dict(task),
            "status": error.status,
            "error": str(error),
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        with self._locked():
            append_line(self.rejected_path, json.dumps(record, ensure_ascii=False))
        log.warning(
            "Label Studio refused review task for row %s (%s): set aside in %s",
            task["data"]["row_id"],
            error,
            self.rejected_path,
        )
        self.remove(spec, [str(task["data"]["row_id"])])

    def rejected(self) -> list[dict[str, Any]]:
        """The refused tasks with the server's answers (skipping a line a crash tore)."""
        if not self.rejected_path.exists():
            return []
        out = []
        for line in self.rejected_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out


def _key(entry: Mapping[str, Any]) -> str:
    return ReviewProjectSpec.from_dict(entry["project"]).key


def sync_outbox(client: ReviewClient, outbox: str | Path | Outbox) -> int:
    """Deliver everything waiting in the outbox, project by project; returns tasks created.

    A project's rows leave the outbox only after their import succeeded; an unreachable server raises
    `ReviewServerUnavailable` with the rest still queued.
    """
    return _sync(client, outbox if isinstance(outbox, Outbox) else Outbox(outbox)).created


def _sync(client: ReviewClient, box: Outbox) -> Delivery:
    groups: dict[str, tuple[ReviewProjectSpec, list[dict[str, Any]]]] = {}
    for e in box.entries():
        spec = ReviewProjectSpec.from_dict(e["project"])
        groups.setdefault(spec.key, (spec, []))[1].append(e["task"])
    total = Delivery(0, 0, 0)
    for spec, tasks in groups.values():
        pid = client.ensure_project(spec)
        total += deliver(client, pid, spec, tasks, box)
    return total


@dataclass(frozen=True)
class Delivery:
    created: int
    skipped: int
    rejected: int

    def __add__(self, other: Delivery) -> Delivery:
        return Delivery(
            self.created + other.created, self.skipped + other.skipped, self.rejected + other.rejected
        )


def deliver(
    client: ReviewClient,
    project_id: int,
    spec: ReviewProjectSpec,
    tasks: Sequence[Mapping[str, Any]],
    box: Outbox,
) -> Delivery:
    """Import `tasks` and take them out of the outbox (where they are not, removing is a no-op). When the
    server refuses the batch, each half is tried on its own, down to single tasks: a refused task goes
    to the dead-letter file and the others still arrive (the import skips rows already in the project,
    so a half that made it before is not duplicated)."""
    try:
        result = client.import_tasks(project_id, tasks)
    except ReviewServerError as e:
        if not e.is_rejection:
            raise
        if len(tasks) == 1:
            box.reject(spec, tasks[0], e)
            return Delivery(0, 0, 1)
        half = len(tasks) // 2
        return deliver(client, project_id, spec, tasks[:half], box) + deliver(
            client, project_id, spec, tasks[half:], box
        )
    box.remove(spec, (str(t["data"]["row_id"]) for t in tasks))
    return Delivery(result.created, result.skipped, 0)


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
    refused_before = 0  # refused while delivering the outbox
    try:
        if box is not None:
            synced = _sync(client, box)
            delivered, refused_before = synced.created, synced.rejected
        pid = client.ensure_project(spec)
        if box is None:
            imported = client.import_tasks(pid, tasks)
            result = Delivery(imported.created, imported.skipped, 0)
        else:
            result = deliver(client, pid, spec, tasks, box)
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
    rejected = refused_before + result.rejected
    return PushResult(
        target="label-studio",
        created=result.created + delivered,
        skipped=result.skipped,
        queued=queued,
        delivered_from_outbox=delivered,
        location=client.project_url(pid),
        project_id=pid,
        rejected=rejected,
        message=f"{result.created} review tasks created, {result.skipped} already there"
        + (f", {delivered} delivered from the outbox" if delivered else "")
        + (
            f", {rejected} refused by the server (set aside with its answer in {box.rejected_path})"
            if rejected and box is not None
            else ""
        )
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
