"""Engines, sessions and the Alembic glue.

* :func:`make_engine` -- SQLite (WAL, ``synchronous=NORMAL``, ``busy_timeout``, foreign keys
  on; the file made private, mode 0600, and its directory created) or PostgreSQL through
  psycopg 3 (``postgresql://`` URLs are mapped to ``postgresql+psycopg://``).
* :func:`upgrade`, :func:`current_revision`, :func:`head_revision` -- Alembic through its
  Python API, with no alembic.ini: the script location is :func:`migrations_dir`.
* :func:`check_schema` -- refuse to run on a database at another revision.

Where the migrations live: the repository's top-level ``migrations/`` directory.  The package
reaches it through the symlink ``governor/migrations -> ../migrations``: an editable install
follows the symlink, and a wheel build copies the files as package data (pyproject's
``[tool.setuptools.package-data]`` lists ``migrations/*``).  :func:`migrations_dir` falls back to
``<repo>/migrations`` when the symlink is absent (e.g. a checkout on a filesystem without
symlinks).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from governor.store.errors import SchemaOutOfDate, SchemaTooNew, StoreError

#: milliseconds a SQLite writer waits for the lock before giving up
SQLITE_BUSY_TIMEOUT_MS = 10_000


def migrations_dir() -> Path:
    """The Alembic script directory (``env.py`` + ``versions/``)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StoreError(f"governor's migrations are missing (looked in {here / 'migrations'} and "
                     f"{here.parent / 'migrations'}): the installation is incomplete")


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; plain ``postgresql://``/``postgres://`` URLs get the psycopg 3 driver."""
    u = make_url(str(url)) if isinstance(url, str) and url.startswith("postgres://") is False \
        else make_url(str(url).replace("postgres://", "postgresql://", 1))
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    return u


def _prepare_sqlite_file(database: str) -> None:
    """Create the SQLite file (and its directory) private: mode 0600.

    SQLite creates the ``-wal`` and ``-shm`` files with the permissions of the database
    file, so they are private too.
    """
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # An existing file is never opened here: closing any descriptor of the database file
    # drops every POSIX lock this process holds on it, those of SQLite's open connections
    # included ("How To Corrupt An SQLite Database File", 2.2), and engines are made while
    # others are open (the daemon makes several).
    try:
        st = os.stat(path)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile by another process
            st = os.stat(path)
        else:
            os.close(fd)  # a new, empty file: no connection can hold a lock on it yet
            return
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for ``url`` set up the way governor needs it (see the module docs)."""
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        database = u.database or ""
        in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
        if not in_memory:
            _prepare_sqlite_file(database)
        engine = create_engine(u, **kwargs)
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    if u.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(u, **kwargs)
    raise StoreError(f"unsupported database URL {u.render_as_string(hide_password=True)!r}: "
                     f"use sqlite:///PATH or postgresql://...")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine`` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | URL | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.set_main_option(
            "sqlalchemy.url",
            normalize_url(url).render_as_string(hide_password=False).replace("%", "%%"),
        )
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreError("governor's migrations have no head revision")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None``: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str | URL | Engine, revision: str = "head") -> str | None:
    """Migrate the database to ``revision`` (default: the newest); returns the new revision."""
    engine = url if isinstance(url, Engine) else make_engine(url)
    try:
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return current_revision(engine)
    finally:
        if not isinstance(url, Engine):
            engine.dispose()


def check_schema(engine: Engine, *, config_hint: str = "FILE") -> None:
    """Raise :class:`SchemaOutOfDate` (or :class:`SchemaTooNew`) unless the schema is current."""
    needed = head_revision()
    current = current_revision(engine)
    if current == needed:
        return
    script = ScriptDirectory.from_config(alembic_config())
    if current is not None:
        known = {rev.revision for rev in script.walk_revisions()}
        if current not in known:
            raise SchemaTooNew(current, needed)
    raise SchemaOutOfDate(current, needed, config_hint=config_hint)


def _main(argv: list[str]) -> int:
    """Developer entry point: ``python -m governor.store.db revision -m MSG`` (autogenerate
    against a scratch SQLite database at head)."""
    if len(argv) >= 3 and argv[0] == "revision" and argv[1] == "-m":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/scratch.db"
            upgrade(url)
            cfg = alembic_config(url)
            command.revision(cfg, message=argv[2], autogenerate=True)
        return 0
    print(_main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


def scope_factory(engine: Engine) -> Callable[[], AbstractContextManager[Session]]:
    """A ``session_scope()`` for ``engine``: a session in a transaction, committed on
    success and rolled back on error (``with scope() as session: ...``)."""
    factory = session_factory(engine)

    @contextmanager
    def scope() -> Iterator[Session]:
        with factory() as session, session.begin():
            yield session

    return scope
