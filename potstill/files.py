"""Crash-safe files: atomic writes (a reader sees the old file or the new one, never half of one), a
durable append for logs, and one inter-process lock with a timeout that names its holder."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from potstill.errors import UserError

# How long a process waits for a lock another process holds before it gives up (seconds).
LOCK_TIMEOUT_ENV = "POTSTILL_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 600.0


class LockTimeout(UserError, TimeoutError):
    """A lock still held by another process after the timeout; the message names the holder."""


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` survive a power cut (the entry lives in the folder)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """`write(f)` into a temp file beside `path`, fsync it, rename over `path`, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync it. A line torn by an earlier crash (the file does not end in a newline)
    is closed off first, so the torn bytes stay one unreadable line of their own instead of corrupting
    this one; readers report and skip such a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with path.open("a+b") as f:
        f.seek(0, os.SEEK_END)
        prefix = b""
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                prefix = b"\n"
        f.write(prefix + line.rstrip("\n").encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())
    if created:
        fsync_dir(path.parent)


def lock_timeout() -> float:
    return float(os.environ.get(LOCK_TIMEOUT_ENV) or DEFAULT_LOCK_TIMEOUT)


def _holder_line() -> str:
    command = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv[:4]))
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return f"pid {os.getpid()} on {socket.gethostname()} ({command}) since {since}"


@contextmanager
def file_lock(path: Path, timeout: float | None = None, poll: float = 0.1) -> Iterator[None]:
    """An exclusive inter-process lock (flock) on `path`, held for the `with` block.

    The kernel releases it when the holder dies, so a killed run never leaves a stale lock. The holder
    writes who it is into the lock file; a process still waiting after `timeout` seconds
    (`POTSTILL_LOCK_TIMEOUT`, default 600) fails with a `LockTimeout` that names that holder instead of
    hanging forever behind a stuck run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wait = lock_timeout() if timeout is None else timeout
    deadline = time.monotonic() + wait
    with path.open("a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise LockTimeout(
                        f"waited {wait:g} s for the lock {path}, held by {holder}; wait for that run to "
                        f"finish or stop it (a stopped process releases the lock), or raise "
                        f"{LOCK_TIMEOUT_ENV}"
                    ) from None
                time.sleep(poll)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(_holder_line() + "\n")
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
