"""The D-Bus messages of systemd's API, built with jeepney: pure, no I/O.

One function per method call (``msg_start_transient_unit``, ``msg_get_unit``, ...), the
bus match rule for a unit's ``JobRemoved`` signals, and :func:`check_encodable`, which
serialises a message once so that a bad argument is a clear :class:`SystemdError`.  The
tests check each call's signature and body.  jeepney is imported only when a message is
built.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from governor.systemd.errors import SystemdError

if TYPE_CHECKING:
    from jeepney import Message

#: a D-Bus variant as jeepney writes it: (signature, value), e.g. ("t", 67108864)
DBusValue = tuple[str, object]
#: a unit property for StartTransientUnit / SetUnitProperties: ("MemoryMax", ("t", 67108864))
Property = tuple[str, DBusValue]

BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"


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


def msg_hello() -> Message:
    return _message("Hello", path=DBUS_PATH, interface=DBUS_NAME, destination=DBUS_NAME)


def check_encodable(unit: str | None, method: str, msg: Message) -> None:
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
