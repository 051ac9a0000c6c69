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
import sys

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


if __name__ == "__main__":
    die_with_parent()
    os.execvp(sys.argv[1], sys.argv[1:])
