"""Issue #16: the daemon meters each pass in memory (the database written, never read back
on the hot path) and gets exactly the rows the store's own ``meter()`` gets.

Each case replays one random history twice into the same database under two node names:
node "db" the way governor metered before (every pass stored, then ``meter()`` over the
stored rows), node "mem" the way the daemon does now (stored, then ``Meter.step`` against
the anchors in memory, written with ``write_metered``; anchors it does not hold resolved
with ``load_anchors``; after a restart or a crash between the two commits, one ``meter()``
catch-up).  Histories hold counter resets, new incarnations of a path (birth known and
unknown), groups missing from passes, passes across hour boundaries, restarts, crashes
between the commits, and anchors evicted from memory.  Interval rows and hourly rollups
of the two nodes must be identical, row for row (with wall-clock steps back: the same
counters billed, see the second test).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from governor.metering.catchup import load_anchors, meter
from governor.metering.meter import Anchor, Meter, Pending, inc_key
from governor.metering.sample import GroupSample
from governor.store.db import scope_factory
from governor.store.metered import write_metered
from governor.store.models import Group, HourlyRollup, IntervalUsageRow, Node
from governor.store.service import Incarnations, record_samples, store_samples
from tests.helpers.db import db_url, engine, make_sample  # noqa: F401

T0 = datetime(2026, 12, 5, 9, 58, 30, tzinfo=UTC)
PATHS = [("acme", "web"), ("acme", "db"), ("acme", None), ("beta", "batch"), ("beta", "x")]


def history(seed: int, passes: int = 60, *, clock_steps: bool = False
            ) -> list[tuple[str, list[dict[str, Any]]]]:
    """Events: ("pass", [sample fields...]), ("restart", []), ("crash", [...]) (a pass
    stored, its metering never committed)."""
    rnd = random.Random(seed)
    state = {p: {"cid": 100 + i, "cpu": 0, "mem": 4096, "rb": 0, "wb": 0, "oom": 0,
                 "sto": None, "born": T0 - timedelta(seconds=rnd.randint(0, 30))}
             for i, p in enumerate(PATHS)}
    next_cid = 1000
    wall = T0
    mono = 1000.0
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for _ in range(passes):
        step = rnd.choice([10, 10, 10, 10, 37, 600, 3700])
        wall += timedelta(seconds=step, microseconds=rnd.randint(0, 999_999))
        mono += step + rnd.random() * 0.01
        roll = rnd.random()
        if roll < 0.05:
            out.append(("restart", []))
        elif clock_steps and roll < 0.09:
            # the wall clock stepped back (NTP): samples at or before an anchor are
            # metered already and must be ignored, as the store ignores late samples
            wall -= timedelta(seconds=rnd.choice([5, 25, 700]))
        batch = []
        for p, st in state.items():
            if rnd.random() < 0.08:
                continue  # missing from this pass (a read error)
            r = rnd.random()
            if r < 0.04 and not clock_steps:  # a new incarnation of the path
                next_cid += 1
                st.update(cid=next_cid, cpu=0, rb=0, wb=0, oom=0,
                          born=(wall - timedelta(seconds=rnd.randint(1, 5))
                                if rnd.random() < 0.7 else None))
            elif r < 0.06:  # a counter went backwards (a reset)
                st["cpu"] = max(0, st["cpu"] - rnd.randint(1, 1000))
            else:
                st["cpu"] += rnd.randint(0, 10_000_000)
                st["rb"] += rnd.choice([0, 4096, 1 << 20])
                st["wb"] += rnd.choice([0, 512, 1 << 16])
                if rnd.random() < 0.05:
                    st["oom"] += 1
            st["mem"] = rnd.randint(0, 1 << 30)
            # the writable layers (issue #19): a container starts or ends now and then
            if rnd.random() < 0.15:
                st["sto"] = None if st["sto"] is not None else 0
            if st["sto"] is not None:
                st["sto"] += rnd.randint(0, 1 << 30)
            batch.append({"tenant": p[0], "group": p[1], "cgroup_id": st["cid"],
                          "wall": wall, "mono": mono, "cpu": st["cpu"], "mem": st["mem"],
                          "rbytes": st["rb"], "wbytes": st["wb"], "oom_kill": st["oom"],
                          "created": st["born"], "storage": st["sto"]})
        out.append(("crash" if roll > 0.95 else "pass", batch))
    return out


def samples(node: str, batch: list[dict[str, Any]]) -> list[GroupSample]:
    return [make_sample(node=node, **b) for b in batch]


def replay_db(scope: Callable[[], AbstractContextManager[Session]],
              events: list[tuple[str, list[dict[str, Any]]]]) -> None:
    for kind, batch in events:
        if not batch:
            continue
        with scope() as session:
            record_samples(session=session, node="db", samples=samples("db", batch))
        if kind == "pass":
            with scope() as session:
                meter(session=session, node="db")
    with scope() as session:
        meter(session=session, node="db")


def replay_mem(scope: Callable[[], AbstractContextManager[Session]],
               events: list[tuple[str, list[dict[str, Any]]]], keep_passes: int) -> int:
    """The daemon's way; returns how many anchors were resolved from the database."""
    m = Meter(keep_passes=keep_passes)
    inc = Incarnations()
    ready = False
    resolved_total = 0
    for kind, batch in events:
        if kind == "restart":
            m, inc, ready = Meter(keep_passes=keep_passes), Incarnations(), False
            continue
        if not batch:
            continue
        ss = samples("mem", batch)
        with scope() as session:
            node_id, ids = store_samples(session=session, node="mem", samples=ss,
                                         incarnations=inc)
        if kind == "crash":
            ready = False
            continue
        with scope() as session:
            if not ready:
                meter(session=session, node="mem")
                step = None
            else:
                def resolve(unknown: list[GroupSample], session: Any = session,
                            node_id: int = node_id, ids: Any = ids) -> dict[Any, Anchor]:
                    nonlocal resolved_total
                    got = load_anchors(session=session, node="mem", node_id=node_id,
                                       samples=unknown, ids=ids)
                    resolved_total += len(got)
                    return got

                pending: Pending[int] = Pending()
                step = m.step_into(ss, resolve, pending, ids)
                write_metered(session=session, node_id=node_id, metered=pending.metered())
        if step is None:
            m.forget()
            ready = True
        else:
            m.advance_to(step)
    with scope() as session:
        meter(session=session, node="mem")
    return resolved_total


def rows(engine: Engine, node: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:  # noqa: F811
    with engine.connect() as c:
        nid = c.execute(select(Node.id).where(Node.name == node)).scalar_one()
        usage = c.execute(
            select(Group.path, Group.cgroup_id, IntervalUsageRow.start_ts,
                   IntervalUsageRow.end_ts, IntervalUsageRow.duration_us,
                   IntervalUsageRow.from_creation, IntervalUsageRow.cpu_usec,
                   IntervalUsageRow.memory_byte_seconds, IntervalUsageRow.io_rbytes,
                   IntervalUsageRow.io_wbytes, IntervalUsageRow.oom_kills,
                   IntervalUsageRow.storage_byte_seconds)
            .join(Group, Group.id == IntervalUsageRow.group_id)
            .where(IntervalUsageRow.node_id == nid)).all()
        rollups = c.execute(
            select(Group.path, Group.cgroup_id, HourlyRollup.hour, HourlyRollup.covered_us,
                   HourlyRollup.intervals, HourlyRollup.cpu_usec,
                   HourlyRollup.memory_byte_seconds, HourlyRollup.io_rbytes,
                   HourlyRollup.io_wbytes, HourlyRollup.oom_kills,
                   HourlyRollup.storage_byte_seconds)
            .join(Group, Group.id == HourlyRollup.group_id)
            .where(HourlyRollup.node_id == nid)).all()
        anchors = c.execute(select(Group.path, Group.cgroup_id, Group.metered_until)
                            .where(Group.node_id == nid)).all()
    return sorted(map(tuple, usage)), sorted(map(tuple, rollups)) + sorted(
        map(tuple, anchors))


@pytest.mark.parametrize("seed", range(12))
def test_in_memory_metering_writes_exactly_what_the_store_meter_writes(
        engine: Engine, seed: int) -> None:  # noqa: F811
    events = history(seed)
    scope = scope_factory(engine)
    replay_db(scope, events)
    # keep_passes 3: anchors of groups missing a few passes leave memory and come back
    # through load_anchors, as after a long absence
    resolved = replay_mem(scope, events, keep_passes=3 if seed % 2 else 360)
    usage_db, roll_db = rows(engine, "db")
    usage_mem, roll_mem = rows(engine, "mem")
    assert usage_db, "the history metered nothing: the case tests nothing"
    assert any(r[-1] for r in usage_db), "no storage metered: the storage part tests nothing"
    assert usage_mem == usage_db
    assert roll_mem == roll_db
    assert resolved > 0


@pytest.mark.parametrize("seed", range(6))
def test_wall_clock_steps_back_bill_the_same_counters(engine: Engine, seed: int) -> None:  # noqa: F811
    """With the wall clock stepping back, both ignore samples at or before an anchor;
    ``meter()`` also leaves samples before its read window (2 minutes behind the newest
    anchor) for later and pairs them in one longer interval, where the in-memory meter
    pairs each.  The rows differ there, the counters billed do not: CPU, IO and OOM kills
    per incarnation, in intervals and in rollups, are equal.  (New incarnations are left
    out here: one born in a stepped-back window is counted from its birth in memory,
    where ``meter()``, pairing it only later, finds the earlier incarnation's last sample
    after that birth and cannot count it.)"""
    events = history(seed, clock_steps=True)
    scope = scope_factory(engine)
    replay_db(scope, events)
    replay_mem(scope, events, keep_passes=3 if seed % 2 else 360)

    def totals(node: str) -> dict[tuple[str, int], tuple[int, ...]]:
        usage, roll = rows(engine, node)
        out: dict[tuple[str, int], list[int]] = {}
        for r in usage:
            acc = out.setdefault((r[0], r[1]), [0] * 8)
            for i, v in enumerate((r[6], r[8], r[9], r[10])):
                acc[i] += v
        for r in roll:
            if len(r) == 11:  # a rollup row (the anchors' rows have 3 columns)
                acc = out.setdefault((r[0], r[1]), [0] * 8)
                for i, v in enumerate((r[5], r[7], r[8], r[9])):
                    acc[4 + i] += v
        return {k: tuple(v) for k, v in out.items()}

    db, mem = totals("db"), totals("mem")
    assert any(v[0] for v in db.values())
    assert mem == db
    for v in mem.values():
        assert v[:4] == v[4:]  # rollups hold exactly the intervals


def test_meter_refuses_a_sample_it_has_no_anchor_for() -> None:
    m = Meter()
    s = make_sample(wall=T0)
    assert m.unknown([s]) == [s]
    with pytest.raises(ValueError, match="no anchor for acme/web"):
        m.step([s])
    step = m.step([s], {inc_key(s): Anchor(None, None)})
    assert step.anchors == {inc_key(s): s} and not m.unknown([]) and len(m) == 0
    m.advance(step)
    assert len(m) == 1 and m.unknown([s]) == []


def test_a_step_not_advanced_changes_nothing_in_memory() -> None:
    """A pass whose metering write failed is metered again from the same anchor."""
    m = Meter()
    a = make_sample(wall=T0, cpu=1000)
    m.advance(m.step([a], {inc_key(a): Anchor(None, None)}))
    b = make_sample(wall=T0 + timedelta(seconds=10), mono=10.0, cpu=5000)
    first = m.step([b])           # written, but the commit failed: not advanced
    again = m.step([b])
    assert [iv.quantities[0] for _, iv in first.usages] == [
        iv.quantities[0] for _, iv in again.usages] \
        == [4000]


def test_the_time_text_cache_holds_two_passes_not_the_whole_run(tmp_path: Path) -> None:
    """Each pass's times are converted to SQLite text once and reused by the next pass
    (its intervals' starts); older times leave the cache, so a long run does not keep
    every sample's time alive (it did: 100,000 of them, 15 MiB at 1,000 groups)."""
    from governor.store.bulk import _SQLITE_TS
    from governor.store.db import make_engine, upgrade

    # SQLite only: PostgreSQL takes the datetimes themselves (no text cache)
    sqlite = make_engine(f"sqlite:///{tmp_path}/governor.db")
    upgrade(sqlite)
    scope = scope_factory(sqlite)
    m, inc = Meter(), Incarnations()
    groups = [("acme", f"g{i}") for i in range(50)]
    for p in range(40):
        wall = T0 + timedelta(seconds=10 * p)
        batch = [make_sample(tenant=t, group=g, cgroup_id=100 + i,
                             wall=wall + timedelta(microseconds=i), cpu=1000 * p,
                             created=T0 - timedelta(seconds=1))
                 for i, (t, g) in enumerate(groups)]
        with scope() as session:
            node_id, ids = store_samples(session=session, node="n1", samples=batch,
                                         incarnations=inc)
            unknown = m.unknown(batch)
            resolved = load_anchors(session=session, node="n1", node_id=node_id,
                                    samples=unknown, ids=ids) if unknown else None
            step = m.step(batch, resolved)
            write_metered(session=session, node_id=node_id, metered=step, ids=ids)
        m.advance(step)
        # this pass's 50 sample times and the last pass's, plus an hour or two
        assert len(_SQLITE_TS) <= 2 * len(groups) + 4, p
    expected = (T0 + timedelta(seconds=390)).isoformat(" ", "microseconds")[:26]
    assert _SQLITE_TS[T0 + timedelta(seconds=390)] == expected
    sqlite.dispose()
