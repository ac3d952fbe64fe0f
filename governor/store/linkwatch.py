"""A backstop for a PostgreSQL link that went dead under an open connection.

libpq has no read timeout: a statement waits for its answer as long as the socket stays
open.  The kernel's TCP settings the daemon asks for (:data:`governor.store.gate.PG_TCP_ARGS`:
keepalives and ``TCP_USER_TIMEOUT``) end such a connection in about 20 s, but not in every
state: in the fleet test (tests/kernel/test_fleet_kernel.py, a blackholed route) a pass once
waited out the whole 60 s outage, with nothing logged, and went on when the route came back.
A probe in the VM showed why: the statement's bytes sat unsent in the socket (the route
refused them), while QEMU's side of the link went on sending acknowledgements (a few
seconds to tens of seconds apart); each one reset the kernel's zero-window probe count and
its ``TCP_USER_TIMEOUT`` clock, and kept the link looking alive.  The statement went
through when the route came back, 41 s later.

:class:`LinkWatch` watches every open connection of the engine from its own thread, every
:data:`CHECK_EVERY` seconds.  A live link answers something at least every keepalive
round (10 s idle + 5 s: the peer acknowledges the probe).  A connection is dead when, for
:data:`STALL` seconds, either

* its socket has received no acknowledgement at all (``tcpi_last_ack_recv`` of
  ``TCP_INFO``): the link is silent both ways; or
* bytes have been waiting in its send queue (``SIOCOUTQ``: unsent or unacknowledged) and
  not one more byte has been acknowledged (``tcpi_bytes_acked``): nothing gets out, even if
  something still comes in (the route that refuses our packets, above).  A live server that
  takes no byte of ours for that long (its receive window shut) is cut too: for a daemon
  that writes every 10 s it is as good as down, and its samples spool.

Its socket is shut down (``shutdown(2)``, both ways): the statement
waiting on it fails at once with libpq's "server closed the connection unexpectedly", the
pass spools its samples and the database is checked again on the next pass, as for any
other outage.  The connection is logged once, with which of the two it was and for how long.

Only sockets are touched, never the connection objects (they belong to the threads using
them): the socket is found again by its inode each time (a descriptor closed meanwhile,
and its number reused, is left alone).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import termios
import threading
import time
import weakref
from collections.abc import Callable
from fcntl import ioctl
from typing import Any, Final, NamedTuple

from sqlalchemy import Engine, event

log = logging.getLogger("governor.store")

#: seconds without an acknowledgement from the server after which a link is dead: above a
#: live link's longest silence (keepalives_idle 10 s + keepalives_interval 5 s) with room
#: for a slow peer, and below the kernel's own give-up in the states where it does give up
STALL: Final = 30.0
#: seconds between two looks at the connections
CHECK_EVERY: Final = 5.0

#: struct tcp_info (linux/tcp.h): tcpi_state is its first byte (TCP_ESTABLISHED: 1); the
#: u32 tcpi_last_ack_recv is at byte 56 (after 8 bytes of u8 fields and eleven u32), the
#: u64 tcpi_bytes_acked at byte 120 (Linux 4.1 and later)
_TCP_INFO_LEN: Final = 128
_LAST_ACK_RECV_AT: Final = 56
_BYTES_ACKED_AT: Final = 120
_TCP_ESTABLISHED: Final = 1


class TcpState(NamedTuple):
    """What the watch reads of an established TCP socket."""

    #: milliseconds since the socket last received an acknowledgement
    last_ack_ms: int
    #: bytes in the send queue: sent and not acknowledged, or not sent yet (SIOCOUTQ)
    queued: int
    #: bytes acknowledged by the peer over the connection's life (None: an older kernel)
    acked: int | None


def tcp_state(fd: int) -> TcpState | None:
    """The state of socket ``fd`` (``None``: not an established TCP socket)."""
    with socket.socket(fileno=os.dup(fd)) as s:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        if len(info) < _LAST_ACK_RECV_AT + 4 or info[0] != _TCP_ESTABLISHED:
            return None
        queued = struct.unpack("=i", ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    acked = (int(struct.unpack_from("=Q", info, _BYTES_ACKED_AT)[0])
             if len(info) >= _BYTES_ACKED_AT + 8 else None)
    return TcpState(int(struct.unpack_from("=I", info, _LAST_ACK_RECV_AT)[0]), queued, acked)


class _Link:
    """One connection's socket: its descriptor and inode when the connection was made, and
    since when (monotonic seconds) its queued bytes have been waiting with its count of
    acknowledged bytes at ``acked`` (``None``: nothing waiting at the last look)."""

    __slots__ = ("acked", "cut", "fd", "ino", "waiting_since")

    def __init__(self, fd: int, ino: int) -> None:
        self.fd, self.ino, self.cut = fd, ino, False
        self.acked: int | None = None
        self.waiting_since: float | None = None

    def stuck_for(self, state: TcpState, now: float) -> float:
        """Seconds the send queue has waited without one more byte acknowledged (0: not
        waiting, or it moved since the last look)."""
        if state.queued <= 0 or state.acked is None:
            self.waiting_since = self.acked = None
            return 0.0
        if self.waiting_since is None or state.acked != self.acked:
            self.waiting_since, self.acked = now, state.acked
            return 0.0
        return now - self.waiting_since


class LinkWatch:
    """Watches the connections ``engine`` makes (see the module doc).  :meth:`stop` ends
    the thread; ``stall`` (the silence rule, and the queue's unless ``stuck`` is given),
    ``stuck`` and ``every`` are for tests."""

    def __init__(self, engine: Engine, *, shown: str, stall: float = STALL,
                 stuck: float | None = None, every: float = CHECK_EVERY,
                 socket_of: Callable[[Any], int] | None = None) -> None:
        self.shown = shown
        self.stall_ms = int(stall * 1000)
        self.stuck_ms = int((stall if stuck is None else stuck) * 1000)
        self.every = every
        #: connections cut so far
        self.cuts = 0
        self._socket_of = socket_of or _libpq_socket
        self._links: weakref.WeakKeyDictionary[Any, _Link] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        event.listen(engine, "connect", self._connected)
        self._thread = threading.Thread(target=self._run, name="db-link-watch", daemon=True)
        self._thread.start()

    def _connected(self, dbapi_connection: Any, _record: Any) -> None:
        try:
            fd = self._socket_of(dbapi_connection)
            ino = os.fstat(fd).st_ino
        except (OSError, ValueError, AttributeError) as e:
            log.debug("database link not watched", extra={"error": str(e)})
            return
        with self._lock:
            self._links[dbapi_connection] = _Link(fd, ino)

    def check(self) -> int:
        """One look at every connection: cut the dead ones; returns how many were cut."""
        with self._lock:
            links = list(self._links.values())
        cut = 0
        for link in links:
            if not link.cut and self._check(link):
                cut += 1
        return cut

    def _check(self, link: _Link) -> bool:
        try:
            fd = os.dup(link.fd)
        except OSError:          # closed: the connection is gone
            return False
        try:
            if os.fstat(fd).st_ino != link.ino:   # closed, and the number reused
                return False
            state = tcp_state(fd)
            if state is None:
                return False
            stuck = link.stuck_for(state, time.monotonic())
            why: dict[str, float] = {"silent_s": round(state.last_ack_ms / 1000, 1)}
            if stuck * 1000 >= self.stuck_ms:
                why.update(queued_bytes=state.queued, stuck_s=round(stuck, 1))
            elif state.last_ack_ms < self.stall_ms:
                return False
            # counted before the cut: whoever sees its statement fail sees the count
            link.cut = True
            self.cuts += 1
            with socket.socket(fileno=os.dup(fd)) as s:
                s.shutdown(socket.SHUT_RDWR)
        except OSError:
            if link.cut:      # the shutdown failed: not cut
                link.cut = False
                self.cuts -= 1
            return False
        finally:
            os.close(fd)
        log.warning("database link dead: connection cut", extra={
            "database": self.shown, **why,
            "fix": "nothing acknowledged by the server for silent_s, or the bytes waiting "
                   "to go out (queued_bytes) not taken for stuck_s: a dropped "
                   "route, a firewall, a host gone.  The statement waiting on it fails, "
                   "samples spool and are stored when the database answers again"})
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.check()
            except Exception:   # never let the watch die quietly: it is a backstop
                log.exception("database link watch failed a round")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _libpq_socket(dbapi_connection: Any) -> int:
    """The socket of a psycopg (3) connection."""
    return int(dbapi_connection.pgconn.socket)
