"""The exporter's HTTP server loop (issue #16): :class:`QuietHTTPServer`, socketserver's
threading HTTP server with an accept loop that sleeps until a connection comes, a
connection's deadline falls due or :meth:`~QuietHTTPServer.shutdown` is asked, and the
connections' deadlines (a client that stalls its TLS handshake or trickles its request is
shut down at its deadline, whatever its per-read timeouts).  socketserver's own loop woke
every ``poll_interval`` to look at its shutdown flag: five times a second at 0.2 s, idle
or not.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server whose accept loop has no clock (module doc)."""

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 request_timeout: float) -> None:
        self.request_timeout = request_timeout
        #: socket -> monotonic deadline of what it is doing (handshake, request)
        self._deadlines: dict[socket.socket, float] = {}
        self._deadlines_lock = threading.Lock()
        self.timed_out = 0   # connections shut down at their deadline
        #: the accept loop's wake-up (a deadline added, or shutdown): see serve_forever
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop_asked = False
        self._loop_lock = threading.Lock()
        self._running = False
        self._stopped = threading.Event()
        #: the accept loop's turns (tests: an idle exporter does not turn)
        self.turns = 0
        try:
            super().__init__(addr, handler)
        except BaseException:
            self._close_wake()
            raise

    # -- the accept loop: it sleeps until a connection, the earliest deadline or shutdown -
    def serve_forever(self, poll_interval: float | None = None) -> None:
        """socketserver's accept loop without its clock (issue #16): socketserver's wakes
        every ``poll_interval`` to look at its shutdown flag and run
        :meth:`service_actions` (five times a second, idle or not, at 0.2 s); this one
        sleeps in one ``select`` until a connection comes, a connection's deadline falls
        due (:meth:`watch` wakes it to take a new one) or :meth:`shutdown` wakes it.
        ``poll_interval`` is accepted and not used."""
        with self._loop_lock:
            if self._stop_asked:   # shut down before it started: a stopped server stays so
                return
            self._running = True
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while not self._stopping():
                    ready = sel.select(self._until_deadline())
                    self.turns += 1
                    if self._stopping():
                        break
                    for key, _ in ready:
                        if key.fileobj is self:
                            # socketserver's own accept-verify-process step
                            self._handle_request_noblock()  # type: ignore[attr-defined]
                        else:
                            with contextlib.suppress(OSError):
                                os.read(self._wake_r, 4096)
                    self.service_actions()
        finally:
            self._stopped.set()

    def _stopping(self) -> bool:
        return self._stop_asked

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has returned (not from its own
        thread, as socketserver's)."""
        with self._loop_lock:
            self._stop_asked = True
            running = self._running
        self._wake()
        if running:
            self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        self._close_wake()

    def _close_wake(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _until_deadline(self) -> float | None:
        """Seconds until the earliest deadline (None: none, sleep until woken)."""
        with self._deadlines_lock:
            if not self._deadlines:
                return None
            first = min(self._deadlines.values())
        return max(0.0, first - time.monotonic())

    # -- deadlines: the accept loop shuts a connection down at its deadline ---------------
    def watch(self, sock: socket.socket) -> None:
        with self._deadlines_lock:
            self._deadlines[sock] = time.monotonic() + self.request_timeout
        self._wake()   # the loop may be asleep with no deadline: it takes this one

    def unwatch(self, sock: socket.socket) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(sock, None)

    def service_actions(self) -> None:
        now = time.monotonic()
        with self._deadlines_lock:
            late = [s for s, t in self._deadlines.items() if t <= now]
            for s in late:
                del self._deadlines[s]
        for s in late:
            self.timed_out += 1
            # the plain socket's shutdown (not SSLSocket's, which drops its TLS state
            # under the thread reading it): that thread's recv/send returns at once
            with contextlib.suppress(OSError):
                socket.socket.shutdown(s, socket.SHUT_RDWR)

