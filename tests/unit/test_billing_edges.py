"""Issue #18: a report up to now holds all the usage stored so far, exactly.  The hours that
a period (or a price or reservation change) cuts are read from the stored intervals that
lie in them, an interval crossing a cut split by its exact time share; whole hours from the
rollups; an hour whose intervals retention pruned falls back to its rollup's time share
(governor/billing/quantities.py, governor/billing/generic.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, select

from governor.billing import generic
from governor.billing.cli import usage_command
from governor.billing.quantities import (
    FIELDS,
    HOUR,
    HOUR_US,
    edge_hour,
    hour_floor,
    share,
    sum_pieces,
    sum_range,
)
from governor.billing.report import GIB, invoice, usage_report
from governor.metering.catchup import load_anchors, meter
from governor.metering.meter import Meter, Pending
from governor.policy.model import Limits, Policy, PricePlan, PriceVersion, Tenant
from governor.store.metered import write_metered
from governor.store.service import Incarnations, apply_retention, record_samples, store_samples
from governor.store.tables import rollups_hourly, tenants, usage_intervals, usage_values
from tests.helpers.db import db_url, engine, make_sample, session  # noqa: F401

T0 = datetime(2026, 11, 1, tzinfo=UTC)
D = Decimal
_TENANT = [tenants.c.name == "acme"]
_KEYS = [tenants.c.name]


def _policy(*versions: PriceVersion, basis: str = "usage") -> Policy:
    vs = versions or (PriceVersion(None, D("0.04"), D("0.005"), D("0.01"), D("0.02"),
                                   D("1")),)
    return Policy(tenants={"acme": Tenant(name="acme", plan="std", limits=Limits(),
                                          groups={})},
                  plans={"std": PricePlan("std", "EUR", tuple(vs), basis)},
                  sources=("test",), digest="x")


def _irregular(db, *, seed: int, start: datetime = T0, hours: int = 5,
               group: str = "web") -> list[datetime]:
    """Samples at irregular times (37 s to 25 min apart: some intervals cross hours) with
    irregular CPU, memory, IO, storage and huge pages; metered.  Returns the times."""
    rnd = random.Random(seed)
    t, cpu, rb, wb = start, 0, 0, 0
    ticks, times = [], []
    while t < start + hours * HOUR:
        s = make_sample(group=group, wall=t, cpu=cpu, mem=rnd.randrange(1, 3 * GIB),
                        rbytes=rb, wbytes=wb, storage=rnd.randrange(0, GIB))
        ticks.append(dataclasses.replace(
            s, values={"hugetlb.2MB.current": rnd.randrange(0, 512) << 21,
                       "hugetlb.2MB.events_max": 0}))
        times.append(t)
        step = rnd.randrange(37_000_000, 1_500_000_000)
        t += timedelta(microseconds=step)
        cpu += rnd.randrange(0, 2 * step)
        rb += rnd.randrange(0, 1 << 26)
        wb += rnd.randrange(0, 1 << 25)
    record_samples(session=db, node="n1", samples=ticks)
    meter(session=db, node="n1")
    db.commit()
    return times


def _stored(db) -> list[int]:
    """The stored intervals' totals in FIELDS order (covered time: their duration)."""
    u = usage_intervals.c
    cols = ["duration_us" if f == "covered_us" else f for f in FIELDS]
    return [int(v) for v in db.execute(select(*(func.sum(u[c]) for c in cols))).one()]


def _range(db, a: datetime, b: datetime) -> list[int]:
    got = sum_range(session=db, start=a, end=b, keys=_KEYS, where=_TENANT)
    t = got.get(("acme",))
    return [0] * len(FIELDS) if t is None else [getattr(t, f) for f in FIELDS]


def _hugetlb(db, a: datetime, b: datetime) -> int:
    got = generic.value_range(session=db, start=a, end=b, where=_TENANT, by="group")
    return sum(v.get("hugetlb_byte_seconds", 0) for v in got.values())


def test_partition_inside_hours_and_intervals_adds_up_exactly(session) -> None:  # noqa: F811
    times = _irregular(session, seed=18)
    end = hour_floor(times[-1]) + HOUR
    rnd = random.Random(7)
    # cut points inside hours and inside intervals (never on a sample), one of them twice
    # inside the same hour, plus one on the hour
    cuts = sorted({times[3] + (times[4] - times[3]) / 3,
                   times[9] + timedelta(microseconds=1),
                   *(T0 + timedelta(microseconds=rnd.randrange(0, 5 * HOUR_US))
                     for _ in range(6)),
                   T0 + 2 * HOUR} - set(times))
    assert any(hour_floor(a) == hour_floor(b) for a, b in itertools.pairwise(cuts))
    bounds = [T0, *cuts, end]
    pieces = list(itertools.pairwise(bounds))
    whole = _range(session, T0, end)
    assert whole == _stored(session)   # the kernel's counters, to the unit
    parts = [_range(session, a, b) for a, b in pieces]
    assert [sum(col) for col in zip(*parts, strict=True)] == whole
    # every cut hour was read from its intervals (those across its start and end included)
    for hour in sorted({hour_floor(c) for c in cuts if hour_floor(c) != c}):
        got = edge_hour(session=session, hour=hour, cuts=cuts, where=_TENANT)
        assert got and all(e.from_intervals for e in got.values()), hour
    # the same through the bill's pieces
    ids = select(usage_intervals.c.group_id).distinct()
    got = sum_pieces(session=session, pieces=pieces, group_ids=ids)
    by_piece = [[0] * len(FIELDS) for _ in pieces]
    for (_, _, i), t in got.items():
        by_piece[i] = [x + getattr(t, f) for x, f in zip(by_piece[i], FIELDS, strict=True)]
    assert by_piece == parts
    # the registered controllers' quantities (hugetlb) likewise
    stored = session.execute(select(func.sum(usage_values.c.value))).scalar_one()
    assert _hugetlb(session, T0, end) == stored > 0
    assert sum(_hugetlb(session, a, b) for a, b in pieces) == stored
    pieces_v = generic.value_pieces(session=session, pieces=pieces, group_ids=ids)
    assert [sum(v.get("hugetlb_byte_seconds", 0) for (_, _, i), v in pieces_v.items()
                if i == k) for k in range(len(pieces))] == [
        _hugetlb(session, a, b) for a, b in pieces]


def test_a_cut_hour_is_read_from_its_intervals_not_prorated(session) -> None:  # noqa: F811
    times = _irregular(session, seed=5)
    # an interval inside one hour: a period that is exactly that interval holds exactly it
    a, b = next((x, y) for x, y in itertools.pairwise(times)
                if hour_floor(x) == hour_floor(y) and x != hour_floor(x))
    u = usage_intervals.c
    row = session.execute(select(u.cpu_usec, u.io_rbytes, u.io_wbytes).where(
        u.end_ts == b)).one()
    got = _range(session, a, b)
    assert (got[FIELDS.index("cpu_usec")], got[FIELDS.index("io_rbytes")],
            got[FIELDS.index("io_wbytes")]) == tuple(row)
    # half of it: its exact time share (cumulative flooring on its own length)
    mid = a + (b - a) / 2
    length = (b - a) // timedelta(microseconds=1)
    half = (mid - a) // timedelta(microseconds=1)
    assert _range(session, a, mid)[FIELDS.index("cpu_usec")] == row.cpu_usec * half // length


def test_pruned_intervals_fall_back_to_the_rollups_time_share(session) -> None:  # noqa: F811
    times = _irregular(session, seed=11)
    end = hour_floor(times[-1]) + HOUR
    cut = T0 + timedelta(hours=2, minutes=21, seconds=7)
    cuts = [T0 + timedelta(minutes=13), cut, T0 + timedelta(hours=3, minutes=44)]
    before = [_range(session, a, b) for a, b in zip([T0, *cuts], [*cuts, end], strict=True)]
    whole = _range(session, T0, end)
    # retention with its cutoff inside the cut hour: that hour's intervals are partly gone
    apply_retention(session=session, before=cut - timedelta(minutes=3))
    session.commit()
    after = [_range(session, a, b) for a, b in zip([T0, *cuts], [*cuts, end], strict=True)]
    assert _range(session, T0, end) == whole          # whole hours: the rollups, unchanged
    assert [sum(c) for c in zip(*after, strict=True)] == whole   # still a partition
    r = rollups_hourly.c
    hour = hour_floor(cut)
    rollup = session.execute(select(*(r[f] for f in FIELDS)).where(r.hour == hour)).one()
    # the pruned hour: the rollup's time share on both sides of the cut
    first = _range(session, hour, cut)
    assert first == [share(int(v), hour, hour, cut) for v in rollup]
    # the last cut's hour kept its intervals: unchanged by retention
    assert after[-1] == before[-1]
    # every interval pruned: every cut hour falls back, and the partition still adds up
    apply_retention(session=session, before=end + HOUR)
    session.commit()
    assert session.execute(select(func.count()).select_from(usage_intervals)).scalar() == 0
    gone = [_range(session, a, b) for a, b in zip([T0, *cuts], [*cuts, end], strict=True)]
    assert [sum(c) for c in zip(*gone, strict=True)] == whole


def test_an_hour_whose_intervals_do_not_match_its_rollup_is_prorated(session) -> None:  # noqa: F811
    times = _irregular(session, seed=3)
    hour = hour_floor(times[10])
    u = usage_intervals.c
    # one interval inside the hour lost (as a partial prune would)
    victim = next(y for x, y in itertools.pairwise(times)
                  if hour_floor(x) == hour == hour_floor(y) and x != hour)
    session.execute(delete(usage_intervals).where(u.end_ts == victim))
    session.commit()
    cut = hour + timedelta(minutes=29, seconds=31)
    r = rollups_hourly.c
    rollup = session.execute(select(*(r[f] for f in FIELDS)).where(r.hour == hour)).one()
    assert _range(session, hour, cut) == [share(int(v), hour, hour, cut) for v in rollup]


def test_a_bill_up_to_now_holds_the_current_hours_intervals(session) -> None:  # noqa: F811
    # a job in an hour not over yet: the bill and the usage up to a moment inside it hold
    # all of its intervals (none is prorated by wall-clock time)
    job = T0 + timedelta(hours=5, minutes=2)
    now = job + timedelta(minutes=20)
    ticks = [make_sample(group="job", wall=job + i * timedelta(minutes=2),
                         cpu=i * 90_000_000, rbytes=i * (GIB // 8), wbytes=i * (GIB // 4))
             for i in range(9)]
    record_samples(session=session, node="n1", samples=ticks)
    meter(session=session, node="n1")
    session.commit()
    rep = usage_report(session=session, tenant="acme", start=T0 + 5 * HOUR, end=now,
                       by="group")
    [row] = rep.rows
    assert row.cpu_core_hours == D(8 * 90_000_000) / D(HOUR_US)
    assert (row.io_read_gib, row.io_write_gib) == (D(1), D(2))
    inv = invoice(session=session, policy=_policy(
        PriceVersion(None, D("3600"), D("0"), D("1"), D("1"), D("0")),
        PriceVersion(job + timedelta(minutes=7, seconds=30), D("7200"), D("0"), D("1"),
                     D("1"), D("0"))), tenant="acme", start=T0, end=now)
    cpu = [x for x in inv.lines if x.resource == "cpu"]
    # the price change at 5:09:30 lies inside the interval 5:08-5:10: 3/4 of it before
    assert [x.quantity for x in cpu] == [D("0.09375"), D("0.10625")]
    assert sum(x.quantity for x in inv.lines if x.resource == "io_read") == D(1)


@pytest.fixture()
def usage_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("governor.policy.load_policy", lambda paths: _policy())
    monkeypatch.delenv("GOVERNOR_CONFIG", raising=False)


def test_usage_from_today_right_after_a_job_shows_exactly_its_cpu_and_io(
        engine, db_url, session, usage_policy) -> None:  # noqa: F811
    """The issue's regression: `governor usage --from <today>` right after a job finished
    showed 70-75% of its CPU and IO (the current hour prorated by wall-clock time)."""
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if now - midnight < timedelta(seconds=5):
        time.sleep(5)
        now = datetime.now(UTC)
    # the job ran in the current hour and has just finished (its last sample a moment ago)
    first = max(hour_floor(now), now - timedelta(minutes=40))
    step = (now - timedelta(milliseconds=200) - first) / 8
    ticks = [make_sample(group="job", wall=first + i * step, cpu=i * 1_234_567_891,
                         rbytes=i * 987_654_321, wbytes=i * 123_456_789)
             for i in range(9)]
    record_samples(session=session, node="n1", samples=ticks)
    meter(session=session, node="n1")
    session.commit()
    res = CliRunner().invoke(usage_command, ["--database", db_url, "--tenant", "acme",
                                             "--from", midnight.date().isoformat(),
                                             "--by", "group", "--format", "json"])
    assert res.exit_code == 0, res.output
    [row] = json.loads(res.output)["rows"]
    q = D("1e-9")
    assert D(row["cpu_core_hours"]) == (D(8 * 1_234_567_891) / D(HOUR_US)).quantize(q)
    assert D(row["io_read_gib"]) == (D(8 * 987_654_321) / D(GIB)).quantize(q)
    assert D(row["io_write_gib"]) == (D(8 * 123_456_789) / D(GIB)).quantize(q)


def _daemon_passes(db, *, start: datetime, passes: int, groups: int = 3,
                   write_every: int = 6) -> None:
    """The daemon's metering (governor/daemon.py): a pass every 10 s metered in memory,
    its intervals merged by Pending and written every ``write_every`` passes."""
    rnd = random.Random(passes)
    m, inc, pending = Meter(), Incarnations(), Pending[int]()
    cpu = [0] * groups
    io = [0] * groups
    for p in range(passes):
        wall = start + p * timedelta(seconds=10)
        batch = []
        for i in range(groups):
            cpu[i] += rnd.randrange(0, 20_000_000)
            io[i] += rnd.randrange(0, 1 << 24)
            batch.append(dataclasses.replace(
                make_sample(group=f"g{i}", cgroup_id=100 + i, wall=wall, cpu=cpu[i],
                            mem=rnd.randrange(0, GIB), rbytes=io[i], wbytes=2 * io[i]),
                values={"hugetlb.2MB.current": rnd.randrange(0, 64) << 21,
                        "hugetlb.2MB.events_max": 0}))
        node_id, ids = store_samples(session=db, node="n1", samples=batch, incarnations=inc)
        unknown = m.unknown(batch)
        resolved = (load_anchors(session=db, node="n1", node_id=node_id, samples=unknown,
                                 ids=ids) if unknown else None)
        step = m.step(batch, resolved, with_rollups=False)
        pending.add(step, ids)
        if pending.passes >= write_every:
            write_metered(session=db, node_id=node_id, metered=pending.metered())
            pending.clear()
        db.commit()
        m.advance(step)


def test_the_daemons_merged_intervals_up_to_now_and_cut_inside(session) -> None:  # noqa: F811
    # 23 minutes of passes from 5:50 (a write every minute; the last 2 passes not written
    # yet): a report up to now holds every interval written, to the unit
    start = T0 + timedelta(hours=5, minutes=50)
    _daemon_passes(session, start=start, passes=140)
    now = start + timedelta(seconds=1395)
    whole = _range(session, T0, now)
    assert whole == _stored(session)
    u = usage_intervals.c
    assert session.execute(select(func.max(u.end_ts))).scalar_one() < now
    stored_v = session.execute(select(func.sum(usage_values.c.value))).scalar_one()
    assert _hugetlb(session, T0, now) == stored_v > 0
    # cuts inside the merged (minute-long) intervals, two in one hour, one across 6:00
    cuts = [start + timedelta(seconds=95, microseconds=7), T0 + 6 * HOUR,
            start + timedelta(seconds=777), start + timedelta(seconds=1001, microseconds=1)]
    bounds = [T0, *cuts, now]
    for hour in (T0 + 5 * HOUR, T0 + 6 * HOUR):
        got = edge_hour(session=session, hour=hour, cuts=[*cuts, now], where=_TENANT)
        assert len(got) == 3 and all(e.from_intervals for e in got.values()), hour
    parts = [_range(session, a, b) for a, b in itertools.pairwise(bounds)]
    assert [sum(c) for c in zip(*parts, strict=True)] == whole
    assert sum(_hugetlb(session, a, b) for a, b in itertools.pairwise(bounds)) == stored_v
