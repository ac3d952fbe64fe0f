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
