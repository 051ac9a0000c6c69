"""Errors a user can act on.

A `UserError` means the input is wrong, not the code: a missing or unreadable file, an unmapped column,
an unknown task, a config value, a dataset that failed validation. The `potstill` CLI prints its
message as one `potstill: ...` line and exits 2; the traceback goes to the log file only. Each concrete
error also keeps the built-in base callers already catch (KeyError, ValueError, ...).
"""

from __future__ import annotations


class UserError(Exception):
    """Raised for input the user has to fix; the message says what and how."""

    def __str__(self) -> str:  # KeyError quotes its message; a user error reads as a sentence
        return str(self.args[0]) if self.args else ""


class TaskError(UserError, ValueError):
    """A task declaration that cannot be used, or a task's data that is missing or does not fit it."""
