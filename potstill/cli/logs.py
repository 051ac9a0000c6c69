"""Where the CLI's log goes, and why a user error never prints a traceback on the terminal.

Everything logged during a command (Prefect's flow and task logs, potstill's, tracebacks included) is
appended to `<cache>/logs/potstill.log`. On the terminal, a `UserError` (a missing file, an unmapped column,
an unknown task, a validation stop) is one `potstill: ...` line: Prefect's console handler still prints
its log lines, but without the traceback of such an error. Any other error keeps its traceback.
"""

from __future__ import annotations

import copy
import logging
import sys
import traceback
from pathlib import Path
from types import TracebackType

from potstill.errors import UserError
from potstill.models import default_cache_dir

_MARK = "_potstill_quiet"


def log_path() -> Path:
    return default_cache_dir() / "logs" / "potstill.log"


def start_file_log() -> Path:
    """Append every record of this process (INFO and up) to the log file. Call it after Prefect is
    imported: Prefect leaves the root logger alone when it already has a handler of the user's."""
    path = log_path()
    root = logging.getLogger()
    if not any(getattr(h, _MARK, False) for h in root.handlers):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    return path


def is_user_error(exc: BaseException | None) -> bool:
    """A UserError, or an error raised while handling one (Prefect wraps some)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def quiet_user_tracebacks() -> None:
    """Terminal handlers print a user error's log lines without its traceback (the file keeps it)."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if getattr(handler, _MARK, False) or not isinstance(handler, logging.StreamHandler):
                continue
            if getattr(handler, "_potstill_wrapped", False):
                continue
            handler.emit = _without_user_tracebacks(handler.emit)  # type: ignore[method-assign]
            handler._potstill_wrapped = True  # type: ignore[attr-defined]


def _without_user_tracebacks(emit):  # type: ignore[no-untyped-def]
    def wrapped(record: logging.LogRecord) -> None:
        if record.exc_info and is_user_error(record.exc_info[1]):
            record = copy.copy(record)
            record.exc_info, record.exc_text = None, None
        emit(record)

    return wrapped


def log_exception(exc: BaseException) -> None:
    """The full traceback of `exc`, to the log file only."""
    tb: TracebackType | None = exc.__traceback__
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    path = start_file_log()
    with path.open("a", encoding="utf-8") as f:
        f.write(f"potstill {' '.join(sys.argv[1:])}: {type(exc).__name__}\n{text}\n")
