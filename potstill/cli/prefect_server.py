"""Prefect's temporary API server, started so that it dies with `potstill run` (the CLI is the one part
of the library that may import Prefect: tests/test_layout.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from potstill.processes import with_parent


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
