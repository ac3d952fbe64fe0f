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
import os
import posixpath
import re
import stat
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from governor.systemd.connection import SYSTEM_BUS, TRANSPORT_ERRORS, BusClient, Connection
from governor.systemd.errors import (
    ERR_NO_SUCH_UNIT,
    ERR_NO_UNIT_FOR_PID,
    ERR_UNIT_EXISTS,
    BusUnavailable,
    NoSuchUnit,
    SystemdError,
    UnitExists,
    error_from_reply,
    job_error,
)
from governor.systemd.messages import (
    MANAGER_IFACE,
    MANAGER_PATH,
    UNIT_IFACE,
    DBusValue,
    Property,
    check_encodable,
    job_removed_rule,
    msg_add_match,
    msg_attach_processes,
    msg_get_property,
    msg_get_unit,
    msg_get_unit_by_pid,
    msg_load_unit,
    msg_remove_match,
    msg_reset_failed_unit,
    msg_set_unit_properties,
    msg_start_transient_unit,
    msg_stop_unit,
    msg_subscribe,
)

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
# defined in errors.py and messages.py; tests/unit/test_systemd_bus.py reads them here
__all__ += [
    "ERR_NO_SUCH_UNIT",
    "ERR_NO_UNIT_FOR_PID",
    "ERR_UNIT_EXISTS",
    "error_from_reply",
    "msg_subscribe",
]


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


def _subcgroup(subcgroup: str) -> str:
    """AttachProcessesToUnit's sub-cgroup: "" (the unit's own cgroup) or a clean absolute path."""
    if subcgroup in ("", "/"):
        return ""
    path = subcgroup if subcgroup.startswith("/") else "/" + subcgroup
    if posixpath.normpath(path) != path or "/.." in path:
        raise ValueError(f"bad sub-cgroup path {subcgroup!r}: must be clean, without '..'")
    return path


def _str_arg(body: Sequence[object], unit: str | None, method: str) -> str:
    if body and isinstance(body[0], str):
        return body[0]
    raise SystemdError(unit, method, f"unexpected reply {body!r} (expected one string)")


class Systemd(BusClient):
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
        super().__init__(socket_path, timeout=timeout)
        self._version: int | None = None

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
        check_encodable(unit, method, msg)
        from jeepney import MatchRule

        rule = job_removed_rule(unit)
        local = MatchRule(
            type="signal", interface=MANAGER_IFACE, member="JobRemoved", path=MANAGER_PATH
        )
        local.add_arg_condition(2, unit)

        def begin(conn: Connection) -> tuple[Connection, str]:
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
            except TRANSPORT_ERRORS as exc:
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

    def _wait_job(self, conn: Connection, job: str) -> object:
        deadline = time.monotonic() + self.timeout
        while True:
            body = conn.next_signal(deadline).body
            if len(body) >= 4 and body[1] == job:
                return body[3]

    def _remove_match(self, conn: Connection, rule: str) -> None:
        """Best effort: a match dies with its connection anyway."""
        if conn is not self._conn:
            return
        try:
            self._roundtrip(conn, msg_remove_match(rule), None, "RemoveMatch")
        except SystemdError:
            pass
        except TRANSPORT_ERRORS:
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
