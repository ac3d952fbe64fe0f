"""Creating and migrating the database schema (``governor db upgrade``/``current``), on
a URL: connects, works, disposes of the engine.  Failures are a
:class:`~governor.store.errors.DatabaseError` (URL masked, what failed, the fix)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from governor.store.db import (
    connect,
    current_revision,
    database_errors,
    head_revision,
    make_sqlite_file_private,
    missing_dirs,
    upgrade,
)


def upgrade_database(database_url: str, *,
                     connected: Callable[[Sequence[Path], bool], None] | None = None
                     ) -> tuple[str | None, str | None]:
    """Migrate to the newest schema; returns ``(revision before, revision after)``.

    A SQLite database's missing directories are created (mode 0700) and an existing file
    others could read is made mode 0600, before any connection to it; once connected,
    ``connected(directories created, file made private)`` is called (the command says
    so: creating the database is its job, but a typo in the path should not go
    unnoticed)."""
    with database_errors(database_url, "connect to"):
        created = missing_dirs(database_url)
        private = make_sqlite_file_private(database_url)  # before any connection to it
    engine = connect(database_url)
    if connected is not None:
        connected(created, private)
    try:
        with database_errors(database_url, "read"):
            before = current_revision(engine)
        with database_errors(database_url, "migrate"):
            after = upgrade(engine)
        return before, after
    finally:
        engine.dispose()


def schema_revisions(database_url: str) -> tuple[str | None, str]:
    """``(revision of the database or None, revision this governor needs)``."""
    engine = connect(database_url)
    try:
        with database_errors(database_url, "read"):
            return current_revision(engine), head_revision()
    finally:
        engine.dispose()
