"""A small, typed client of systemd's D-Bus API (``org.freedesktop.systemd1``) over jeepney.

What it does, after runc's ``libcontainer/cgroups/systemd`` (``common.go``, ``dbus.go``):

* :meth:`Systemd.start_transient_unit` calls ``StartTransientUnit`` in mode ``replace`` and
  waits for its job's ``JobRemoved`` signal (bounded by ``timeout``).  On
  ``org.freedesktop.systemd1.UnitExists`` a *failed or inactive* leftover of the same name is
  reset (``ResetFailedUnit``) and the start retried once; an *active* unit is reported as
  :class:`UnitExists` and the caller decides.
* Every call goes through one retry-on-disconnect wrapper: a connection found closed (dbus
  restarted, socket reset) is re-opened once and the call repeated, then the error is raised.
* :meth:`Systemd.version` reads the Manager's ``Version`` (``"252.38-1~deb12u1"`` -> 252) so
  callers can gate properties that older systemd versions reject.

Errors are :class:`SystemdError` (a :class:`~governor.errors.GovernorError`), always raised
``from`` their cause; no jeepney exception leaks.  jeepney is imported only when a call is
made, so importing this module (for the error classes or :func:`sd_booted`) costs nothing.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import itertools
import os
import posixpath
import re
import socket
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from governor.errors import GovernorError

if TYPE_CHECKING:
    from jeepney import Message

__all__ = [
    "SYSTEM_BUS",
    "BusUnavailable",
    "DBusValue",
    "NoSuchUnit",
    "Property",
    "Systemd",
    "SystemdError",
    "UnitExists",
    "parse_version",
    "sd_booted",
]

#: a D-Bus variant as jeepney writes it: (signature, value), e.g. ("t", 67108864)
DBusValue = tuple[str, object]
#: a unit property for StartTransientUnit / SetUnitProperties: ("MemoryMax", ("t", 67108864))
Property = tuple[str, DBusValue]

SYSTEM_BUS = "/run/dbus/system_bus_socket"

BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"

ERR_UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
ERR_NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
ERR_NO_UNIT_FOR_PID = "org.freedesktop.systemd1.NoUnitForPID"

BUS_FIX = "is dbus running? (systemctl status dbus.socket)"

#: fixes for D-Bus error names; ``{unit}`` is filled in
_ERROR_FIXES: dict[str, str] = {
    ERR_UNIT_EXISTS: "the unit is already active: reuse it, or stop it first "
    "(systemctl stop {unit})",
    ERR_NO_SUCH_UNIT: "the unit is not loaded (systemctl status {unit})",
    ERR_NO_UNIT_FOR_PID: "the process belongs to no loaded unit, or has exited",
    "org.freedesktop.systemd1.NoSuchProcess": "the process has exited (or lives in another "
    "PID namespace)",
    "org.freedesktop.systemd1.UnitMasked": "the unit is masked (systemctl unmask {unit})",
    "org.freedesktop.systemd1.TransactionIsDestructive": "a conflicting job is queued: "
    "retry, or use mode 'replace' (systemctl list-jobs)",
    "org.freedesktop.DBus.Error.AccessDenied": "run governor as root: systemd refuses unit "
    "changes from unprivileged callers",
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": "run governor as root: "
    "systemd refuses unit changes from unprivileged callers",
    "org.freedesktop.DBus.Error.InvalidArgs": "a unit name, property name, value or D-Bus "
    "signature is wrong for this systemd (systemctl --version; systemd.resource-control(5))",
    "org.freedesktop.DBus.Error.PropertyReadOnly": "this property cannot be changed at runtime",
    "org.freedesktop.DBus.Error.UnknownProperty": "this systemd has no such property "
    "(systemctl --version)",
    "org.freedesktop.DBus.Error.UnknownInterface": "the unit has no such interface (a slice "
    "is org.freedesktop.systemd1.Slice, a scope org.freedesktop.systemd1.Scope)",
    "org.freedesktop.DBus.Error.ServiceUnknown": "systemd is not on this bus: is it PID 1? "
    "(test -d /run/systemd/system)",
    "org.freedesktop.DBus.Error.NameHasNoOwner": "systemd is not on this bus: is it PID 1? "
    "(test -d /run/systemd/system)",
    "org.freedesktop.DBus.Error.NoReply": "systemd did not answer in time: is it busy or "
    "hung? (systemctl list-jobs)",
    "org.freedesktop.DBus.Error.LimitsExceeded": "the bus refused the call: too many "
    "connections or match rules (journalctl -u dbus)",
}

#: fixes for a job's result other than "done"
_JOB_FIXES: dict[str, str] = {
    "failed": "see systemctl status {unit} and journalctl -u {unit}",
    "timeout": "the unit's own start/stop timeout expired (systemctl status {unit})",
    "canceled": "another job replaced it (a concurrent start or stop of {unit}); retry",
    "dependency": "a unit it depends on failed, for a slice or scope its parent slice "
    "(systemctl --failed)",
    "skipped": "the unit's start condition was not met (systemctl status {unit})",
    "invalid": "the job does not apply to this unit (systemctl status {unit})",
}


class SystemdError(GovernorError):
    """A call to systemd failed.

    ``unit`` is the unit the call was about (``None`` for manager-wide calls), ``method`` the
    D-Bus method (or ``connect``), ``name`` the D-Bus error name (``None`` when the failure was
    not a D-Bus error reply: a job result, a timeout, a lost connection), ``detail`` systemd's
    own message and ``fix`` what to do about it, when known.
    """

    def __init__(
        self,
        unit: str | None,
        method: str,
        detail: str,
        *,
        name: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.unit = unit
        self.method = method
        self.name = name
        self.detail = detail
        self.fix = fix
        msg = f"systemd {method}"
        if unit:
            msg += f" of {unit}"
        msg += f": {detail}"
        if name:
            msg += f" [{name}]"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


class UnitExists(SystemdError):
    """A unit of that name is already loaded (and, from start_transient_unit, active)."""


class NoSuchUnit(SystemdError):
    """The unit is not loaded (or, from unit_by_pid, no unit holds the process)."""


class BusUnavailable(SystemdError):
    """The system bus socket cannot be connected to (or refused to authenticate us)."""

    def __init__(self, socket_path: str, err: int, detail: str = "") -> None:
        self.socket_path = socket_path
        self.errno = err
        code = _errno.errorcode.get(err, str(err))
        text = detail or os.strerror(err)
        super().__init__(
            None,
            "connect",
            f"cannot connect to the system bus at {socket_path}: [{code}] {text}",
            fix=BUS_FIX,
        )


def sd_booted(run_dir: str = "/run/systemd/system") -> bool:
    """Whether systemd is the init system, like sd_booted(3): ``run_dir`` is a directory.

    ``lstat``, as systemd does: a symlink to a directory does not count.
    """
    try:
        return stat.S_ISDIR(os.lstat(run_dir).st_mode)
    except OSError:
        return False


_VERSION_RE = re.compile(r'^["v]*(\d+)')


def parse_version(text: str) -> int:
    """The major number of a systemd ``Version`` string: ``"252.38-1~deb12u1"`` -> 252.

    Accepts runc's forms too: ``"v245.4-1.fc32"``, ``"245"``, ``'"245-1.fc32"'``.
    Raises ``ValueError`` when there is no leading number.
    """
    m = _VERSION_RE.match(text.strip())
    if m is None:
        raise ValueError(f"cannot parse a systemd version from {text!r}")
    return int(m.group(1))


def error_from_reply(
    name: str | None, body: Sequence[object], unit: str | None, method: str
) -> SystemdError:
    """The :class:`SystemdError` (or subclass) for a D-Bus error reply of ``method``."""
    detail = body[0] if body and isinstance(body[0], str) else (name or "unknown error")
    fix = _ERROR_FIXES.get(name or "")
    if fix is not None:
        fix = fix.format(unit=unit or "UNIT")
    cls: type[SystemdError] = SystemdError
    if name == ERR_UNIT_EXISTS:
        cls = UnitExists
    elif name in (ERR_NO_SUCH_UNIT, ERR_NO_UNIT_FOR_PID):
        cls = NoSuchUnit
    return cls(unit, method, detail, name=name, fix=fix)


def job_error(unit: str, method: str, job: str, result: str) -> SystemdError:
    """The error for a job that finished with ``result`` other than ``done``."""
    fix = _JOB_FIXES.get(result)
    return SystemdError(
        unit,
        method,
        f"job {job} finished with result {result!r}",
        fix=fix.format(unit=unit) if fix else None,
    )


# ---- message construction (pure: no I/O; the tests check each call's signature and body) ----


def _message(
    member: str,
    signature: str | None = None,
    body: tuple[object, ...] = (),
    *,
    path: str = MANAGER_PATH,
    interface: str = MANAGER_IFACE,
    destination: str = BUS_NAME,
) -> Message:
    """A method call message to ``destination`` (systemd's Manager by default)."""
    from jeepney import DBusAddress, new_method_call

    addr = DBusAddress(path, bus_name=destination, interface=interface)
    return new_method_call(addr, member, signature, body)


def msg_start_transient_unit(name: str, mode: str, properties: Sequence[Property]) -> Message:
    # the last argument, aux units, is unused by systemd for most unit types: empty
    return _message(
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        (name, mode, [(k, v) for k, v in properties], []),
    )


def msg_set_unit_properties(name: str, runtime: bool, properties: Sequence[Property]) -> Message:
    return _message(
        "SetUnitProperties", "sba(sv)", (name, runtime, [(k, v) for k, v in properties])
    )


def msg_attach_processes(unit: str, subcgroup: str, pids: Sequence[int]) -> Message:
    return _message("AttachProcessesToUnit", "ssau", (unit, subcgroup, list(pids)))


def msg_stop_unit(name: str, mode: str) -> Message:
    return _message("StopUnit", "ss", (name, mode))


def msg_reset_failed_unit(name: str) -> Message:
    return _message("ResetFailedUnit", "s", (name,))


def msg_get_unit(name: str) -> Message:
    return _message("GetUnit", "s", (name,))


def msg_load_unit(name: str) -> Message:
    return _message("LoadUnit", "s", (name,))


def msg_get_unit_by_pid(pid: int) -> Message:
    return _message("GetUnitByPID", "u", (pid,))


def msg_subscribe() -> Message:
    return _message("Subscribe")


def msg_get_property(path: str, interface: str, prop: str) -> Message:
    return _message("Get", "ss", (interface, prop), path=path, interface=PROPERTIES_IFACE)


def job_removed_rule(unit: str) -> str:
    """The bus match rule for systemd's ``JobRemoved`` signals about ``unit``.

    JobRemoved(u id, o job, s unit, s result): ``arg2`` narrows it to this unit, so an idle
    connection is not sent every job on the host.
    """
    from jeepney import MatchRule

    rule = MatchRule(
        type="signal",
        sender=BUS_NAME,
        interface=MANAGER_IFACE,
        member="JobRemoved",
        path=MANAGER_PATH,
    )
    rule.add_arg_condition(2, unit)
    return str(rule.serialise())


def msg_add_match(rule: str) -> Message:
    return _message(
        "AddMatch", "s", (rule,), path=DBUS_PATH, interface=DBUS_NAME, destination=DBUS_NAME
    )


def msg_remove_match(rule: str) -> Message:
    return _message(
        "RemoveMatch", "s", (rule,), path=DBUS_PATH, interface=DBUS_NAME, destination=DBUS_NAME
    )


def _subcgroup(subcgroup: str) -> str:
    """AttachProcessesToUnit's sub-cgroup: "" (the unit's own cgroup) or a clean absolute path."""
    if subcgroup in ("", "/"):
        return ""
    path = subcgroup if subcgroup.startswith("/") else "/" + subcgroup
    if posixpath.normpath(path) != path or "/.." in path:
        raise ValueError(f"bad sub-cgroup path {subcgroup!r}: must be clean, without '..'")
    return path


# ---- the client ----

_T = TypeVar("_T")

#: errors that mean the connection is gone (a reconnect may help), as opposed to a timeout
_DISCONNECT_ERRNOS = frozenset(
    {_errno.EBADF, _errno.ENOTCONN, _errno.EPIPE, _errno.ECONNRESET, _errno.ECONNABORTED}
)
#: what the socket and jeepney's parser raise on a broken exchange (garbage on the wire gives
#: KeyError, struct.error, ValueError, ...)
_TRANSPORT_ERRORS = (OSError, ValueError, RuntimeError, KeyError, IndexError, struct.error)


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return False
    if isinstance(exc, ConnectionError):
        return True
    return isinstance(exc, OSError) and exc.errno in _DISCONNECT_ERRNOS


def _str_arg(body: Sequence[object], unit: str | None, method: str) -> str:
    if body and isinstance(body[0], str):
        return body[0]
    raise SystemdError(unit, method, f"unexpected reply {body!r} (expected one string)")


def msg_hello() -> Message:
    return _message("Hello", path=DBUS_PATH, interface=DBUS_NAME, destination=DBUS_NAME)


class _Connection:
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


class Systemd:
    """A client of systemd's Manager on the system bus.

    Connects lazily on the first call; :meth:`close` (or leaving a ``with`` block) closes.
    Every exchange, the connection's ``Hello`` included, is bounded by ``timeout`` seconds, and
    so is each job wait.

    Thread safety: one connection, every call serialised by a (re-entrant) lock.  A bus
    connection is one byte stream with one parser, and systemd handles its bus calls one at a
    time in its own event loop anyway, so a connection per thread would buy little beyond
    overlapping job waits, at the price of a socket and a ``Subscribe`` per thread (scheduler
    pools come and go).  A job wait holds the lock for at most ``timeout`` seconds; callers that
    must not wait pass ``wait=False``.
    """

    def __init__(self, socket_path: str = SYSTEM_BUS, *, timeout: float = 30.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.socket_path = socket_path
        self.timeout = timeout
        self._lock = threading.RLock()
        self._conn: _Connection | None = None
        self._version: int | None = None

    # -- connection --

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> Systemd:
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

    def _connect(self) -> _Connection:
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
        conn = _Connection(sock)
        try:
            self._roundtrip(conn, msg_hello(), None, "Hello")
            # systemd emits JobRemoved only while some client is subscribed
            self._roundtrip(conn, msg_subscribe(), None, "Subscribe")
        except BaseException:
            conn.close()
            raise
        return conn

    def _roundtrip(
        self, conn: _Connection, msg: Message, unit: str | None, method: str
    ) -> tuple[Any, ...]:
        """Send ``msg``, wait (bounded) for its reply; a D-Bus error reply is raised mapped."""
        from jeepney import HeaderFields, MessageType

        reply = conn.call(msg, self.timeout)
        if reply.header.message_type is MessageType.error:
            name = reply.header.fields.get(HeaderFields.error_name)
            raise error_from_reply(name, reply.body, unit, method)
        return tuple(reply.body)

    def _with_connection(
        self, unit: str | None, method: str, op: Callable[[_Connection], _T]
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
                except _TRANSPORT_ERRORS as exc:
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
        _check_encodable(unit, method, msg)
        return self._with_connection(unit, method, lambda c: self._roundtrip(c, msg, unit, method))

    # -- jobs --

    def _run_job(
        self, unit: str, method: str, msg: Message, *, wait: bool, starting: bool
    ) -> None:
        """Call a job-returning method; with ``wait``, wait for its job's JobRemoved signal.

        The bus match (AddMatch) and the local filter are in place before the call is sent, so
        a job that finishes before the reply is read is not missed: signals read while waiting
        for the reply are kept too.  Signals about other jobs of the same unit are skipped by
        their job path.
        """
        if not wait:
            self._call(unit, method, msg)
            return
        _check_encodable(unit, method, msg)
        from jeepney import MatchRule

        rule = job_removed_rule(unit)
        local = MatchRule(
            type="signal", interface=MANAGER_IFACE, member="JobRemoved", path=MANAGER_PATH
        )
        local.add_arg_condition(2, unit)

        def begin(conn: _Connection) -> tuple[_Connection, str]:
            self._roundtrip(conn, msg_add_match(rule), unit, "AddMatch")
            conn.signals.clear()
            conn.match = local.matches
            try:
                job = _str_arg(self._roundtrip(conn, msg, unit, method), unit, method)
            except SystemdError:
                conn.match = None
                self._remove_match(conn, rule)
                raise
            return conn, job

        with self._lock:
            conn, job = self._with_connection(unit, method, begin)
            try:
                result = self._wait_job(conn, job)
            except TimeoutError as exc:
                conn.match = None
                self._remove_match(conn, rule)
                raise SystemdError(
                    unit,
                    method,
                    f"timed out waiting for job {job} after {self.timeout:g} s",
                    fix=f"is systemd busy? (systemctl list-jobs; systemctl status {unit})",
                ) from exc
            except _TRANSPORT_ERRORS as exc:
                self._drop()
                state = self.unit_active_state(unit)  # reconnects
                if (state == "active") if starting else (state in (None, "inactive")):
                    return
                raise SystemdError(
                    unit,
                    method,
                    f"lost the bus connection while waiting for job {job}; the unit is now "
                    f"{state or 'not loaded'}",
                    fix=f"systemctl status {unit}",
                ) from exc
            finally:
                conn.match = None
                conn.signals.clear()
            self._remove_match(conn, rule)
        if result != "done":
            raise job_error(unit, method, job, str(result))

    def _wait_job(self, conn: _Connection, job: str) -> object:
        deadline = time.monotonic() + self.timeout
        while True:
            body = conn.next_signal(deadline).body
            if len(body) >= 4 and body[1] == job:
                return body[3]

    def _remove_match(self, conn: _Connection, rule: str) -> None:
        """Best effort: a match dies with its connection anyway."""
        if conn is not self._conn:
            return
        try:
            self._roundtrip(conn, msg_remove_match(rule), None, "RemoveMatch")
        except SystemdError:
            pass
        except _TRANSPORT_ERRORS:
            self._drop()

    # -- the API --

    def version(self) -> int:
        """systemd's major version (``Version`` "252.38-1~deb12u1" -> 252), cached."""
        with self._lock:
            if self._version is None:
                method = "Get Version"
                body = self._call(
                    None, method, msg_get_property(MANAGER_PATH, MANAGER_IFACE, "Version")
                )
                text = _variant_value(body, None, method)
                try:
                    self._version = parse_version(str(text))
                except ValueError as exc:
                    raise SystemdError(None, method, str(exc)) from exc
            return self._version

    def start_transient_unit(
        self,
        name: str,
        properties: Sequence[Property],
        *,
        mode: str = "replace",
        wait: bool = True,
    ) -> None:
        """Start transient unit ``name`` with ``properties``; with ``wait``, until its job ends.

        A job result other than "done" is a :class:`SystemdError` naming it.  If the name is
        taken by a failed or inactive leftover, it is reset and the start retried once; if the
        unit is active (or activating, ...) :class:`UnitExists` is raised: the caller decides.
        """
        method = "StartTransientUnit"
        msg = msg_start_transient_unit(name, mode, properties)
        with self._lock:
            try:
                self._run_job(name, method, msg, wait=wait, starting=True)
                return
            except UnitExists as exc:
                state = self.unit_active_state(name)
                if state not in (None, "failed", "inactive"):
                    raise UnitExists(
                        name, method, f"{exc.detail} (it is {state})", name=exc.name, fix=exc.fix
                    ) from exc
                if state is not None:
                    with contextlib.suppress(NoSuchUnit):  # collected in between: fine
                        self.reset_failed_unit(name)
            self._run_job(name, method, msg, wait=wait, starting=True)

    def set_unit_properties(
        self, name: str, properties: Sequence[Property], *, runtime: bool = True
    ) -> None:
        """Change properties of a loaded unit (``runtime``: until reboot, like --runtime)."""
        self._call(name, "SetUnitProperties", msg_set_unit_properties(name, runtime, properties))

    def attach_processes(self, unit: str, pids: Sequence[int], subcgroup: str = "") -> None:
        """Move ``pids`` into ``unit``'s cgroup (or its ``subcgroup``, for delegated units)."""
        method = "AttachProcessesToUnit"
        try:
            sub = _subcgroup(subcgroup)
        except ValueError as exc:
            raise SystemdError(unit, method, str(exc)) from exc
        self._call(unit, method, msg_attach_processes(unit, sub, pids))

    def stop_unit(self, name: str, *, mode: str = "replace", wait: bool = True) -> None:
        """Stop ``name`` (with ``wait``, until its job ends); :class:`NoSuchUnit` if not loaded."""
        self._run_job(name, "StopUnit", msg_stop_unit(name, mode), wait=wait, starting=False)

    def reset_failed_unit(self, name: str) -> None:
        self._call(name, "ResetFailedUnit", msg_reset_failed_unit(name))

    def _unit_path(self, name: str, *, load: bool) -> str | None:
        """The unit's object path; ``None`` when not loaded (with ``load``: LoadUnit's)."""
        try:
            return _str_arg(self._call(name, "GetUnit", msg_get_unit(name)), name, "GetUnit")
        except NoSuchUnit:
            if not load:
                return None
        return _str_arg(self._call(name, "LoadUnit", msg_load_unit(name)), name, "LoadUnit")

    def _get(self, unit: str, path: str, interface: str, prop: str) -> object:
        method = f"Get {prop}"
        body = self._call(unit, method, msg_get_property(path, interface, prop))
        return _variant_value(body, unit, method)

    def unit_active_state(self, name: str) -> str | None:
        """ActiveState ("active", "inactive", "failed", "activating", ...); None if not loaded."""
        with self._lock:
            path = self._unit_path(name, load=False)
            if path is None:
                return None
            return str(self._get(name, path, UNIT_IFACE, "ActiveState"))

    def unit_property(self, name: str, interface: str, prop: str) -> object:
        """One property of the unit (Properties.Get on its object path), unwrapped.

        ``interface`` is e.g. "org.freedesktop.systemd1.Unit", "...Slice", "...Scope".  A unit
        that is not loaded is loaded (LoadUnit) for the read, as ``systemctl show`` does.
        """
        with self._lock:
            path = self._unit_path(name, load=True)
            assert path is not None
            return self._get(name, path, interface, prop)

    def control_group(self, name: str) -> str | None:
        """The unit's ControlGroup ("/a.slice/a-b.slice"); None when not loaded or empty."""
        iface = _type_interface(name)  # ControlGroup lives on each unit type's own interface
        with self._lock:
            path = self._unit_path(name, load=False)
            if path is None:
                return None
            return str(self._get(name, path, iface, "ControlGroup")) or None

    def unit_by_pid(self, pid: int) -> str:
        """The name of the unit that holds ``pid`` (GetUnitByPID, then the unit's Id)."""
        who = f"pid {pid}"
        with self._lock:
            body = self._call(who, "GetUnitByPID", msg_get_unit_by_pid(pid))
            return str(self._get(who, _str_arg(body, who, "GetUnitByPID"), UNIT_IFACE, "Id"))


def _check_encodable(unit: str | None, method: str, msg: Message) -> None:
    """Serialise once up front, so a bad argument is a clear error and not a broken send."""
    from jeepney import HeaderFields

    try:
        msg.serialise(serial=1)
    except (TypeError, ValueError, KeyError, IndexError, struct.error, OverflowError) as exc:
        sig = msg.header.fields.get(HeaderFields.signature)
        raise SystemdError(
            unit,
            method,
            f"cannot encode the arguments as D-Bus {sig!r}: {exc!r}",
            fix="each property is (name, (signature, value)), e.g. "
            "('MemoryMax', ('t', 67108864)); org.freedesktop.systemd1(5) lists the types",
        ) from exc


_TYPE_INTERFACES = {
    "slice": "Slice",
    "scope": "Scope",
    "service": "Service",
    "socket": "Socket",
    "mount": "Mount",
    "swap": "Swap",
}


def _type_interface(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1]
    kind = _TYPE_INTERFACES.get(suffix)
    if kind is None:
        raise SystemdError(name, "Get ControlGroup", f"unit type {suffix!r} has no control group")
    return f"org.freedesktop.systemd1.{kind}"


def _variant_value(body: Sequence[object], unit: str | None, method: str) -> object:
    """The value inside a Properties.Get reply: body ((signature, value),)."""
    if body and isinstance(body[0], tuple) and len(body[0]) == 2:
        return body[0][1]
    raise SystemdError(unit, method, f"unexpected reply {body!r} (expected one variant)")
