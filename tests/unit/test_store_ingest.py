"""Ingest, idempotency, metering with restart pairing, retention; SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from governor.metering.catchup import meter
from governor.store.models import Gap, Group, HourlyRollup, IntervalUsageRow, Sample, SampleIo
from governor.store.service import apply_retention, record_gap, record_samples
from tests.helpers.db import db_url, engine, make_sample, session  # noqa: F401

T0 = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
GIB = 1 << 30
CORE_HOUR = 3_600_000_000


def _ticks(n, *, every=timedelta(minutes=10), start=T0, cgroup_id=100, group="web",
           node="n1", cpu_per_tick=CORE_HOUR // 6, created=None):
    return [make_sample(node=node, group=group, cgroup_id=cgroup_id, wall=start + i * every,
                        cpu=i * cpu_per_tick, mem=GIB, rbytes=i * 4096, wbytes=i * 8192,
                        created=created)
            for i in range(n)]


def _count(db, model):
    return db.execute(select(func.count()).select_from(model)).scalar_one()


def _sum(db, col):
    return db.execute(select(func.coalesce(func.sum(col), 0))).scalar_one()


def test_replayed_batch_is_not_doubled(session):  # noqa: F811
    batch = _ticks(7)
    assert record_samples(session=session, node="n1", samples=batch) == 7
    session.commit()
    record_samples(session=session, node="n1", samples=batch)  # replay after a "crash"
    session.commit()
    assert _count(session, Sample) == 7
    assert _count(session, SampleIo) == 6  # the first tick has no io yet
    assert _count(session, Group) == 1


def test_meter_pairs_and_rolls_up_exactly(session):  # noqa: F811
    record_samples(session=session, node="n1", samples=_ticks(19))  # 00:00 .. 03:00
    r = meter(session=session, node="n1")
    session.commit()
    assert (r.samples, r.intervals, r.skipped) == (19, 18, 1)  # first: unknown birth
    assert _sum(session, HourlyRollup.cpu_usec) == 3 * CORE_HOUR
    assert _sum(session, HourlyRollup.memory_byte_seconds) == 3 * 3600 * GIB
    assert _sum(session, HourlyRollup.io_rbytes) == 18 * 4096
    assert _count(session, HourlyRollup) == 3
    # running again finds nothing new and changes nothing
    again = meter(session=session, node="n1")
    session.commit()
    assert again.intervals == 0
    assert _sum(session, HourlyRollup.cpu_usec) == 3 * CORE_HOUR


def test_restart_pairs_with_last_stored_sample_once(session):  # noqa: F811
    ticks = _ticks(19)
    record_samples(session=session, node="n1", samples=ticks[:7])  # until 01:00
    meter(session=session, node="n1")
    session.commit()
    # daemon down from 01:00 to 02:30; the first sample after the restart pairs with 01:00
    record_samples(session=session, node="n1", samples=ticks[15:])
    meter(session=session, node="n1")
    session.commit()
    assert _sum(session, IntervalUsageRow.cpu_usec) == 3 * CORE_HOUR
    assert _sum(session, HourlyRollup.cpu_usec) == 3 * CORE_HOUR
    long = session.execute(select(IntervalUsageRow).where(
        IntervalUsageRow.start_ts == T0 + timedelta(hours=1))).scalar_one()
    assert long.end_ts == T0 + timedelta(hours=2, minutes=30)


def test_new_incarnation_with_known_birth_counts_from_zero(session):  # noqa: F811
    old = _ticks(4)  # 00:00..00:30, cgroup 100
    born = T0 + timedelta(minutes=35)
    new = [make_sample(cgroup_id=200, wall=T0 + timedelta(minutes=40), cpu=1_000, mem=0,
                       created=born),
           make_sample(cgroup_id=200, wall=T0 + timedelta(minutes=50), cpu=5_000, mem=0,
                       created=born)]
    record_samples(session=session, node="n1", samples=old + new)
    meter(session=session, node="n1")
    session.commit()
    assert _count(session, Group) == 2
    assert _sum(session, HourlyRollup.cpu_usec) == 3 * (CORE_HOUR // 6) + 5_000


def test_retention_drops_old_raw_data_but_keeps_anchor_and_rollups(session):  # noqa: F811
    record_samples(session=session, node="n1", samples=_ticks(19))
    meter(session=session, node="n1")
    session.commit()
    before = _sum(session, HourlyRollup.cpu_usec)
    res = apply_retention(session=session, before=T0 + timedelta(days=30))
    session.commit()
    assert res.samples == 18  # all but the anchor (the last metered sample)
    assert _count(session, Sample) == 1
    assert _count(session, IntervalUsageRow) == 0
    assert _sum(session, HourlyRollup.cpu_usec) == before


def test_retention_keeps_unmetered_samples(session):  # noqa: F811
    record_samples(session=session, node="n1", samples=_ticks(5))
    session.commit()
    res = apply_retention(session=session, before=T0 + timedelta(days=30))
    assert res.samples == 0 and _count(session, Sample) == 5


def test_gap_recorded_once(session):  # noqa: F811
    for _ in range(2):
        record_gap(session=session, node="n1", from_ts=T0, to_ts=T0 + timedelta(hours=1),
                   reason="spool full", rows_lost=42)
    session.commit()
    gap = session.execute(select(Gap)).scalar_one()
    assert gap.rows_lost == 42 and gap.from_ts == T0


def test_meter_statements_do_not_grow_with_the_number_of_groups(session):  # noqa: F811
    """A steady-state meter pass issues the same handful of statements for 5 groups as for
    60 (the anchors go in one batched UPDATE).  It once issued an ORM UPDATE per group that
    re-checked every loaded group: O(groups^2), 5-6 s of CPU a pass at 1,000 groups."""
    from sqlalchemy import event

    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def statements(n: int, node: str) -> int:
        for k in range(3):
            record_samples(session=session, node=node, samples=[
                make_sample(node=node, group=f"g{i}", cgroup_id=1000 + i,
                            wall=t0 + timedelta(seconds=10 * k), cpu=k * 1000)
                for i in range(n)])
            if k < 2:
                meter(session=session, node=node)
        seen = [0]

        def count(*_a: object) -> None:
            seen[0] += 1

        conn = session.connection()
        event.listen(conn, "before_cursor_execute", count)
        try:
            result = meter(session=session, node=node)
        finally:
            event.remove(conn, "before_cursor_execute", count)
        assert result.intervals == n
        return seen[0]

    small, large = statements(5, "n1"), statements(60, "n2")
    assert small == large, (small, large)
    assert large <= 12


def test_meter_reads_only_the_recent_end_and_keeps_a_late_groups_usage(session):  # noqa: F811
    """Metering reads samples from the oldest anchor among the lately metered groups, not
    the whole raw table; a group absent for longer than that window (an old anchor) still
    pairs its next sample with its anchor: nothing is lost across the gap."""
    from governor.metering.catchup import METER_LOOKBACK

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    step = timedelta(seconds=10)

    def tick(k: int, groups: list[str]) -> None:
        record_samples(session=session, node="n1", samples=[
            make_sample(group=g, cgroup_id=100 + i, wall=t0 + k * step + i * timedelta(
                milliseconds=5), cpu=k * 1000, wbytes=k * 4096)
            for i, g in enumerate(("busy", "gappy")) if g in groups])
        meter(session=session, node="n1")

    for k in range(3):
        tick(k, ["busy", "gappy"])
    gap = int(METER_LOOKBACK / step) + 30  # "gappy" is away for longer than the window
    for k in range(3, 3 + gap):
        tick(k, ["busy"])
    last = 3 + gap
    tick(last, ["busy", "gappy"])
    billed = dict(session.execute(
        select(Group.name, func.sum(IntervalUsageRow.cpu_usec))
        .join(Group, Group.id == IntervalUsageRow.group_id).group_by(Group.name)).all())
    assert billed == {"busy": last * 1000 - 0, "gappy": last * 1000}
    wrote = session.execute(select(func.sum(IntervalUsageRow.io_wbytes)).join(
        Group, Group.id == IntervalUsageRow.group_id).where(Group.name == "gappy")).scalar_one()
    assert wrote == last * 4096
    if session.bind.dialect.name == "sqlite":
        # the raw rows are read by a (node, ts) range of the primary key
        from governor.metering import catchup
        compiled = []

        def seen(_c, _cur, statement, *_a):  # type: ignore[no-untyped-def]
            compiled.append(statement)

        from sqlalchemy import event
        conn = session.connection()
        event.listen(conn, "before_cursor_execute", seen)
        try:
            tick(last + 1, ["busy", "gappy"])
        finally:
            event.remove(conn, "before_cursor_execute", seen)
        [q] = [s for s in compiled if s.lstrip().startswith("SELECT")
               and "FROM samples JOIN" in s]
        assert "samples.ts >=" in q
        assert catchup.METER_LOOKBACK == METER_LOOKBACK


def test_recreated_group_pairs_with_the_earlier_incarnation_by_key(session):  # noqa: F811
    """A new incarnation is checked against the earlier one's last sample (its anchor, or
    its samples in the same run): a birth after it counts from zero, a birth before it (the
    new cgroup may have been counted under the old pairing) is not counted."""
    old = _ticks(4)  # 00:00..00:30, cgroup 100
    record_samples(session=session, node="n1", samples=old)
    meter(session=session, node="n1")  # the old incarnation's anchor: 00:30
    late = [make_sample(cgroup_id=200, wall=T0 + timedelta(minutes=40), cpu=1_000,
                        created=T0 + timedelta(minutes=35))]
    record_samples(session=session, node="n1", samples=late)
    meter(session=session, node="n1")
    assert _sum(session, IntervalUsageRow.cpu_usec) == 3 * (CORE_HOUR // 6) + 1_000
    early = [make_sample(cgroup_id=300, wall=T0 + timedelta(minutes=50), cpu=7_000,
                         created=T0 + timedelta(minutes=20))]  # before 00:40 (cgroup 200)
    record_samples(session=session, node="n1", samples=early)
    result = meter(session=session, node="n1")
    assert result.skipped == 1
    assert _sum(session, IntervalUsageRow.cpu_usec) == 3 * (CORE_HOUR // 6) + 1_000


def test_storage_bytes_are_stored_and_come_back_in_the_anchor(session):  # noqa: F811
    """Issue #19: the writable layers' bytes are a raw gauge like memory.current: stored
    as given (None stays NULL: missing is not zero), and read back into the sample the
    next pass pairs with after a restart (load_anchors)."""
    from governor.metering.catchup import load_anchors
    from governor.metering.meter import inc_key
    from governor.store.service import store_samples

    a = make_sample(wall=T0, storage=5 << 40)
    b = make_sample(group="db", cgroup_id=101, wall=T0)
    node_id, ids = store_samples(session=session, node="n1", samples=[a, b])
    session.commit()
    got = dict(session.execute(select(Sample.group_id, Sample.storage_bytes)).tuples().all())
    assert got == {ids[inc_key(a)]: 5 << 40, ids[inc_key(b)]: None}
    meter(session=session, node="n1")   # anchors both at T0
    session.commit()
    later = [make_sample(wall=T0 + timedelta(minutes=1)),
             make_sample(group="db", cgroup_id=101, wall=T0 + timedelta(minutes=1))]
    anchors = load_anchors(session=session, node="n1", node_id=node_id, samples=later,
                           ids=ids)
    assert anchors[inc_key(a)].sample == a and anchors[inc_key(a)].sample.storage_bytes == 5 << 40
    assert anchors[inc_key(b)].sample is not None
    assert anchors[inc_key(b)].sample.storage_bytes is None


def test_meter_rolls_up_storage_only_where_both_ends_were_measured(session):  # noqa: F811
    """Issue #19 through the store: the writable layers' integral in usage_intervals and
    rollups_hourly, the interval where a container's layer appeared counted as 0 (its
    quantity unknown, stored as 0 as memory's is)."""
    ticks = [make_sample(wall=T0 + i * timedelta(minutes=10), mem=GIB, storage=s)
             for i, s in enumerate([None, 2 * GIB, 4 * GIB, 4 * GIB, None])]
    record_samples(session=session, node="n1", samples=ticks)
    r = meter(session=session, node="n1")
    session.commit()
    assert (r.intervals, r.skipped) == (4, 1)
    got = session.execute(select(IntervalUsageRow.end_ts, IntervalUsageRow.storage_byte_seconds)
                          .order_by(IntervalUsageRow.end_ts)).tuples().all()
    assert [v for _, v in got] == [0, 3 * 600 * GIB, 4 * 600 * GIB, 0]
    assert _sum(session, HourlyRollup.storage_byte_seconds) == 7 * 600 * GIB
    assert _sum(session, HourlyRollup.memory_byte_seconds) == 4 * 600 * GIB


def test_a_pass_of_many_groups_is_stored_exactly_and_a_replay_mixed_in_is_not_doubled(
        session):  # noqa: F811
    """More rows than one multi-row INSERT takes (bulk_insert_ignore: 31 sample rows, 64
    io rows a statement on SQLite), and a batch that mixes rows stored already with new
    ones inside those statements: every value as given, none twice."""
    first = [make_sample(group=f"g{i}", cgroup_id=1000 + i, wall=T0 + timedelta(seconds=i % 7),
                         cpu=i * 1000, mem=i << 20, rbytes=4096 * (i % 3), wbytes=8192 * i,
                         storage=None if i % 4 else i)
             for i in range(150)]
    record_samples(session=session, node="n1", samples=first)
    session.commit()
    later = [make_sample(group=f"g{i}", cgroup_id=1000 + i, wall=T0 + timedelta(minutes=1),
                         cpu=i * 2000, mem=i << 21, wbytes=i)
             for i in range(150)]
    record_samples(session=session, node="n1", samples=first[40:] + later[:100] + first[:40]
                   + later[100:])
    session.commit()
    everything = first + later
    assert _count(session, Sample) == len(everything)
    assert _count(session, SampleIo) == sum(len(s.io) for s in everything)
    groups = {g.id: g.name for g in session.execute(select(Group)).scalars()}
    stored = {(groups[r.group_id], r.ts): r for r in session.execute(select(Sample)).scalars()}
    for s in everything:
        r = stored[(s.group, s.wall)]
        assert (r.mono, r.cpu_usage_usec, r.cpu_user_usec, r.memory_current, r.storage_bytes,
                r.psi_cpu_some_usec, r.psi_cpu_full_usec) == (
            s.monotonic, s.cpu_usage_usec, s.cpu_user_usec, s.memory_current, s.storage_bytes,
            s.psi.get("cpu_some"), s.psi.get("cpu_full"))
    io = {(groups[r.group_id], r.ts, r.device): (r.rbytes, r.wbytes, r.rios, r.wios, r.dbytes)
          for r in session.execute(select(SampleIo)).scalars()}
    assert io == {(s.group, s.wall, dev): tuple(c.values())
                  for s in everything for dev, c in s.io.items()}


def test_cached_incarnations_known_groups_skip_the_lookup_new_ones_get_rows(session):  # noqa: F811
    from governor.store.service import Incarnations, store_samples

    inc = Incarnations()
    one = make_sample(node="n1", group="web", cgroup_id=100, wall=T0)
    two = make_sample(node="n1", group="db", cgroup_id=200, wall=T0)
    node_id, ids = store_samples(session=session, node="n1", samples=[one, two],
                                 incarnations=inc)
    web, db = ids[("acme", "web", 100)], ids[("acme", "db", 200)]
    assert web != db and _count(session, Group) == 2
    # a pass of known groups: the node's cache itself, no row made or looked up
    later = [make_sample(node="n1", group="web", cgroup_id=100, wall=T0 + timedelta(1)),
             make_sample(node="n1", group="db", cgroup_id=200, wall=T0 + timedelta(1))]
    _, again = store_samples(session=session, node="n1", samples=later, incarnations=inc)
    assert again is inc.ids[node_id] and again[("acme", "web", 100)] == web
    # web re-made (a new cgroup inode) among known ones: its own new row, the other's kept
    remade = [make_sample(node="n1", group="web", cgroup_id=101, wall=T0 + timedelta(2)),
              make_sample(node="n1", group="db", cgroup_id=200, wall=T0 + timedelta(2))]
    _, third = store_samples(session=session, node="n1", samples=remade, incarnations=inc)
    assert third[("acme", "web", 101)] not in (web, db) and third[("acme", "db", 200)] == db
    assert _count(session, Group) == 3 and _count(session, Sample) == 6
    assert inc.ids[node_id][("acme", "web", 101)] == third[("acme", "web", 101)]
    # a sample of another node is refused, named
    with pytest.raises(ValueError, match="'n2' passed to record_samples for 'n1'"):
        store_samples(session=session, node="n1", samples=[
            later[0], make_sample(node="n2", group="x", cgroup_id=1, wall=T0)],
            incarnations=inc)
    # forget (after a rollback): looked up again from the table, the same ids
    inc.forget()
    _, looked = store_samples(session=session, node="n1", samples=later, incarnations=inc)
    assert looked[("acme", "web", 100)] == web and looked is not again


@pytest.mark.parametrize("old_sqlite", [False, True])
def test_rollups_and_anchors_of_many_groups_in_multi_row_statements(
        session, monkeypatch: pytest.MonkeyPatch, old_sqlite: bool) -> None:  # noqa: F811
    """130 groups (two full statements of 64 and a remainder of 2 on SQLite): each group's
    rollup is added into its own row, twice over, and each anchor lands on its group."""
    import sqlite3

    from governor.metering.rollup import ROLLUP_QUANTITIES
    from governor.store.metered import _set_anchors, upsert_rollups
    from governor.store.service import store_samples

    if old_sqlite:   # SQLite before 3.33 has no UPDATE ... FROM: one UPDATE a group
        monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    batch = [make_sample(node="n1", group=f"g{i:03d}", cgroup_id=1000 + i, wall=T0)
             for i in range(130)]
    node_id, ids = store_samples(session=session, node="n1", samples=batch)
    gids = [ids[("acme", f"g{i:03d}", 1000 + i)] for i in range(130)]
    hour = T0.replace(minute=0)
    names = 2 + len(ROLLUP_QUANTITIES)   # covered_us, intervals and the quantities
    rollups = {(gid, hour): [i, 1, *range(i, i + names - 2)] for i, gid in enumerate(gids)}
    upsert_rollups(session=session, node_id=node_id, rollups=rollups)
    upsert_rollups(session=session, node_id=node_id, rollups=rollups)
    _set_anchors(session, [(gid, T0 + timedelta(seconds=i)) for i, gid in enumerate(gids)])
    session.commit()
    got = {r.group_id: r for r in session.execute(select(HourlyRollup))
           .scalars()}
    assert len(got) == 130
    for i, gid in enumerate(gids):
        assert (got[gid].covered_us, got[gid].intervals, got[gid].cpu_usec) == (2 * i, 2, 2 * i)
    anchors = dict(session.execute(select(Group.id, Group.metered_until)).tuples().all())
    assert all(anchors[gid] == T0 + timedelta(seconds=i) for i, gid in enumerate(gids))
