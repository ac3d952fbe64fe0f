"""pytest fixtures for database tests on SQLite and PostgreSQL (imported by test modules).

``db_url`` is parametrized over both dialects.  SQLite: a fresh file in ``tmp_path``.
PostgreSQL: a fresh database per test on the server named by ``GOVERNOR_TEST_PG_URL``
(``scripts/pg-test-server.sh start`` prints one), dropped afterwards.  Without that variable
the PostgreSQL variants are skipped with the reason -- except under ``CI=true``, where they
fail: CI must not go green by skipping a database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from governor.store.db import make_engine, normalize_url, session_factory, upgrade

PG_ENV = "GOVERNOR_TEST_PG_URL"


def _pg_server_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        reason = (f"{PG_ENV} is not set: no PostgreSQL server for the PostgreSQL variant "
                  f"(start one with `eval \"$(scripts/pg-test-server.sh start)\"`)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a new, empty database of each dialect."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/db/governor.db"
        return
    server = normalize_url(_pg_server_url())
    name = f"gov_t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to the newest schema."""
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on ``engine``; tests commit when they need to."""
    with session_factory(engine)() as s:
        yield s
