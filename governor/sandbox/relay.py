"""One guest connection relayed to a TCP service on the host: the program QEMU's user
network runs for each connection a guest makes to a ``guestfwd`` address (QEMU's
``guestfwd=tcp:ADDR:PORT-cmd:COMMAND``: COMMAND's stdin and stdout are the guest's
connection).  ``python -m governor.sandbox.relay HOST PORT`` connects to HOST:PORT and
copies bytes both ways until either side closes.

This is how a guest reaches a service that listens on the host's loopback only (the test
PostgreSQL of scripts/pg-test-server.sh) while the guest's network stays ``restrict=on``:
nothing else on the host or beyond is reachable from the guest.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

__all__ = ["relay"]

CHUNK = 1 << 16


def relay(host: str, port: int, fd_in: int = 0, fd_out: int = 1) -> int:
    """Copy ``fd_in`` -> ``host:port`` -> ``fd_out``; the guest's end of input becomes a
    half-close towards the service, whose close ends the relay.  0, or 1 when the service
    refused the connection (the guest then sees its connection closed)."""
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError as e:
        print(f"relay: cannot connect to {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sel = selectors.DefaultSelector()
    sel.register(fd_in, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "in":
                    data = os.read(fd_in, CHUNK)
                    if not data:
                        # the guest closed its side: pass the half-close on and keep
                        # copying what the service still sends back, until it closes too
                        sel.unregister(fd_in)
                        sock.shutdown(socket.SHUT_WR)
                        continue
                    sock.sendall(data)
                else:
                    data = sock.recv(CHUNK)
                    if not data:
                        return 0
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd_out, view):]
    except OSError:
        return 0   # either side reset: the connection is over, as a dropped link would be
    finally:
        sel.close()
        sock.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m governor.sandbox.relay HOST PORT", file=sys.stderr)
        return 2
    return relay(argv[0], int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
