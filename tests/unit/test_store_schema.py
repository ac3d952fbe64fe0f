"""Migrations, schema checks and engine setup, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from sqlalchemy import inspect, text

from governor.store.db import (
    check_schema,
    current_revision,
    head_revision,
    make_engine,
    migrations_dir,
    upgrade,
)
from governor.store.errors import SchemaOutOfDate, SchemaTooNew
from governor.store.models import Base
from tests.helpers.db import db_url, engine  # noqa: F401  (fixtures)

TABLES = {"nodes", "tenants", "groups", "samples", "sample_io", "usage_intervals",
          "rollups_hourly", "price_plans", "applied_policies", "oom_events", "gaps",
          # the generic controllers' values, usage and rollups (migration 0003)
          "sample_values", "usage_values", "rollup_values"}


def test_migrations_create_every_table_and_match_the_models(db_url):  # noqa: F811
    assert upgrade(db_url) == head_revision()
    eng = make_engine(db_url)
    try:
        names = set(inspect(eng).get_table_names())
        assert names >= TABLES | {"alembic_version"}
        assert set(Base.metadata.tables) == TABLES
        from alembic.autogenerate import compare_metadata
        from alembic.runtime.migration import MigrationContext

        with eng.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        check_schema(eng)  # current: no error
    finally:
        eng.dispose()


def test_upgrade_twice_is_a_no_op(db_url):  # noqa: F811
    assert upgrade(db_url) == upgrade(db_url) == head_revision()


def test_check_schema_refuses_an_empty_database(db_url):  # noqa: F811
    eng = make_engine(db_url)
    try:
        with pytest.raises(SchemaOutOfDate) as info:
            check_schema(eng, config_hint="/etc/governor/config.toml")
        msg = str(info.value)
        assert f"governor needs {head_revision()}" in msg
        assert "run `governor db upgrade --config /etc/governor/config.toml`" in msg
        assert info.value.exit_code == 2
    finally:
        eng.dispose()


def test_check_schema_refuses_an_older_revision(engine):  # noqa: F811
    # an older schema: the version table names a revision before the head
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'base_old'"))
    with pytest.raises(SchemaTooNew, match="base_old"):
        check_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
    assert current_revision(engine) is None
    with pytest.raises(SchemaOutOfDate, match="database schema at nothing"):
        check_schema(engine)


def test_sqlite_file_is_private_and_tuned(tmp_path):
    path = tmp_path / "deep" / "dir" / "governor.db"
    eng = make_engine(f"sqlite:///{path}")
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with eng.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            # 512 KiB of page cache, not SQLite's 2,000 (issue #16: resident memory)
            assert conn.execute(text("PRAGMA cache_size")).scalar() == -512
    finally:
        eng.dispose()


def test_postgres_urls_get_psycopg3():
    from governor.store.db import normalize_url

    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"


def test_migrations_dir_is_reachable_from_the_package():
    d = migrations_dir()
    assert (d / "env.py").is_file()
    assert any(p.name.startswith("0001_") for p in (d / "versions").iterdir())


def test_making_an_engine_never_drops_sqlite_locks(tmp_path):
    """Closing any descriptor of a database file drops every POSIX lock the process holds
    on it, SQLite's included; an engine made while another connection holds a lock must
    not open the existing file (it once did, to check its mode)."""
    import sqlite3
    import subprocess
    import sys

    from governor.store.db import _prepare_sqlite_file

    db = tmp_path / "g.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # an exclusive lock on the file
    _prepare_sqlite_file(str(db))
    probe = ("import sqlite3, sys\n"
             "try:\n"
             "    sqlite3.connect(sys.argv[1], timeout=0).execute('SELECT * FROM t').fetchall()\n"
             "except sqlite3.OperationalError as e:\n"
             "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", probe, str(db)], capture_output=True,
                         text=True, check=True).stdout
    assert "locked" in out  # the lock held: another process cannot read
    holder.execute("ROLLBACK")
    holder.close()
    (tmp_path / "new").mkdir()
    _prepare_sqlite_file(str(tmp_path / "new" / "n.db"))
    assert (tmp_path / "new" / "n.db").stat().st_mode & 0o777 == 0o600


def test_an_existing_file_that_is_no_database_is_never_changed(tmp_path):
    """Found by trying `governor usage --database sqlite:////etc/passwd` as root: the
    command failed ('file is not a database') but had made /etc/passwd mode 0600."""
    from governor.store.db import DatabaseError, connect

    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0:root:/root:/bin/bash\n")
    victim.chmod(0o644)
    with pytest.raises(DatabaseError, match="not a database"):
        connect(f"sqlite:///{victim}")
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o644
    assert victim.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    assert not (tmp_path / "passwd-wal").exists() and not (tmp_path / "passwd-shm").exists()


def test_db_upgrade_makes_an_existing_database_private(tmp_path, capsys):
    from governor.cli import main

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as c:  # a database file others can read (umask 022)
        c.execute("CREATE TABLE t (x)")
    path.chmod(0o644)
    make_engine(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # an engine changes nothing
    assert main(["db", "upgrade", "--database", f"sqlite:///{path}"]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "made the database file mode 0600" in capsys.readouterr().err


def test_schema_check_reads_revisions_without_alembic(db_url: str) -> None:  # noqa: F811
    """Issue #16: the daemon's schema check (every start, every reconnect) never imports
    alembic (30 MiB of its resident memory); its text reading of the migration scripts
    finds what alembic finds."""
    import subprocess
    import sys

    from alembic.script import ScriptDirectory

    from governor.store.db import alembic_config, revisions

    script = ScriptDirectory.from_config(alembic_config())
    assert head_revision() == script.get_current_head()
    assert revisions() == {r.revision: r.down_revision for r in script.walk_revisions()}
    upgrade(db_url)
    code = ("import sys; from governor.store.db import make_engine, check_schema; "
            f"e = make_engine({db_url!r}); check_schema(e); e.dispose(); "
            "import governor.daemon, governor.store.gate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('alembic', 'mako', 'pygments')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


#: one row of each table migration 0002 widens, as governor 0.1 (revision 0001) wrote them
#: (times in UTCDateTime's SQLite text: the rollups' upsert matches its key on it)
_ROWS_0001 = [
    "INSERT INTO nodes (id, name, first_seen) VALUES (1, 'n1', '2026-11-01 00:00:00.000000')",
    "INSERT INTO tenants (id, name) VALUES (1, 'acme')",
    "INSERT INTO groups (id, node_id, tenant_id, name, path, cgroup_id, first_seen) "
    "VALUES (7, 1, 1, 'web', 'acme/web', 100, '2026-11-01 00:00:00.000000')",
    "INSERT INTO samples (node_id, group_id, ts, mono, memory_current, cpu_usage_usec) "
    "VALUES (1, 7, '2026-11-01 10:00:00.000000', 5.5, 4096, 123)",
    "INSERT INTO usage_intervals (node_id, group_id, end_ts, start_ts, duration_us, "
    "from_creation, cpu_usec, cpu_user_usec, cpu_system_usec, cpu_throttled_usec, "
    "memory_byte_seconds, io_rbytes, io_wbytes, io_rios, io_wios, io_dbytes, oom_events, "
    "oom_kills) VALUES (1, 7, '2026-11-01 10:00:10.000000', '2026-11-01 10:00:00.000000', "
    "10000000, false, 11, 6, 5, 0, 40960, 1, 2, 3, 4, 5, 0, 0)",
    "INSERT INTO rollups_hourly (node_id, group_id, hour, covered_us, intervals, cpu_usec, "
    "cpu_user_usec, cpu_system_usec, cpu_throttled_usec, memory_byte_seconds, io_rbytes, "
    "io_wbytes, io_rios, io_wios, io_dbytes, oom_events, oom_kills) VALUES (1, 7, "
    "'2026-11-01 10:00:00.000000', 10000000, 1, 11, 6, 5, 0, 40960, 1, 2, 3, 4, 5, 0, 0)",
    "INSERT INTO price_plans (id, name, version, currency, memory_basis, cpu_core_hour, "
    "memory_gib_hour, io_read_gib, io_write_gib, oom_kill, recorded_at) VALUES (1, 'std', 1, "
    "'EUR', 'usage', 0.04, 0.005, 0.01, 0.02, 0, '2026-11-01 00:00:00.000000')",
]


def test_migration_0002_keeps_every_row_of_a_0001_database(db_url):  # noqa: F811
    """Issue #19: a database of governor 0.1 upgrades to the storage columns without
    losing a row: raw samples get NULL storage (not measured), usage and rollups 0 (what
    they metered of it), recorded price versions NULL (never priced)."""
    from decimal import Decimal

    from sqlalchemy import select

    from governor.store.db import session_factory
    from governor.store.models import HourlyRollup, IntervalUsageRow, PricePlanRow, Sample

    assert upgrade(db_url, "0001") == "0001"
    eng = make_engine(db_url)
    try:
        with eng.begin() as conn:
            for sql in _ROWS_0001:
                conn.execute(text(sql))
        assert "storage_bytes" not in {c["name"] for c in inspect(eng).get_columns("samples")}
        assert upgrade(eng) == head_revision()  # (0002 here; 0003: test_store_values.py)
        check_schema(eng)
        with session_factory(eng)() as s:
            sample = s.execute(select(Sample)).scalar_one()
            assert (sample.memory_current, sample.cpu_usage_usec, sample.mono,
                    sample.storage_bytes) == (4096, 123, 5.5, None)
            iv = s.execute(select(IntervalUsageRow)).scalar_one()
            assert (iv.memory_byte_seconds, iv.io_dbytes, iv.duration_us,
                    iv.storage_byte_seconds) == (40960, 5, 10_000_000, 0)
            r = s.execute(select(HourlyRollup)).scalar_one()
            assert (r.covered_us, r.intervals, r.memory_byte_seconds,
                    r.storage_byte_seconds) == (10_000_000, 1, 40960, 0)
            plan = s.execute(select(PricePlanRow)).scalar_one()
            assert (plan.memory_gib_hour, plan.storage_gib_hour) == (Decimal("0.005"), None)
    finally:
        eng.dispose()


def test_migration_0002_downgrades_to_0001_keeping_the_rows(db_url):  # noqa: F811
    from alembic import command

    from governor.store.db import alembic_config

    upgrade(db_url, "0001")
    eng = make_engine(db_url)
    try:
        with eng.begin() as conn:
            for sql in _ROWS_0001:
                conn.execute(text(sql))
        upgrade(eng)
        with eng.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        assert current_revision(eng) == "0001"
        for table, column in (("samples", "storage_bytes"), ("price_plans", "storage_gib_hour"),
                              ("usage_intervals", "storage_byte_seconds"),
                              ("rollups_hourly", "storage_byte_seconds")):
            assert column not in {c["name"] for c in inspect(eng).get_columns(table)}
            with eng.connect() as conn:
                assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1
        if eng.dialect.name == "sqlite":  # dropped in place: still WITHOUT ROWID
            with eng.connect() as conn:
                ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'samples'")
                                   ).scalar()
            assert "WITHOUT ROWID" in ddl
        assert upgrade(eng, "0002") == "0002"
    finally:
        eng.dispose()


def test_an_hour_rolled_up_before_0002_takes_the_storage_metered_after(db_url):  # noqa: F811
    """The rollups' upsert adds into the row of an hour that began before the upgrade
    (its storage 0 from the server default, never NULL, which would swallow the sum)."""
    from sqlalchemy import select

    from governor.metering.rollup import ROLLUP_QUANTITIES
    from governor.store.db import session_factory
    from governor.store.metered import upsert_rollups
    from governor.store.models import HourlyRollup

    upgrade(db_url, "0001")
    eng = make_engine(db_url)
    try:
        with eng.begin() as conn:
            for sql in _ROWS_0001:
                conn.execute(text(sql))
        upgrade(eng)
        with session_factory(eng)() as s:
            hour = s.execute(select(HourlyRollup.hour)).scalar_one()
            q = dict.fromkeys(ROLLUP_QUANTITIES, 0) | {"memory_byte_seconds": 5,
                                                      "storage_byte_seconds": 7 << 40}
            upsert_rollups(session=s, node_id=1, rollups={
                (7, hour): [10_000_000, 1, *(q[n] for n in ROLLUP_QUANTITIES)]})
            s.commit()
            r = s.execute(select(HourlyRollup)).scalar_one()
            assert (r.intervals, r.memory_byte_seconds, r.storage_byte_seconds) == (
                2, 40965, 7 << 40)
    finally:
        eng.dispose()
