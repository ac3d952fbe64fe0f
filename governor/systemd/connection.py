"""The system bus connection under :class:`~governor.systemd.bus.Systemd`, bounded and retried.

:class:`Connection` moves the bytes of one authenticated connection (jeepney serialises and
parses), every wait bounded by a deadline.  :class:`BusClient` holds one, opened lazily
(``Hello``, then ``Subscribe``), and runs every call through one retry-on-disconnect wrapper:
a connection found closed (dbus restarted, socket reset) is re-opened once and the call
repeated, then the error is raised.  Transport failures become :class:`SystemdError`, and a
D-Bus error reply the error its name maps to (:func:`~governor.systemd.errors.error_from_reply`).
jeepney is imported only when a connection is made.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import itertools
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from governor.systemd.errors import BUS_FIX, BusUnavailable, SystemdError, error_from_reply
from governor.systemd.messages import check_encodable, msg_hello, msg_subscribe

if TYPE_CHECKING:
    from jeepney import Message

SYSTEM_BUS = "/run/dbus/system_bus_socket"

_T = TypeVar("_T")

#: errors that mean the connection is gone (a reconnect may help), as opposed to a timeout
_DISCONNECT_ERRNOS = frozenset(
    {_errno.EBADF, _errno.ENOTCONN, _errno.EPIPE, _errno.ECONNRESET, _errno.ECONNABORTED}
)
#: what the socket and jeepney's parser raise on a broken exchange (garbage on the wire gives
#: KeyError, struct.error, ValueError, ...)
TRANSPORT_ERRORS = (OSError, ValueError, RuntimeError, KeyError, IndexError, struct.error)


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return False
    if isinstance(exc, ConnectionError):
        return True
    return isinstance(exc, OSError) and exc.errno in _DISCONNECT_ERRNOS


class Connection:
    """One authenticated bus connection, every wait bounded by a deadline.

    jeepney serialises and parses the messages (``Message.serialise``, ``Parser``); this only
    moves the bytes, so that ``Hello`` too has a time limit (jeepney's blocking
    ``DBusConnection`` sends it with none) and signals that arrive while a reply is awaited are
    kept when ``match`` wants them.
    """

    def __init__(self, sock: socket.socket) -> None:
        from jeepney import Parser

        self.sock = sock
        self.parser = Parser()
        self.serials = itertools.count(1)
        #: signals kept while ``match`` is set (everything else not a reply is dropped)
        self.match: Callable[[Message], bool] | None = None
        self.signals: deque[Message] = deque()

    def close(self) -> None:
        self.sock.close()

    def _receive(self, deadline: float) -> Message:
        while True:
            msg = self.parser.get_next_message()
            if msg is not None:
                return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no message from the bus in time")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError(_errno.ECONNRESET, "the bus closed the connection")
            self.parser.add_data(data)

    def _dispatch(self, msg: Message) -> None:
        from jeepney import MessageType

        if (
            msg.header.message_type is MessageType.signal
            and self.match is not None
            and self.match(msg)
        ):
            self.signals.append(msg)

    def call(self, msg: Message, timeout: float) -> Message:
        """Send ``msg`` and return its reply (method return or error)."""
        from jeepney import HeaderFields

        deadline = time.monotonic() + timeout
        serial = next(self.serials)
        self.sock.settimeout(timeout)
        self.sock.sendall(msg.serialise(serial=serial))
        while True:
            reply = self._receive(deadline)
            if reply.header.fields.get(HeaderFields.reply_serial) == serial:
                return reply
            self._dispatch(reply)

    def next_signal(self, deadline: float) -> Message:
        """The next kept signal; ``TimeoutError`` past ``deadline``."""
        while not self.signals:
            self._dispatch(self._receive(deadline))
        return self.signals.popleft()


class BusClient:
    """One connection to the system bus for :class:`~governor.systemd.bus.Systemd`'s calls.

    Connects lazily on the first call; :meth:`close` (or leaving a ``with`` block) closes.
    Every exchange, the connection's ``Hello`` included, is bounded by ``timeout`` seconds.
    Every call holds a (re-entrant) lock: one connection, one call at a time.
    """

    def __init__(self, socket_path: str = SYSTEM_BUS, *, timeout: float = 30.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.socket_path = socket_path
        self.timeout = timeout
        self._lock = threading.RLock()
        self._conn: Connection | None = None

    # -- connection --

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def _connect(self) -> Connection:
        from jeepney import AuthenticationError
        from jeepney.io.blocking import prep_socket

        try:
            sock = prep_socket(self.socket_path, timeout=self.timeout)
        except OSError as exc:  # ENOENT, ECONNREFUSED, EACCES; TimeoutError while authenticating
            err = exc.errno or (_errno.ETIMEDOUT if isinstance(exc, TimeoutError) else _errno.EIO)
            raise BusUnavailable(self.socket_path, err, exc.strerror or str(exc)) from exc
        except AuthenticationError as exc:
            raise BusUnavailable(
                self.socket_path, _errno.EACCES, f"authentication refused: {exc}"
            ) from exc
        conn = Connection(sock)
        try:
            self._roundtrip(conn, msg_hello(), None, "Hello")
            # systemd emits JobRemoved only while some client is subscribed
            self._roundtrip(conn, msg_subscribe(), None, "Subscribe")
        except BaseException:
            conn.close()
            raise
        return conn

    def _roundtrip(
        self, conn: Connection, msg: Message, unit: str | None, method: str
    ) -> tuple[Any, ...]:
        """Send ``msg``, wait (bounded) for its reply; a D-Bus error reply is raised mapped."""
        from jeepney import HeaderFields, MessageType

        reply = conn.call(msg, self.timeout)
        if reply.header.message_type is MessageType.error:
            name = reply.header.fields.get(HeaderFields.error_name)
            raise error_from_reply(name, reply.body, unit, method)
        return tuple(reply.body)

    def _with_connection(
        self, unit: str | None, method: str, op: Callable[[Connection], _T]
    ) -> _T:
        """Run ``op(connection)``; reconnect once if the connection turns out closed.

        Transport failures become :class:`SystemdError` and drop the connection (a timed-out
        exchange may leave half a message behind); D-Bus error replies come out of
        :meth:`_roundtrip` already mapped and leave the connection as it is.
        """
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    return op(self._conn)
                except SystemdError:
                    raise
                except TRANSPORT_ERRORS as exc:
                    self._drop()
                    if _is_disconnect(exc) and attempt == 1:
                        continue
                    raise self._transport_error(unit, method, exc) from exc
            raise AssertionError("unreachable")  # pragma: no cover

    def _transport_error(self, unit: str | None, method: str, exc: BaseException) -> SystemdError:
        if isinstance(exc, TimeoutError):
            return SystemdError(
                unit,
                method,
                f"no reply from systemd within {self.timeout:g} s",
                fix="is systemd busy or hung? (systemctl list-jobs)",
            )
        if _is_disconnect(exc):
            return SystemdError(
                unit,
                method,
                f"the bus connection to {self.socket_path} was lost, and again after a "
                f"reconnect: {exc}",
                fix=BUS_FIX,
            )
        return SystemdError(unit, method, f"bus protocol error: {exc}")

    def _call(self, unit: str | None, method: str, msg: Message) -> tuple[Any, ...]:
        check_encodable(unit, method, msg)
        return self._with_connection(unit, method, lambda c: self._roundtrip(c, msg, unit, method))
