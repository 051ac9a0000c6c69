"""Versions of catalog entries: DVC stores the bytes, a small log in git names them v1, v2, ...

Each versioned dataset save runs `dvc add` (content hash) and `dvc push` (to the configured remote) and
appends a record to `catalog/versions/<entry>.jsonl`: version number, md5, rows, date, producing run,
and, with `commit: true`, the git commit and tag `<entry>@v<N>`. A past version is read back through
`dvc.api` at its git tag when there is one, else by its content hash from the local cache, fetching it
from the remote when the cache is empty. Prompt templates live in git; their log keeps each distinct
text, so a run can name, and a user can get back, the exact prompt version it used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from potstill.errors import UserError
from potstill.files import append_line

T = TypeVar("T")
log = logging.getLogger(__name__)

# The DVC remote from the environment (infra/services writes these to infra/.env): it wins over
# `catalog.remote` and over a remote already in .dvc/config, because a user who exports it means it.
REMOTE_URL_ENV = "POTSTILL_DVC_REMOTE_URL"
REMOTE_ENDPOINT_ENV = "POTSTILL_DVC_REMOTE_ENDPOINT_URL"  # S3-compatible stores (MinIO, moto): endpointurl
# How long a catalog write waits for another process's DVC repo lock before giving up (seconds).
LOCK_TIMEOUT_ENV = "POTSTILL_DVC_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 600.0


class VersionError(UserError, LookupError):
    """A version that does not exist or content that cannot be found."""


@dataclass(frozen=True)
class VersionRecord:
    version: int
    md5: str
    created: str
    rows: int | None = None
    size: int | None = None
    run_id: str | None = None
    git_commit: str | None = None
    tag: str | None = None
    text: str | None = None  # prompt templates only: the template itself

    @property
    def name(self) -> str:
        return f"v{self.version}"


def parse_version(text: str | int) -> int:
    """`v3`, `3` or 3 -> 3."""
    raw = str(text).strip().removeprefix("v")
    if not raw.isdigit() or int(raw) < 1:
        raise VersionError(f"{text!r} is not a version: use v1, v2, ...")
    return int(raw)


def split_ref(ref: str) -> tuple[str, str | None]:
    """`teacher_labels@v3` -> ("teacher_labels", "v3"); `teacher_labels` -> (..., None)."""
    name, _, version = ref.partition("@")
    return name, version or None


class VersionLog:
    """Append-only per-entry log under `catalog/versions/`, meant to be committed with the code."""

    def __init__(self, root: Path):
        self.folder = root / "catalog" / "versions"

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.jsonl"

    def records(self, name: str) -> list[VersionRecord]:
        """Every readable record; a line torn by a crash mid-append (or edited into nonsense) is reported
        with its line number and skipped, so one bad line never makes the whole entry unreadable."""
        path = self.path(name)
        if not path.exists():
            return []
        records = []
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(VersionRecord(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                log.warning(
                    "%s line %d is not a version record (torn by a crash?) and is skipped: %s",
                    path,
                    n,
                    f"{type(exc).__name__}: {exc}"[:200],
                )
        return records

    def latest(self, name: str) -> VersionRecord | None:
        records = self.records(name)
        return records[-1] if records else None

    def get(self, name: str, version: str | int) -> VersionRecord:
        number = parse_version(version)
        for record in self.records(name):
            if record.version == number:
                return record
        known = [r.name for r in self.records(name)] or "none yet"
        raise VersionError(f"{name}@v{number} does not exist; versions: {known}")

    def find_md5(self, name: str, md5: str) -> VersionRecord | None:
        return next((r for r in self.records(name) if r.md5 == md5), None)

    def append(self, name: str, **fields: Any) -> VersionRecord:
        record = VersionRecord(
            version=self.next_version(name),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **fields,
        )
        # fsynced before the caller goes on: a version that a run reported exists after a power cut too.
        append_line(self.path(name), json.dumps({k: v for k, v in asdict(record).items() if v is not None}))
        return record

    def next_version(self, name: str) -> int:
        return max((r.version for r in self.records(name)), default=0) + 1


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=check)


def git_commit_of(root: Path) -> str | None:
    proc = _git(root, "rev-parse", "HEAD", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def is_git_repo(root: Path) -> bool:
    return _git(root, "rev-parse", "--show-toplevel", check=False).returncode == 0


def quiet_dvc() -> None:
    """`import dvc` binds its own handlers to the sys.stdout of that moment; as a library inside flows we
    want DVC's warnings through normal logging instead, and no stale stream."""
    import dvc  # noqa: F401  (runs dvc.logger.setup)

    for name in ("dvc", "dvc_objects", "dvc_data"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = True


def lock_timeout() -> float:
    return float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT))


def retry_on_dvc_lock(
    call: Callable[[], T], timeout: float | None = None, first_delay: float = 0.2, max_delay: float = 5.0
) -> T:
    """Run `call`, retrying with exponential backoff while another process holds a DVC lock.

    DVC gives up on its repo lock (`.dvc/tmp/lock`) after ~3 s and on a path's rwlock at once, with a
    `LockError`; two flow runs on one project (or a `dvc status` beside a run) must wait for each other
    instead. Any other error, and a lock still held after `timeout` seconds, propagate."""
    from dvc.lock import LockError

    deadline = time.monotonic() + (lock_timeout() if timeout is None else timeout)
    delay = first_delay
    while True:
        try:
            return call()
        except LockError:
            if time.monotonic() + delay > deadline:
                raise
            logging.getLogger(__name__).info("DVC lock held by another process; retrying in %.1fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)


def remote_from_env() -> tuple[str | None, str | None]:
    """(url, endpoint) of the DVC remote named by the environment, or (None, None)."""
    return os.environ.get(REMOTE_URL_ENV) or None, os.environ.get(REMOTE_ENDPOINT_ENV) or None


class DvcStore:
    """The DVC side of versioning: init, add, push, and reading content back by hash or git tag.

    Every DVC call goes through `retry_on_dvc_lock`, so concurrent runs on one project wait for DVC's
    locks instead of failing."""

    def __init__(self, root: Path, remote: str | None = None):
        self.root = root
        self.remote = remote

    def _repo(self) -> Any:
        quiet_dvc()
        from dvc.repo import Repo
        from dvc.ui import ui

        ui._enabled = False  # DVC's "to track the changes with git, run: ..." hints are not for flow logs
        return Repo(str(self.root))

    def ensure(self) -> None:
        """`dvc init` (without git when the project is not a git repo) and a default remote if none; a
        remote named by the environment (`POTSTILL_DVC_REMOTE_URL`, `..._ENDPOINT_URL`) replaces it."""
        retry_on_dvc_lock(self._ensure)

    def _ensure(self) -> None:
        quiet_dvc()
        from dvc.repo import Repo

        if not (self.root / ".dvc").is_dir():
            Repo.init(str(self.root), no_scm=not is_git_repo(self.root))
        env_url, env_endpoint = remote_from_env()
        repo = self._repo()
        try:
            with repo.config.edit() as conf:
                if env_url:
                    remote = {"url": env_url, **({"endpointurl": env_endpoint} if env_endpoint else {})}
                    if conf["remote"].get("storage") != remote or conf["core"].get("remote") != "storage":
                        conf["remote"]["storage"] = remote
                        conf["core"]["remote"] = "storage"
                elif self.remote and not conf["core"].get("remote"):
                    url = self.remote
                    if "://" not in url:  # a folder: DVC stores it relative to .dvc/config itself
                        url = str((self.root / url).resolve())
                    conf["remote"]["storage"] = {"url": url}
                    conf["core"]["remote"] = "storage"
        finally:
            repo.close()

    def add(self, path: Path, push: bool = True) -> str:
        """Track `path` with DVC and return its md5; push it to the default remote when asked."""
        return retry_on_dvc_lock(lambda: self._add(path, push))

    def _add(self, path: Path, push: bool) -> str:
        repo = self._repo()
        try:
            repo.add(str(path))
            dvc_file = path.with_name(path.name + ".dvc")
            if push and repo.config["core"].get("remote"):
                repo.push(targets=[str(dvc_file)])
        finally:
            repo.close()
        return md5_of_dvc_file(dvc_file)

    def put(self, path: Path, push: bool = True) -> str:
        """Store a file in the DVC cache by content (no .dvc file) and push it; returns its md5.

        For paths a dvc.yaml stage owns: DVC forbids `dvc add` there, yet every version must still be
        loadable by hash from the cache or the remote."""
        data = path.read_bytes()
        md5 = hashlib.md5(data).hexdigest()
        cached = self.cache_path(md5)
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(cached.name + ".tmp")
            tmp.write_bytes(data)
            tmp.rename(cached)
        if push:
            self._transfer(md5, "push")
        return md5

    def push_md5(self, md5: str) -> None:
        """Push one cached object to the default remote (nothing without a remote); raises on failure."""
        self._transfer(md5, "push")

    def has_tag(self, tag: str) -> bool:
        return _git(self.root, "rev-parse", "-q", "--verify", f"refs/tags/{tag}", check=False).returncode == 0

    def _transfer(self, md5: str, direction: str) -> None:
        """Move one object by hash between the local cache and the default remote (DVC's own transfer),
        with no .dvc file: the object may belong to a stage output or to no file at all."""
        retry_on_dvc_lock(lambda: self._transfer_once(md5, direction))

    def _transfer_once(self, md5: str, direction: str) -> None:
        from dvc_data.hashfile.hash_info import HashInfo

        repo = self._repo()
        try:
            if not repo.config["core"].get("remote"):
                if direction == "pull":
                    raise VersionError(f"content {md5} is not in the local DVC cache and there is no remote")
                return
            objs = [HashInfo("md5", md5)]
            result = repo.cloud.push(objs) if direction == "push" else repo.cloud.pull(objs)
            if result.failed:
                raise VersionError(f"dvc {direction} of {md5} failed")
        finally:
            repo.close()

    def cache_path(self, md5: str) -> Path:
        return self.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]

    def read_md5(self, md5: str) -> bytes:
        """Content by hash: the local cache, else pulled from the remote into the cache first."""
        cached = self.cache_path(md5)
        if not cached.exists():
            self._transfer(md5, "pull")
        if not cached.exists():
            raise VersionError(f"content {md5} is neither in the local DVC cache nor on the remote")
        return cached.read_bytes()

    def read_at_tag(self, rel_path: str, tag: str) -> bytes:
        quiet_dvc()
        import dvc.api

        return retry_on_dvc_lock(lambda: dvc.api.read(rel_path, repo=str(self.root), rev=tag, mode="rb"))

    def commit_and_tag(self, files: list[Path], message: str, tag: str) -> str:
        _git(self.root, "add", "--", *[str(f) for f in files])
        _git(self.root, "commit", "-q", "-m", message, "--", *[str(f) for f in files])
        _git(self.root, "tag", tag)
        return str(git_commit_of(self.root))


def md5_of_dvc_file(dvc_file: Path) -> str:
    data = yaml.safe_load(dvc_file.read_text())
    return str(data["outs"][0]["md5"])


class ScopedVersionLog:
    """A task view's version log: short names (`train_set`, `prompt.teacher_prompt`) mean the task's."""

    def __init__(self, log: VersionLog, view: Any):
        self._log, self._view = log, view
        self.folder = log.folder

    def _key(self, name: str) -> str:
        if "/" in name:
            return name
        if name.startswith("prompt."):
            return self._view.prompt_key(name.removeprefix("prompt."))
        return self._view.full_name(name)

    def path(self, name: str) -> Path:
        return self._log.path(self._key(name))

    def records(self, name: str) -> list[VersionRecord]:
        return self._log.records(self._key(name))

    def latest(self, name: str) -> VersionRecord | None:
        return self._log.latest(self._key(name))

    def get(self, name: str, version: str | int) -> VersionRecord:
        return self._log.get(self._key(name), version)

    def find_md5(self, name: str, md5: str) -> VersionRecord | None:
        return self._log.find_md5(self._key(name), md5)

    def append(self, name: str, **fields: Any) -> VersionRecord:
        return self._log.append(self._key(name), **fields)

    def next_version(self, name: str) -> int:
        return self._log.next_version(self._key(name))
