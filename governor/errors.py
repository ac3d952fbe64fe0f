"""The typed error hierarchy.

Every error a user can meet is a :class:`GovernorError`; the command line turns it into a
clear message and an exit code, never a traceback.  Errors about the kernel carry the path,
the file, the value and the errno, and are raised ``from`` the ``OSError`` behind them.
"""

from __future__ import annotations

import errno as _errno
import os


class GovernorError(Exception):
    """Base of every error governor raises on purpose."""

    #: exit code of the command line when this error ends a command (2: usage/environment)
    exit_code = 2


class ConfigError(GovernorError):
    """The configuration file (or an override) is wrong: names the file, key and value."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        where = ": ".join(x for x in (file, key) if x)
        super().__init__(f"{where}: {message}" if where else message)


class InvalidName(GovernorError, ValueError):
    """A tenant or group name that could build a path outside the governor's subtree."""

    def __init__(self, name: object, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"invalid group name {name!r}: {reason}")


class UnknownTenant(GovernorError):
    """``--tenant`` (or ``--group``) names nothing governor knows: a usage error, exit 2 from
    every command (usage, bill, events, ps, launch), with the same words everywhere.

    ``where`` says what was searched (the policy file, the database), ``known`` lists what
    exists, so the operator sees the typo.
    """

    exit_code = 2

    def __init__(self, tenant: str, *, group: str | None = None,
                 where: str = "not in the policy and never metered",
                 known: list[str] | None = None) -> None:
        self.tenant = tenant
        self.group = group
        what = f"group {tenant}/{group}" if group is not None else f"tenant {tenant!r}"
        msg = f"unknown {what}: {where}"
        if known is not None:
            msg += f" ({'groups' if group is not None else 'tenants'}: " \
                   f"{', '.join(sorted(known)) or 'none'})"
        super().__init__(msg)


class UnknownNode(GovernorError):
    """``--node`` names no node of the database: a usage error (exit 2), listing the nodes
    that are there, so the operator sees the typo."""

    exit_code = 2

    def __init__(self, node: str, *, known: list[str]) -> None:
        self.node = node
        self.known = known
        super().__init__(f"unknown node {node!r}: never metered in this database (nodes: "
                         f"{', '.join(sorted(known)) or 'none'})")


class NotCgroup2Error(GovernorError):
    """The host has no usable cgroup v2 hierarchy (or the path given is not one)."""


class CgroupError(GovernorError):
    """A read or write of a cgroup file failed.

    ``path`` is the group directory, ``file`` the interface file (or ``None`` for an
    operation on the directory itself), ``value`` what was being written.
    """

    def __init__(
        self,
        op: str,
        path: str,
        file: str | None,
        err: int,
        *,
        value: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.op = op
        self.path = path
        self.file = file
        self.errno = err
        self.value = value
        self.hint = hint
        target = os.path.join(path, file) if file else path
        name = _errno.errorcode.get(err, str(err))
        msg = f"{op} {target}"
        if value is not None:
            msg += f" value {value!r}"
        msg += f": [{name}] {os.strerror(err)}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class GroupGone(CgroupError):
    """The group was removed (ENOENT/ENODEV): it is gone, its values are not zero."""


class GroupBusy(CgroupError):
    """The group could not be removed because it still has processes or children."""


class MountError(GovernorError):
    """Remounting the cgroup2 hierarchy with other options failed, or did not take effect.

    ``options`` is the option string that was tried (``-o`` of mount(8)), ``errno`` the
    kernel's answer (``None`` when the remount succeeded but mountinfo disagrees), ``fix``
    what the operator can do about it.
    """

    def __init__(self, mount_point: str, options: str, *, err: int | None = None,
                 problem: str | None = None, fix: str) -> None:
        self.mount_point = mount_point
        self.options = options
        self.errno = err
        self.fix = fix
        msg = f"{mount_point}: remount -o {options}"
        if err is not None:
            msg += f": [{_errno.errorcode.get(err, str(err))}] {os.strerror(err)}"
        if problem:
            msg += f": {problem}"
        self.detail = msg  # what went wrong, without the fix
        super().__init__(f"{msg}. Fix: {fix}")
