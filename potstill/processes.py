"""Child processes that die with their parent.

A SIGKILL of `potstill run` cannot be caught, so nothing in it can stop the processes it started: the
`accelerate launch` agent and its training ranks would go on and, minutes later, write a student folder
for a run that no longer exists. Linux's parent-death signal (`prctl(PR_SET_PDEATHSIG)`) has the kernel
kill a process when its parent goes; it survives `exec`, so a launcher is started through
`python -m potstill.processes CMD...` (set it, then exec CMD: no `preexec_fn`, which is unsafe in a
process with threads), and each rank sets it for itself on start. Elsewhere than Linux this is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Any

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process when its parent exits; True when it is set. A parent
    that died before the call (this process already re-parented) means dying now."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def with_parent(command: list[str]) -> list[str]:
    """`command`, started so that it dies with the process that starts it."""
    return [sys.executable, "-m", "potstill.processes", *command]


def tie_temporary_prefect_server() -> bool:
    """Start Prefect's temporary API server (the one `potstill run` uses when no PREFECT_API_URL is set)
    so that it dies with this process. Prefect starts it as a plain `uvicorn` child and stops it at exit;
    after a SIGKILL nothing stops it, and the chaos benchmark found one server left per kill, each holding
    a port and the project's Prefect database. Same command and environment as Prefect 3.8's
    `SubprocessASGIServer._run_uvicorn_command`, started through `with_parent`. True when installed.

    The parent-death signal follows the thread that started the child: Prefect starts this server from
    the thread that first needs the API (the main thread or its long-lived event-loop thread), which
    lives as long as the process."""
    from prefect.server.api import server

    cls = server.SubprocessASGIServer
    if getattr(cls._run_uvicorn_command, "_dies_with_parent", False):
        return True

    def _run_uvicorn_command(self: Any) -> subprocess.Popen[Any]:
        import prefect
        from prefect.settings import get_current_settings

        args = [
            sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "error", "--lifespan", "on",
        ]  # fmt: skip
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        return subprocess.Popen(args=with_parent(args), env=env)

    _run_uvicorn_command._dies_with_parent = True  # type: ignore[attr-defined]
    cls._run_uvicorn_command = _run_uvicorn_command  # type: ignore[method-assign]
    return True


if __name__ == "__main__":
    die_with_parent()
    os.execvp(sys.argv[1], sys.argv[1:])
