"""pytest fixtures for database tests on SQLite and PostgreSQL (imported by test modules),
and ``make_sample`` (the tests and bench/bill.py, bench/daemon_cost.py).

``db_url`` is parametrized over both dialects.  SQLite: a fresh file in ``tmp_path``.
PostgreSQL: a fresh database per test on the server named by ``GOVERNOR_TEST_PG_URL``
(``scripts/pg-test-server.sh start`` prints one), dropped afterwards.  Without that variable
the PostgreSQL variants are skipped with the reason -- except under ``CI=true``, where they
fail: CI must not go green by skipping a database.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine, text

from governor.metering.sample import GroupSample
from governor.store.db import make_engine, normalize_url, session_factory, upgrade

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

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
    with throwaway_database(_pg_server_url(), prefix="gov_t") as url:
        yield url


@contextlib.contextmanager
def throwaway_database(server_url: str, *, prefix: str) -> Iterator[str]:
    """A new database ``<prefix>_<random hex>`` on the PostgreSQL server of
    ``server_url`` (connected to as it names), its URL yielded, dropped afterwards even
    while connections to it remain (the unit tests, the fleet kernel test and
    bench/fleet_capacity.py)."""
    server = normalize_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
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


def make_sample(*, node: str = "n1", tenant: str = "acme", group: str | None = "web",
                cgroup_id: int = 100, wall: datetime, mono: float | None = None,
                cpu: int = 0, mem: int = 0, rbytes: int = 0, wbytes: int = 0,
                oom_kill: int = 0, created: datetime | None = None,
                storage: int | None = None) -> GroupSample:
    """A sample with the counters tests care about (user/system split 3:1); ``storage``:
    the writable layers' bytes (None: no container storage measured)."""
    return GroupSample(
        node=node, tenant=tenant, group=group, cgroup_id=cgroup_id, wall=wall,
        monotonic=mono if mono is not None else wall.timestamp(),
        cpu_usage_usec=cpu, cpu_user_usec=cpu * 3 // 4, cpu_system_usec=cpu - cpu * 3 // 4,
        cpu_nr_periods=0, cpu_nr_throttled=0, cpu_throttled_usec=0,
        memory_current=mem, memory_peak=mem, memory_swap_current=0,
        memory_events_low=0, memory_events_high=0, memory_events_max=0,
        memory_events_oom=oom_kill, memory_events_oom_kill=oom_kill,
        memory_events_oom_group_kill=0,
        memory_stat_anon=mem, memory_stat_file=0, memory_stat_kernel=0, memory_stat_sock=0,
        memory_stat_shmem=0, pids_current=1,
        io={"8:0": {"rbytes": rbytes, "wbytes": wbytes, "rios": rbytes // 4096,
                    "wios": wbytes // 4096, "dbytes": 0}} if rbytes or wbytes else {},
        psi={"cpu_some": cpu // 10, "memory_some": 0, "io_some": 0},
        created=created, storage_bytes=storage,
    )
