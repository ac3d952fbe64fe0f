"""``governor db upgrade`` and ``governor db current``: the one home of the database
commands (the work is in :mod:`governor.store.migrate`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from governor.clikit import FORMAT, config_options, emit_json
from governor.config import Config
from governor.store.migrate import schema_revisions, upgrade_database


def run_db_upgrade(database_url: str) -> tuple[str | None, str | None]:
    """Migrate to the newest schema, saying on stderr what was created on the way (as
    ``install -d`` would); returns ``(revision before, revision after)``."""

    def connected(created: Sequence[Path], private: bool) -> None:
        for d in created:
            click.echo(f"governor: created directory {d} (mode 0700) for the database",
                       err=True)
        if private:
            click.echo("governor: made the database file mode 0600 (others could read it)",
                       err=True)

    return upgrade_database(database_url, connected=connected)


@click.group("db")
def db() -> None:
    """The metering database: schema migrations."""


@db.command("upgrade")
@config_options
def db_upgrade(cfg: Callable[[], Config]) -> None:
    """Create or migrate the database schema to this governor's version."""
    before, after = run_db_upgrade(cfg().database_url)
    click.echo(f"database schema already at {after}" if before == after else
               f"database schema upgraded from {before or 'nothing'} to {after}")


@db.command("current")
@config_options
@FORMAT
def db_current(cfg: Callable[[], Config], fmt: str) -> None:
    """Show the database's schema revision and the one this governor needs (exit 1 if
    they differ)."""
    have, need = schema_revisions(cfg().database_url)
    if fmt == "json":
        emit_json({"current": have, "needed": need, "ok": have == need})
    else:
        click.echo(f"database schema: {have or 'nothing'}; governor needs: {need}")
    if have != need:
        sys.exit(1)
