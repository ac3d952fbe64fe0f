"""Enforcement needs no database: the daemon's view of a database that is down, at an old
schema, or back; samples spooled then drained (none lost), applied policies with their price
plans and OOM events recorded once it answers.  SQLite on the host; the PostgreSQL URL is
one on a closed loopback port (nothing listens there)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from governor.billing.running import RunningBills
from governor.config import Config
from governor.daemon import Daemon, DeferredSink, PolicyRecorder
from governor.errors import ConfigError
from governor.metering.meter import Meter, Pending
from governor.oom.events import OomEvent
from governor.oom.store import DbSink
from governor.policy import load_policy
from governor.store.db import upgrade
from governor.store.errors import DatabaseUnavailable
from governor.store.gate import Database, masked
from governor.store.models import AppliedPolicy, Gap, IntervalUsageRow, PricePlanRow, Sample
from governor.store.models import OomEvent as OomEventRow
from governor.store.spool import Spool, SpoolingWriter
from tests.helpers.db import make_sample

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def batch(i: int, n: int = 3) -> list[Any]:
    return [make_sample(group=f"g{j}", cgroup_id=10 + j, wall=T0 + timedelta(minutes=i),
                        cpu=i * 1000, mem=4096) for j in range(n)]


def blocked(tmp_path: Path) -> tuple[str, Path]:
    """A SQLite URL whose directory cannot be made (a regular file is in its way)."""
    wall = tmp_path / "db"
    wall.write_text("not a directory\n")
    return f"sqlite:///{wall}/governor.db", wall


def unblock(url: str, wall: Path) -> None:
    wall.unlink()
    upgrade(url)


def state(db: Database) -> tuple[bool, str | None, int]:
    return db.up, db.problem, db.recoveries


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns


def test_unreachable_then_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url, wall = blocked(tmp_path)
    db = Database(url)
    caplog.set_level(logging.INFO, logger="governor.store")
    assert not db.check() and not db.check() and not db.up
    assert db.problem is not None and db.problem.startswith("database unreachable:")
    assert str(wall) in db.problem
    downs = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(downs) == 1 and downs[0].levelno == logging.WARNING   # once, not per pass
    with pytest.raises(DatabaseUnavailable, match="unreachable"), db.scope():
        pass
    unblock(url, wall)
    assert db.check()
    assert state(db) == (True, None, 1)
    with db.scope() as session:
        assert session.execute(select(func.count()).select_from(Sample)).scalar_one() == 0
    db.dispose()


def test_old_schema_is_an_error_with_the_fix_then_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path}/g.db"
    db = Database(url, config_hint="/etc/governor/config.toml")
    caplog.set_level(logging.INFO, logger="governor.store")
    assert not db.check() and not db.check()
    assert db.problem is not None
    assert "governor db upgrade --config /etc/governor/config.toml" in db.problem
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "governor db upgrade" in errors[0].getMessage()
    upgrade(url)
    assert db.check()
    db.dispose()


def test_postgres_on_a_closed_port_masks_the_password(
        caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://gov:s3cr3t-pw@127.0.0.1:{closed_port()}/governor"
    caplog.set_level(logging.DEBUG, logger="governor")
    db = Database(url)
    t = time.monotonic()
    assert not db.check()
    assert time.monotonic() - t < 10
    assert db.problem is not None and "unreachable" in db.problem
    db.lost("password s3cr3t-pw rejected")   # whatever a driver says, never the password
    text = caplog.text + (db.problem or "") + db.shown
    assert "s3cr3t-pw" not in text and "***" in db.shown
    assert masked(url) == f"postgresql+psycopg://gov:***@127.0.0.1:{url.split(':')[3]}"
    db.dispose()


def test_a_bad_url_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"database\.url") as e:
        Database("no-such-scheme-here")
    assert "sqlite:///PATH" in str(e.value)


def daemon_for_store(db: Database, tmp_path: Path) -> Daemon:
    """The part of a Daemon that stores samples (the rest needs a kernel)."""
    d = Daemon.__new__(Daemon)
    d.cfg = Config(node="n1", state_dir=str(tmp_path / "state"))
    d.db = db
    d.spool = Spool(tmp_path / "state" / "s.spool", max_samples=1000)
    d.writer = SpoolingWriter(spool=d.spool, session_scope=db.scope)
    d.scope = db.scope
    d.meter = Meter()
    d.pending = Pending()
    d.running_bills = RunningBills()
    d._meter_ready = False
    d.stop_event = threading.Event()
    d.db_write_errors = 0
    return d


def test_samples_spooled_while_down_drained_once_up_none_lost(tmp_path: Path) -> None:
    url, wall = blocked(tmp_path)
    db = Database(url)
    db.check()
    d = daemon_for_store(db, tmp_path)
    assert [d._store(batch(i)) for i in range(4)] == ["spooled"] * 4
    assert d.spool.pending_samples() == 12
    unblock(url, wall)
    assert db.check()
    # a pass never drains: its batch goes behind the backlog, at once
    assert d._store(batch(4)) == "queued" and db.up
    assert d.spool.pending_samples() == 15
    told: list[int] = []   # the cost gauge's settled hours: read again after a drain
    d.running_bills.invalidate = lambda: told.append(1)  # type: ignore[method-assign]
    d._drain()   # the daemon's own job, between passes: in steps, then metered
    assert not d.spool and not d._meter_ready and told
    assert d._store(batch(5)) == "stored"
    e = create_engine(url)
    with e.connect() as c:
        assert c.execute(select(func.count()).select_from(Sample)).scalar_one() == 18
        assert c.execute(select(func.count()).select_from(Gap)).scalar_one() == 0
        # the drain metered what it wrote: every interval of the spooled passes
        assert c.execute(select(func.count()).select_from(IntervalUsageRow)
                         ).scalar_one() >= 4
    e.dispose()
    # and lost again: a failing write marks it down, the next pass spools without trying
    db.lost("connection reset")
    assert d._store(batch(6)) == "spooled" and not db.up
    db.dispose()


def test_policy_applied_while_down_has_its_prices_recorded_when_up(tmp_path: Path) -> None:
    url, wall = blocked(tmp_path)
    db = Database(url)
    db.check()
    pol = load_policy([str(REPO / "examples/policy.d")])
    rec = PolicyRecorder(db, "n1")
    rec(pol.digest, "start", [], pol.plans)          # never raises while down
    rec(pol.digest, "reload", [], pol.plans)
    assert len(rec.pending) == 2 and rec.flush() == 0
    unblock(url, wall)
    assert db.check() and rec.flush() == 2 and not rec.pending
    e = create_engine(url)
    with e.connect() as c:
        rows = c.execute(select(AppliedPolicy.trigger).order_by(AppliedPolicy.id)).all()
        plans = set(c.execute(select(PricePlanRow.name)).scalars())
    e.dispose()
    assert [r[0] for r in rows] == ["start", "reload"]
    assert plans == set(pol.plans) and plans
    db.dispose()


def test_oom_events_wait_for_the_database(tmp_path: Path) -> None:
    url, wall = blocked(tmp_path)
    db = Database(url)
    db.check()
    sink = DeferredSink(DbSink(db.scope, "n1"), db)
    ev = OomEvent(node="n1", tenant="acme", group="web", cgroup_id=7, ts=T0,
                  kind="oom_kill", count=1, pid=42, comm="python3")
    sink.record([ev])                                 # kept, not raised
    assert sink.pending == [ev] and sink.failed == 1
    with pytest.raises(DatabaseUnavailable):
        sink.totals("acme/web", 7)
    unblock(url, wall)
    assert db.check() and sink.flush() == 1 and not sink.pending
    assert sink.totals("acme/web", 7) == {"oom_kill": 1}
    e = create_engine(url)
    with e.connect() as c:
        assert c.execute(select(func.count()).select_from(OomEventRow)).scalar_one() == 1
    e.dispose()
    db.dispose()


def test_status_line_and_watchdog_gate(tmp_path: Path) -> None:
    url, _wall = blocked(tmp_path)
    db = Database(url)
    db.check()
    d = daemon_for_store(db, tmp_path)

    class _Enf:  # the two attributes status_line reads from the Enforcer
        policy = load_policy([str(REPO / "examples/policy.d")])
        last_failed = 2

    d.enforcer = _Enf()  # type: ignore[assignment]
    d._last_pass = (T0, 0.0213, 6)
    line = d.status_line()
    assert line.startswith("STATUS=degraded: database unreachable")
    assert "2 cgroup writes failed" in line and "0 samples spooled" in line
    assert "2 tenants, 4 groups; last pass 00:00:00Z took 0.021s, 6 groups sampled" in line
    d.watchdog, d._pass_running_since = 30.0, None
    assert d._watchdog_ok(1000.0)
    d._pass_running_since = 950.0           # running 50 s: within WatchdogSec=60
    assert d._watchdog_ok(1000.0)
    d._pass_running_since = 900.0           # running 100 s: stuck, no ping
    assert not d._watchdog_ok(1000.0)
    db.dispose()


def test_the_drain_job_is_paused_by_the_main_loop_never_by_a_job(tmp_path: Path) -> None:
    """Issue #16: the spool-drain job is paused while the spool is empty.  A job that paused
    it itself deadlocked a stop (APScheduler's shutdown holds the lock its pause_job needs
    while it waits for the job): the job only asks, the main loop pauses and resumes."""
    import os

    from apscheduler.schedulers.background import BackgroundScheduler

    d = object.__new__(Daemon)
    d._wake_r, d._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    d.scheduler = BackgroundScheduler(timezone="UTC")
    d.scheduler.add_job(lambda: None, "interval", id="spool-drain", seconds=3600)
    asked = threading.Event()

    def job() -> None:   # a drain that ends while the daemon stops
        time.sleep(0.5)
        d._draining(False)
        asked.set()

    d.scheduler.add_job(job, id="drain-now")
    d.scheduler.start()
    try:
        time.sleep(0.1)
        t0 = time.monotonic()
        d.scheduler.shutdown(wait=True)   # while the job runs
        assert asked.is_set() and time.monotonic() - t0 < 5
        assert os.read(d._wake_r, 16)     # the main loop was woken to do it
        d._apply_draining()               # after shutdown: nothing to pause any more
        d.scheduler = BackgroundScheduler(timezone="UTC")
        d.scheduler.add_job(lambda: None, "interval", id="spool-drain", seconds=3600)
        d.scheduler.start()
        d._drain_on = True
        d._draining(False)
        d._apply_draining()
        assert d.scheduler.get_job("spool-drain").next_run_time is None   # paused
        d._draining(True)
        d._apply_draining()
        assert d.scheduler.get_job("spool-drain").next_run_time is not None
    finally:
        if d.scheduler.running:
            d.scheduler.shutdown(wait=False)
        d._close_wake()
