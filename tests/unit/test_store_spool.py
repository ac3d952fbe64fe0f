"""The spool: an unreachable database, then a working one; the bound records a gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, func, select

from governor.store.db import scope_factory
from governor.store.models import Gap, Sample
from governor.store.spool import Spool, SpoolingWriter, sample_from_json, sample_to_json
from governor.store.testing import db_url, engine, make_sample  # noqa: F401

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _batch(i, n=3):
    return [make_sample(group=f"g{j}", cgroup_id=10 + j, wall=T0 + timedelta(minutes=i),
                        cpu=i * 1000, mem=4096, rbytes=4096 * i)
            for j in range(n)]


def _broken_engine(db_url, tmp_path):  # noqa: F811
    if db_url.startswith("sqlite"):
        return create_engine(f"sqlite:///{tmp_path}/no/such/dir/db.sqlite")
    return create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none",
                         connect_args={"connect_timeout": 2})


def test_sample_json_round_trip():
    s = make_sample(wall=T0, cpu=5, rbytes=4096, created=T0 - timedelta(seconds=3))
    assert sample_from_json(sample_to_json(s)) == s


def test_unreachable_database_spools_then_drains_in_order(engine, db_url, tmp_path):  # noqa: F811
    current = {"engine": _broken_engine(db_url, tmp_path)}

    def scope():
        return scope_factory(current["engine"])()

    spool = Spool(tmp_path / "spool" / "journal.jsonl", max_samples=100)
    writer = SpoolingWriter(spool=spool, session_scope=scope)
    assert [writer.submit("n1", _batch(i)) for i in range(3)] == ["spooled"] * 3
    assert spool.pending_samples() == 9
    assert oct((tmp_path / "spool" / "journal.jsonl").stat().st_mode & 0o777) == "0o600"

    current["engine"] = engine  # the database is back
    assert writer.submit("n1", _batch(3)) == "stored"
    assert not spool and not (tmp_path / "spool" / "journal.jsonl").exists()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Sample)).scalar_one() == 12
        assert conn.execute(select(func.count()).select_from(Gap)).scalar_one() == 0


def test_full_spool_records_a_gap_never_silent(engine, db_url, tmp_path):  # noqa: F811
    current = {"engine": _broken_engine(db_url, tmp_path)}
    spool = Spool(tmp_path / "journal.jsonl", max_samples=6)
    writer = SpoolingWriter(spool=spool, session_scope=lambda: scope_factory(current["engine"])())  # noqa: PLW0108
    results = [writer.submit("n1", _batch(i)) for i in range(4)]
    assert results == ["spooled", "spooled", "gap", "gap"]
    current["engine"] = engine
    assert spool.drain(scope_factory(engine)) == 4
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Sample)).scalar_one() == 6
        gaps = conn.execute(select(Gap.from_ts, Gap.to_ts, Gap.rows_lost)
                            .order_by(Gap.from_ts)).all()
    assert [(g.from_ts, g.to_ts, g.rows_lost) for g in gaps] == [
        (T0 + timedelta(minutes=2), T0 + timedelta(minutes=2), 3),
        (T0 + timedelta(minutes=3), T0 + timedelta(minutes=3), 3),
    ]


def test_crash_mid_drain_replays_without_doubling(engine, tmp_path):  # noqa: F811
    spool = Spool(tmp_path / "j.jsonl", max_samples=100)
    for i in range(3):
        spool.put("n1", _batch(i), reason="test")
    scope = scope_factory(engine)
    # first batch written but the ".done" mark lost (crash between the two)
    with scope() as s:
        from governor.store.service import record_samples

        record_samples(session=s, node="n1", samples=_batch(0))
    assert spool.drain(scope) == 3
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Sample)).scalar_one() == 9


def test_torn_last_line_is_skipped(tmp_path):
    spool = Spool(tmp_path / "j.jsonl", max_samples=100)
    spool.put("n1", _batch(0), reason="test")
    with (tmp_path / "j.jsonl").open("a") as f:
        f.write('{"kind": "samples", "no')
    assert len(spool.pending()) == 1
