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

import errno
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from governor.store.errors import DatabaseError, SchemaOutOfDate, SchemaTooNew, StoreError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

#: what the store's functions run their statements on: a Core ``Connection`` in a
#: transaction (:func:`scope_factory`: the daemon, which never loads ``sqlalchemy.orm``) or
#: an ORM ``Session`` (:func:`session_factory`: the reporting commands, tests)
Executor: TypeAlias = "Connection | Session"

#: milliseconds a SQLite writer waits for the lock before giving up
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: KiB of page cache per SQLite connection, against SQLite's default of 2,000 (issue #16:
#: each connection's cache filled to 2 MiB as the daemon wrote).  The daemon appends at
#: the right edge of the raw tables' keys and upserts one rollup per group, which misses
#: a 2 MiB cache as well; bench/daemon_pass.py (store and meter) and bench/bill.py (a
#: month's bill) take the same CPU with either, bench/daemon_rss.py is 1.7 MiB smaller
SQLITE_CACHE_KIB = 512


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


def mask_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***`` (for logs and errors)."""
    try:
        return normalize_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(unparsable database URL)"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, OSError) and orig.strerror:
        name = errno.errorcode.get(orig.errno or 0, "")
        text = f"[{name}] {orig.strerror}" if name else orig.strerror
        return f"{text}: {orig.filename}" if orig.filename else text
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _fix(u: URL, text: str) -> str:
    """What the operator can do about ``text`` (the driver's message) on database ``u``."""
    where = "database.url in the configuration file, --database or GOVERNOR_DATABASE"
    low = text.lower()
    if u.get_backend_name() == "sqlite":
        path = Path(u.database or "")
        uid = os.geteuid()
        if "readonly" in low or "read-only" in low:
            return (f"make {path} (and its -wal and -shm files) and its directory {path.parent} "
                    f"writable by uid {uid}, or point {where} at a writable file")
        if "no such table" in low:
            return "run `governor db upgrade` to create the schema"
        if "not a database" in low:
            return f"{path} is not a SQLite database: point {where} at governor's database"
        return (f"make sure the directory {path.parent} exists and that it and {path} are "
                f"readable and writable by uid {uid}, or point {where} elsewhere")
    if ("does not exist" in low and "relation" in low) or "undefinedtable" in low:
        return "run `governor db upgrade` to create the schema"
    if "password" in low or "authentication" in low or "role" in low:
        return f"check the user and password in {where}, and the server's pg_hba.conf"
    if "permission denied" in low or "read-only" in low:
        return (f"grant the user {u.username or '(none)'} the rights it needs on database "
                f"{u.database or '(none)'}, or use another user in {where}")
    return (f"check that PostgreSQL runs and accepts connections at {u.host or 'localhost'}:"
            f"{u.port or 5432} and that the database {u.database or '(none)'} exists "
            f"({where})")


def _alembic_errors() -> tuple[type[Exception], ...]:
    """Alembic's CommandError, when a command has loaded alembic (only the migrating ones
    do)."""
    exc = sys.modules.get("alembic.util.exc")
    return (exc.CommandError,) if exc is not None else ()


@contextmanager
def database_errors(url: str | URL, action: str) -> Iterator[None]:
    """Turn what the driver, SQLAlchemy or Alembic raise while ``action``-ing the database
    (``"connect to"``, ``"read"``, ``"write"``, ``"migrate"``) into a
    :class:`DatabaseError`: the URL with its password masked, the driver's first line,
    the fix.  Governor's own errors (an out-of-date schema...) pass unchanged."""
    try:
        yield
    except Exception as exc:
        # alembic's errors only exist once a command in the block has imported it
        if not isinstance(exc, (SQLAlchemyError, OSError, *_alembic_errors())):
            raise
        u = normalize_url(url)
        text = _first_line(exc)
        if isinstance(u.password, str) and u.password:
            text = text.replace(u.password, "***")
        raise DatabaseError(mask_url(u), action, text, _fix(u, text)) from None


def missing_dirs(url: str | URL) -> list[Path]:
    """The directories of a SQLite database URL that do not exist yet, outermost first
    (what :func:`make_engine` creates, mode 0700; ``governor db upgrade`` says so)."""
    u = normalize_url(url)
    database = u.database or ""
    if u.get_backend_name() != "sqlite" or database in ("", ":memory:") \
            or database.startswith("file:"):
        return []
    out = []
    d = Path(database).absolute().parent
    while not d.exists() and d != d.parent:
        out.append(d)
        d = d.parent
    return out[::-1]


def connect(url: str | URL) -> Engine:
    """:func:`make_engine` and a first connection, or a :class:`DatabaseError` saying the
    database could not be connected to (for the commands: ``db``, ``usage``, ``bill``...)."""
    with database_errors(url, "connect to"):
        engine = make_engine(url)
        try:
            engine.connect().close()
        except BaseException:
            engine.dispose()
            raise
    return engine


#: the header every SQLite 3 database file starts with (sqlite.org/fileformat.html 1.3.1)
SQLITE_MAGIC = b"SQLite format 3\x00"


def _prepare_sqlite_file(database: str) -> None:
    """Create the SQLite file (and its directory) private: mode 0600.

    SQLite creates the ``-wal`` and ``-shm`` files with the permissions of the database
    file, so they are private too.  An existing file is never changed here (a URL that
    points at another file, ``sqlite:////etc/passwd``, must leave it as it was: the
    connection then fails with "file is not a database"), nor opened: closing any
    descriptor of the database file drops every POSIX lock this process holds on it,
    SQLite's own included ("How To Corrupt An SQLite Database File", 2.2), and engines are
    made while others are open (the daemon makes several).  ``governor db upgrade`` makes
    an existing database private (:func:`make_sqlite_file_private`).
    """
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)  # a new, empty file: no connection can hold a lock on it yet


def make_sqlite_file_private(url: str | URL) -> bool:
    """Make an existing SQLite database file that others may read mode 0600, if it is a
    regular file of this user's whose header says it is a SQLite database (anything else
    is left alone).  Call it before this process opens any connection to the file (it
    opens the file to read the header: see :func:`_prepare_sqlite_file`).  True if the
    mode was changed."""
    u = normalize_url(url)
    database = u.database or ""
    if u.get_backend_name() != "sqlite" or database in ("", ":memory:") \
            or database.startswith("file:"):
        return False
    try:
        fd = os.open(database, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # missing or unreadable: the connection says what is wrong
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() \
                or not stat.S_IMODE(st.st_mode) & 0o077:
            return False
        if os.pread(fd, len(SQLITE_MAGIC), 0) != SQLITE_MAGIC:
            return False
        os.fchmod(fd, 0o600)
        return True
    finally:
        os.close(fd)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
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
    """ORM sessions bound to ``engine`` (objects stay usable after commit); the daemon's
    path uses :func:`scope_factory` instead, and never imports ``sqlalchemy.orm``."""
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(engine, expire_on_commit=False)


def connection_of(executor: Executor) -> Connection:
    """The connection ``executor`` runs on (a session's, in its transaction)."""
    return executor if isinstance(executor, Connection) else executor.connection()


def alembic_config(url: str | URL | None = None) -> Any:
    """Alembic's configuration for governor's migrations (alembic is imported here, only
    by the commands that migrate: the daemon never loads it, see :func:`head_revision`)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.set_main_option(
            "sqlalchemy.url",
            normalize_url(url).render_as_string(hide_password=False).replace("%", "%%"),
        )
    return cfg


_REVISION = re.compile(r"^revision(?:\s*:\s*str)?\s*=\s*[\"']([^\"']+)[\"']", re.M)
_DOWN = re.compile(
    r"^down_revision(?:\s*:[^=\n]*)?\s*=\s*(?:None|[\"']([^\"']+)[\"'])", re.M)


def revisions() -> dict[str, str | None]:
    """``revision -> down_revision`` of every migration script, read as text: checking
    the schema (every daemon start, every reconnect) needs no alembic, whose import (with
    mako, pygments and asyncio) was 30 MiB of the daemon's resident memory (issue #16)."""
    out: dict[str, str | None] = {}
    for f in sorted((migrations_dir() / "versions").glob("*.py")):
        body = f.read_text(encoding="utf-8")
        rev, down = _REVISION.search(body), _DOWN.search(body)
        if rev is None or down is None:
            raise StoreError(f"migration script {f} has no revision/down_revision line: "
                             "the installation is damaged")
        out[rev[1]] = down[1]
    return out


def head_revision() -> str:
    revs = revisions()
    heads = sorted(set(revs) - {d for d in revs.values() if d is not None})
    if len(heads) != 1:
        raise StoreError(f"governor's migrations have {len(heads)} head revisions "
                         f"({', '.join(heads) or 'none'}), not one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None``: never migrated)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        raise StoreError(f"the database is at several revisions ({', '.join(rows)}): "
                         "it was migrated by something other than governor")
    return rows[0] if rows else None


def upgrade(url: str | URL | Engine, revision: str = "head") -> str | None:
    """Migrate the database to ``revision`` (default: the newest); returns the new revision."""
    from alembic import command

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
    if current is not None and current not in revisions():
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
            from alembic import command

            command.revision(cfg, message=argv[2], autogenerate=True)
        return 0
    print(_main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


def scope_factory(engine: Engine) -> Callable[[], AbstractContextManager[Connection]]:
    """A ``session_scope()`` for ``engine``: a connection in a transaction, committed on
    success and rolled back on error (``with scope() as session: ...``).  Core, not an ORM
    session: nothing the store does needs one (issue #16: the daemon does not load
    ``sqlalchemy.orm``, 7 MiB resident)."""

    @contextmanager
    def scope() -> Iterator[Connection]:
        with engine.begin() as conn:
            yield conn

    return scope
