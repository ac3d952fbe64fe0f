"""The daemon's database, which may be down: enforcement and placement never wait for it.

:class:`Database` makes the engine and checks the schema when the database first answers,
not before the daemon starts: with the database unreachable (or at another schema) the
policy is applied, processes are placed and samples go to the spool
(:mod:`governor.store.spool`); :meth:`Database.check`, called once per sampling pass while
it is down, tries again, and the spool drains once it is up.  An older schema found then is
an error with its fix (``governor db upgrade``), logged once, and samples keep spooling.

Every state change is logged once (not once per pass), with the URL's password masked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from governor.errors import ConfigError
from governor.store.db import check_schema, make_engine, mask_url, normalize_url, scope_factory
from governor.store.errors import (
    DatabaseUnavailable,
    NodeNameTaken,
    SchemaOutOfDate,
    SchemaTooNew,
    StoreError,
)
from governor.store.linkwatch import LinkWatch
from governor.store.service import ensure_node

log = logging.getLogger("governor.store")

#: seconds a PostgreSQL connection attempt may take (a blackholed host would otherwise
#: hold the sampling pass for the kernel's TCP retries, minutes)
PG_CONNECT_TIMEOUT = 5

#: libpq's TCP settings for a link that goes dead under an open connection (a dropped
#: route, a firewall, a peer gone without a reset): without them a write in a pass waits
#: for the kernel's TCP retries (about 15 minutes with tcp_retries2=15).  Unacknowledged
#: data for 15 s (TCP_USER_TIMEOUT, Linux) or an idle connection unanswered for
#: 10 + 2 x 5 s (keepalives) ends the connection: the write fails, the pass spools its
#: samples and the database is checked again on the next pass (tested in the VM with a
#: blackholed route: tests/kernel/test_fleet_kernel.py).
PG_TCP_ARGS: dict[str, int] = {"keepalives": 1, "keepalives_idle": 10,
                               "keepalives_interval": 5, "keepalives_count": 2,
                               "tcp_user_timeout": 15_000}


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and errors)."""
    return mask_url(url)


def reason(exc: BaseException, *, secret: str | None = None) -> str:
    """The first line of what went wrong, without SQLAlchemy's background link or the
    statement (and never ``secret``)."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if secret:
        text = text.replace(secret, "***")
    return text


def claim(session: Connection, name: str, uid: str) -> int:
    """The daemon's node ``name`` with identity ``uid`` (:func:`ensure_node`: renamed,
    adopted, made, or :class:`NodeNameTaken`)."""
    return ensure_node(session=session, name=name, uid=uid)


class Database:
    """The database at ``url``: :attr:`up` once it answered with the schema this governor
    needs; :meth:`scope` raises :class:`DatabaseUnavailable` while it is not."""

    def __init__(self, url: str, *, config_hint: str = "FILE",
                 clock: Callable[[], float] = time.monotonic,
                 node: tuple[str, str] | None = None) -> None:
        try:
            u = normalize_url(url)
        except ArgumentError:
            raise ConfigError("not a database URL: use sqlite:///PATH or "
                              "postgresql://USER:PASSWORD@HOST/DB", key="database.url") from None
        self.url = url
        self.shown = masked(url)
        self._secret = u.password if isinstance(u.password, str) and u.password else None
        self._pg = u.get_backend_name() == "postgresql"
        self.config_hint = config_hint
        self.clock = clock
        #: ``(name, uid)`` of the daemon's node, claimed each time the database comes up
        #: (:meth:`check`), before any write: every writer that names the node then finds
        #: the row of this uid (renamed, adopted, or refused: :func:`claim`)
        self.node = node
        self.engine: Engine | None = None
        self.up = False
        #: why it is not up ("database unreachable: ...", "database schema ..."), None: up
        self.problem: str | None = "database not connected yet"
        #: times it went from down to up (the first connection included)
        self.recoveries = 0
        self._scope: Callable[[], Any] | None = None
        self._lock = threading.Lock()
        self._logged: str | None = None
        #: PostgreSQL: the backstop that cuts a connection whose link went dead
        self.link_watch: LinkWatch | None = None

    # -- state ----------------------------------------------------------------------------
    def check(self) -> bool:
        """Up; or, while down, one attempt now: make the engine, connect, check the schema.
        Never raises: what failed is :attr:`problem` (logged when it changes)."""
        with self._lock:
            if self.up:
                return True
            try:
                if self.engine is None:
                    kw: dict[str, Any] = {}
                    if self._pg:
                        kw["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT,
                                              **PG_TCP_ARGS}
                    self.engine = make_engine(self.url, **kw)
                    self._scope = scope_factory(self.engine)
                    if self._pg:
                        self.link_watch = LinkWatch(self.engine, shown=self.shown)
                check_schema(self.engine, config_hint=self.config_hint)
                if self.node is not None:
                    assert self._scope is not None
                    with self._scope() as session:
                        claim(session, *self.node)
            except (SchemaOutOfDate, SchemaTooNew) as e:
                self._down(f"database schema: {e}; until then samples spool locally",
                           logging.ERROR)
                return False
            except NodeNameTaken as e:
                self._down(f"node identity: {e}; until then samples spool locally",
                           logging.ERROR)
                return False
            except (SQLAlchemyError, StoreError, OSError) as e:
                self._down(f"database unreachable: {reason(e, secret=self._secret)}",
                           logging.WARNING)
                return False
            self.up = True
            self.problem = None
            self._logged = None
            self.recoveries += 1
            log.info("database up: schema current" + ("" if self.recoveries == 1 else
                                                      ", spooled samples drain now"),
                     extra={"database": self.shown})
            return True

    def lost(self, why: str) -> None:
        """A write found the database unreachable: down until :meth:`check` succeeds
        again (which checks the schema again: it may have been upgraded meanwhile)."""
        if self._secret:
            why = why.replace(self._secret, "***")
        with self._lock:
            self.up = False
            self._down(f"database unreachable: {why}", logging.WARNING)

    def _down(self, problem: str, level: int) -> None:
        self.up = False
        self.problem = problem
        if problem != self._logged:
            self._logged = problem
            log.log(level, problem + " (enforcement and placement go on; samples spool "
                    "locally and are stored when it answers)", extra={"database": self.shown})

    # -- use ------------------------------------------------------------------------------
    @contextmanager
    def scope(self) -> Iterator[Connection]:
        """A connection in a transaction (committed on success), or DatabaseUnavailable."""
        scope = self._scope
        if not self.up or scope is None:
            raise DatabaseUnavailable(self.problem or "database not connected yet")
        with scope() as session:
            yield session

    def dispose(self) -> None:
        if self.link_watch is not None:
            self.link_watch.stop()
            self.link_watch = None
        if self.engine is not None:
            self.engine.dispose()
