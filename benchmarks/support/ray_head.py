"""A throw-away Ray head for tests and benchmarks (not part of the library: a run joins a configured
cluster or lets `ray.init` start its own)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from potstill.labeling.ray_shards import LOOPBACK_ENV


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalRayHead:
    """A Ray head on 127.0.0.1 owned by the caller (tests, benchmarks): `ray start --head --block` in its
    own process group, free ports, its own short temp dir. `stop()` signals that group only: `ray stop`
    would stop every Ray on the machine, other users' clusters included."""

    address: str
    process: subprocess.Popen
    temp_dir: Path

    @classmethod
    def start(cls, num_cpus: int, timeout_s: float = 120.0) -> LocalRayHead:
        temp_dir = Path(tempfile.mkdtemp(prefix="pst-ray-", dir="/tmp"))  # Ray's socket paths: < 108 chars
        port = _free_port()
        ray = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray, "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", str(num_cpus),
            "--include-dashboard", "false", "--temp-dir", str(temp_dir),
            "--ray-client-server-port", str(_free_port()),
            "--dashboard-agent-listen-port", str(_free_port()),
            "--metrics-export-port", str(_free_port()),
        ]  # fmt: skip
        # Ray 2.60 turns token auth on whenever ~/.ray/auth_token exists (any earlier local `ray.init()`
        # writes one), for `ray start` and its clients separately: a file shared by every Ray user on the
        # machine. This head is on 127.0.0.1 and lives for one test or benchmark, so it runs without, and
        # so does this process, its client.
        os.environ["RAY_AUTH_MODE"] = "disabled"
        env = {**os.environ, LOOPBACK_ENV: "0", "RAY_USAGE_STATS_ENABLED": "0"}
        log_path = temp_dir / "ray-start.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        head = cls(f"127.0.0.1:{port}", proc, temp_dir)
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log_path.read_text()[-3000:]
                head.stop()
                raise RuntimeError(f"ray start failed:\n{text}")
            time.sleep(0.5)
        return head

    def stop(self) -> None:
        """SIGTERM the head's process group, SIGKILL what is left of it after 3 s (Ray would otherwise
        drain for up to 30 s; nothing of a test head needs draining), and remove the temp dir."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=3)
            os.killpg(self.process.pid, signal.SIGKILL)  # the group outlives its leader: GCS, raylet
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
