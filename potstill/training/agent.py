"""`accelerate launch` with torchrun's rendezvous store listening on loopback only.

Why: the store's server (c10d `TCPStore`, created by torchrun's static rendezvous in this, the agent,
process) binds every interface whatever `--main_process_ip` says, so a single-machine training would open
a port to the network that anyone could connect to. For a loopback main address the server is given a
socket already bound to 127.0.0.1 (`master_listen_fd`); the ranks reach it through the agent store, and
gloo is pinned to `lo` by the launcher (`GLOO_SOCKET_IFNAME`). A training over several machines (another
main address) is left as torchrun makes it.

    python -m potstill.training.agent <accelerate launch arguments>
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost")
_listening: list[socket.socket] = []  # the bound sockets live as long as the agent


def loopback_store(make_store: Callable[..., Any]) -> Callable[..., Any]:
    """A `TCPStore` factory whose server, for a loopback host, listens on 127.0.0.1 alone."""

    def store(host_name: str, port: int, world_size: int | None = None, is_master: bool = False, *args: Any,
              **kwargs: Any) -> Any:  # fmt: skip
        if is_master and host_name in LOOPBACK and kwargs.get("master_listen_fd") is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
            _listening.append(sock)
            kwargs.update(master_listen_fd=sock.fileno(), use_libuv=False)
        return make_store(host_name, port, world_size, is_master, *args, **kwargs)

    return store


def main() -> None:
    import torch.distributed as dist
    from accelerate.commands.launch import main as accelerate_launch
    from torch.distributed.elastic.rendezvous import static_tcp_rendezvous

    static_tcp_rendezvous.TCPStore = loopback_store(dist.TCPStore)  # type: ignore[attr-defined]
    sys.argv = ["accelerate launch", *sys.argv[1:]]
    accelerate_launch()


if __name__ == "__main__":
    main()
