"""The spool: an unreachable database, then a working one; the bound records a gap."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tracemalloc
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select

import governor.store.spool as spool_mod
from governor.store.db import scope_factory
from governor.store.models import Gap, Sample
from governor.store.spool import (
    Spool,
    SpoolingWriter,
    sample_from_json,
    sample_to_json,
    write_all,
)
from tests.helpers.db import db_url, engine, make_sample  # noqa: F401

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
    big = make_sample(wall=T0, storage=(1 << 63) - 1)
    assert sample_from_json(json.loads(json.dumps(sample_to_json(big)))) == big


def test_a_line_spooled_before_storage_metering_reads_as_not_measured():
    """A journal written by a governor without storage_bytes (issue #19) drains after the
    upgrade: the missing key is None, not 0."""
    d = sample_to_json(make_sample(wall=T0, storage=123))
    assert d["storage_bytes"] == 123
    del d["storage_bytes"]
    assert sample_from_json(d).storage_bytes is None


def test_unreachable_database_spools_then_drains_in_order(engine, db_url, tmp_path):  # noqa: F811
    current = {"engine": _broken_engine(db_url, tmp_path)}

    def scope():
        return scope_factory(current["engine"])()

    spool = Spool(tmp_path / "spool" / "journal.jsonl", max_samples=100)
    writer = SpoolingWriter(spool=spool, session_scope=scope)
    # the first finds the database unreachable; the next go behind it without trying
    assert [writer.submit("n1", _batch(i)) for i in range(3)] == ["spooled", "queued", "queued"]
    assert spool.pending_samples() == 9
    assert oct((tmp_path / "spool" / "journal.jsonl").stat().st_mode & 0o777) == "0o600"

    current["engine"] = engine  # the database is back
    assert writer.submit("n1", _batch(3)) == "queued"   # behind the backlog, in order
    assert writer.drain(max_entries=2) == 2 and spool.pending_samples() == 6
    assert writer.drain() == 2
    assert writer.submit("n1", _batch(4)) == "stored"
    assert not spool and not (tmp_path / "spool" / "journal.jsonl").exists()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Sample)).scalar_one() == 15
        assert conn.execute(select(func.count()).select_from(Gap)).scalar_one() == 0


def test_full_spool_records_a_gap_never_silent(engine, db_url, tmp_path):  # noqa: F811
    current = {"engine": _broken_engine(db_url, tmp_path)}
    spool = Spool(tmp_path / "journal.jsonl", max_samples=6)
    writer = SpoolingWriter(spool=spool, session_scope=lambda: scope_factory(current["engine"])())  # noqa: PLW0108
    results = [writer.submit("n1", _batch(i)) for i in range(4)]
    assert results == ["spooled", "queued", "gap", "gap"]
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


# -- issue #15 item 7: every write checked; a full disk is a gap, logged once, counted ----

class FakeDisk:
    """``Spool.write`` for tests: at most ``chunk`` bytes a call; ``fail`` an errno for
    the calls whose (0-based) numbers are in ``failing`` (after ``partial`` bytes)."""

    def __init__(self, *, chunk: int = 1 << 30, fail: int = errno.ENOSPC,
                 failing: Iterable[int] = (), partial: int = 0) -> None:
        self.chunk, self.fail, self.failing, self.partial = chunk, fail, set(failing), partial
        self.calls = 0

    def __call__(self, fd: int, data: memoryview) -> int:
        n = self.calls
        self.calls += 1
        if n in self.failing:
            if self.partial:
                os.write(fd, data[:self.partial])
            raise OSError(self.fail, os.strerror(self.fail))
        return os.write(fd, data[:self.chunk])


def test_short_writes_are_completed(tmp_path):
    spool = Spool(tmp_path / "j.jsonl", max_samples=100)
    spool.write = FakeDisk(chunk=7)
    assert spool.put("n1", _batch(0), reason="test") is True
    assert spool.write.calls > 100  # really written 7 bytes at a time
    again = Spool(tmp_path / "j.jsonl", max_samples=100)
    assert [e["kind"] for e in again.pending()] == ["samples"]
    assert again.pending_samples() == 3 and sample_from_json(
        again.pending()[0]["samples"][0]) == _batch(0)[0]


def test_write_of_nothing_is_enospc():
    with pytest.raises(OSError) as e:
        write_all(0, b"abc", lambda fd, data: 0)
    assert e.value.errno == errno.ENOSPC


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_full_disk_records_a_gap_logged_once_and_counted(engine, tmp_path, caplog,  # noqa: F811
                                                         err):
    path = tmp_path / "j.jsonl"
    spool = Spool(path, max_samples=100)
    assert spool.put("n1", _batch(0), reason="db down") is True
    size = path.stat().st_size
    # the disk fills up: two batches cannot be written, one of them after a partial write
    spool.write = FakeDisk(fail=err, failing={0, 1}, partial=11)
    with caplog.at_level(logging.ERROR, logger="governor.store.spool"):
        assert spool.put("n1", _batch(1), reason="db down") is False
        assert spool.put("n1", _batch(2), reason="db down") is False
    assert path.stat().st_size == size  # no torn line left behind
    name = errno.errorcode[err]
    assert dict(+spool.write_errors) == {name: 2}
    # the usual errnos are there from 0 (so increase() of the exported counter sees the first)
    assert {"ENOSPC", "EDQUOT", "EIO"} <= set(spool.write_errors)
    logged = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(logged) == 1 and str(path) in logged[0].getMessage() \
        and name in logged[0].getMessage()
    assert spool.pending_samples() == 3 and spool  # the gap is pending too
    # the disk has room again: the gap goes to the journal first, then the new batch
    spool.write = FakeDisk()
    writer = SpoolingWriter(spool=spool, session_scope=scope_factory(engine))
    assert spool.put("n1", _batch(3), reason="db down") is True
    assert [e["kind"] for e in Spool(path, max_samples=100).pending()] == [
        "samples", "gap", "samples"]
    assert writer.submit("n1", _batch(4)) == "queued"
    assert writer.drain() == 4   # samples, the gap, samples, and the queued batch
    with engine.connect() as conn:
        [gap] = conn.execute(select(Gap.rows_lost, Gap.from_ts, Gap.to_ts, Gap.reason)).all()
        assert conn.execute(select(func.count()).select_from(Sample)).scalar() == 9
    assert gap.rows_lost == 6
    assert (gap.from_ts, gap.to_ts) == (T0 + timedelta(minutes=1), T0 + timedelta(minutes=2))
    assert f"spool {path} not writable ({name}" in gap.reason


def test_full_disk_gap_is_stored_even_if_the_journal_never_takes_it(engine, tmp_path):  # noqa: F811
    spool = Spool(tmp_path / "j.jsonl", max_samples=100)
    spool.write = FakeDisk(failing=range(100))
    writer = SpoolingWriter(spool=spool, session_scope=_broken_scope)
    assert writer.submit("n1", _batch(0)) == "gap"
    writer.session_scope = scope_factory(engine)
    assert writer.drain() == 1   # the gap held in memory, stored by the drain job
    assert writer.submit("n1", _batch(1)) == "stored"
    with engine.connect() as conn:
        assert conn.execute(select(Gap.rows_lost)).scalars().all() == [3]
    assert not spool


def _broken_scope():
    return scope_factory(create_engine("sqlite:////nonexistent/dir/db.sqlite"))()


# -- issue #15 item 8: the journal read once per drain, a line at a time ------------------

def _fill(path, batches, n):
    spool = Spool(path, max_samples=10**9)
    for i in range(batches):
        spool.put("n1", _batch(i, n), reason="test")


def test_spool_read_once_per_drain(tmp_path, monkeypatch):
    _fill(tmp_path / "j.jsonl", 5, 3)
    parsed = []
    real = json.loads

    def counting(raw, *a, **kw):
        parsed.append(raw)
        return real(raw, *a, **kw)

    monkeypatch.setattr(spool_mod.json, "loads", counting)
    stored = []
    monkeypatch.setattr(spool_mod, "_store", lambda session, e: stored.append(e["kind"]))
    spool = Spool(tmp_path / "j.jsonl", max_samples=10**9)  # as after a restart
    for _ in range(3):  # passes while the database is down: counts, no parsing
        assert spool and spool.pending_samples() == 15
    assert spool.put("n1", _batch(9), reason="test")
    assert parsed == []
    assert spool.drain(lambda: contextlib.nullcontext(None)) == 6
    assert len(parsed) == 6 and stored == ["samples"] * 6  # each line parsed once
    assert not spool and spool.pending_samples() == 0


def test_spool_drain_memory_is_bounded_by_a_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_mod, "_store", lambda session, e: None)

    def peak(batches):
        path = tmp_path / f"j{batches}.jsonl"
        _fill(path, batches, 200)
        spool = Spool(path, max_samples=10**9)
        tracemalloc.start()
        try:
            spool.drain(lambda: contextlib.nullcontext(None))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, big = peak(4), peak(40)
    assert big < 2 * small, (small, big)  # 10x the journal, not 10x the memory


def test_torn_last_line_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / "j.jsonl"
    Spool(path, max_samples=100).put("n1", _batch(0), reason="test")
    with path.open("a") as f:
        f.write('{"kind":"samples","n":3,"no')  # a crash mid-append
    spool = Spool(path, max_samples=100)
    assert spool.pending_samples() == 3
    assert spool.put("n1", _batch(1), reason="test")
    assert [len(e["samples"]) for e in Spool(path, max_samples=100).pending()] == [3, 3]
