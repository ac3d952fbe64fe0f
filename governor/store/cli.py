"""``governor db upgrade`` and ``governor db current``.

The lead's ``governor/cli.py`` adds :data:`db_group` and provides ``ctx.obj.database_url``;
the work is in :func:`run_db_upgrade` and :func:`run_db_current`.
"""

from __future__ import annotations

from typing import Any

import click

from governor.store.db import (
    connect,
    current_revision,
    database_errors,
    head_revision,
    make_sqlite_file_private,
    missing_dirs,
    upgrade,
)


def run_db_upgrade(database_url: str) -> tuple[str | None, str | None]:
    """Migrate to the newest schema; returns ``(revision before, revision after)``.

    A SQLite database's missing directories are created (mode 0700) and each is named on
    stderr, as ``install -d`` would show: creating the database is this command's job, but
    a typo in the path should not go unnoticed.  Failures are a
    :class:`~governor.store.errors.DatabaseError` (URL masked, what failed, the fix)."""
    with database_errors(database_url, "connect to"):
        created = missing_dirs(database_url)
        private = make_sqlite_file_private(database_url)  # before any connection to it
    engine = connect(database_url)
    for d in created:
        click.echo(f"governor: created directory {d} (mode 0700) for the database", err=True)
    if private:
        click.echo("governor: made the database file mode 0600 (others could read it)",
                   err=True)
    try:
        with database_errors(database_url, "read"):
            before = current_revision(engine)
        with database_errors(database_url, "migrate"):
            after = upgrade(engine)
        return before, after
    finally:
        engine.dispose()


def run_db_current(database_url: str) -> tuple[str | None, str]:
    """``(revision of the database or None, revision this governor needs)``."""
    engine = connect(database_url)
    try:
        with database_errors(database_url, "read"):
            return current_revision(engine), head_revision()
    finally:
        engine.dispose()


@click.group("db")
def db_group() -> None:
    """The metering database: schema migrations."""


@db_group.command("upgrade")
@click.pass_obj
def upgrade_command(obj: Any) -> None:
    """Create or migrate the database schema to this governor's version."""
    before, after = run_db_upgrade(obj.database_url)
    if before == after:
        click.echo(f"database schema already at {after}")
    else:
        click.echo(f"database schema upgraded from {before or 'nothing'} to {after}")


@db_group.command("current")
@click.pass_obj
def current_command(obj: Any) -> None:
    """Show the database's schema revision and the one this governor needs."""
    current, head = run_db_current(obj.database_url)
    state = "up to date" if current == head else "needs `governor db upgrade`"
    click.echo(f"database schema at {current or 'nothing'}, governor needs {head}: {state}")
    if current != head:
        raise SystemExit(1)
