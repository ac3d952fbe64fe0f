"""The errors of systemd calls, each with what to do about it.

:class:`SystemdError` (a :class:`~governor.errors.GovernorError`) and its subclasses; the
fix for a D-Bus error reply (:func:`error_from_reply`) or a job's result other than ``done``
(:func:`job_error`), with the unit named.  :mod:`governor.systemd.bus` raises them, always
``from`` their cause.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Sequence

from governor.errors import GovernorError

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
