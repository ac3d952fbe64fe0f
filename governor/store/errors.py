"""Errors of the store: the database is missing, unreachable or at the wrong schema."""

from __future__ import annotations

from governor.errors import GovernorError


class StoreError(GovernorError):
    """A database problem a user can act on."""


class SchemaOutOfDate(StoreError):
    """The database's schema revision is not the one this governor needs."""

    def __init__(self, current: str | None, needed: str, *, config_hint: str = "FILE") -> None:
        self.current = current
        self.needed = needed
        super().__init__(
            f"database schema at {current or 'nothing (empty database)'}, governor needs "
            f"{needed}: run `governor db upgrade --config {config_hint}`"
        )


class SchemaTooNew(StoreError):
    """The database was migrated by a newer governor than this one."""

    def __init__(self, current: str, needed: str) -> None:
        self.current = current
        self.needed = needed
        super().__init__(
            f"database schema at {current}, which this governor does not know (it needs "
            f"{needed}): the database was upgraded by a newer governor; upgrade governor"
        )


class DatabaseUnavailable(StoreError):
    """The database cannot be reached (connection refused, file unreadable...)."""


class DatabaseError(StoreError):
    """A command could not connect to, read, write or migrate the database.

    ``url`` is the database URL with its password masked, ``action`` what failed
    ("connect to", "read", "write", "migrate"), ``reason`` the driver's first line (never
    the password), ``fix`` what the operator can do.
    """

    def __init__(self, url: str, action: str, reason: str, fix: str) -> None:
        self.url = url
        self.action = action
        self.reason = reason
        self.fix = fix
        super().__init__(f"cannot {action} the database {url}: {reason}. Fix: {fix}")


class NodeNameTaken(StoreError):
    """A node whose identity (uid) is new claims a name another node's uid holds: two hosts
    must never write into one node's rows.  The operator gives one of them another name
    (``[governor] node`` in its configuration)."""


    def __init__(self, name: str, *, uid: str, holder: str) -> None:
        self.name = name
        self.uid = uid
        self.holder = holder
        super().__init__(
            f"node name {name!r} is taken: this host's node uid is {uid}, the database's "
            f"node {name!r} has uid {holder} (another host, or this host's state directory "
            f"was lost). Fix: set `node = \"<another name>\"` under [governor] in this "
            f"host's configuration; if it is the same host whose node-uid file was lost, "
            f"copy that node's uid back into the file")
