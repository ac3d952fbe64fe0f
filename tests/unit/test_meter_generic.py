"""The generic controllers' quantities (governor/metering/generic.py): hugetlb_byte_seconds
metered from the samples' values as the memory integral is (the trapezoid, both ends
read), split exactly on hours, held by Pending, written to usage_values and rollup_values;
the daemon's in-memory meter and the store's catch-up (which reads sample_values) agree."""

from __future__ import annotations

import dataclasses
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

import tests.unit.test_meter_memory as harness
from governor.controllers.base import Quantity
from governor.metering import generic
from governor.metering.catchup import meter
from governor.metering.generic import meter_values, quantity_between
from governor.metering.meter import Meter, Pending, inc_key, pair_series
from governor.metering.sample import GroupSample
from governor.metering.usage import _trapezoid
from governor.store.db import scope_factory
from governor.store.metered import write_metered
from governor.store.service import Incarnations, record_samples, store_samples
from governor.store.tables import groups, nodes, rollup_values, usage_values
from tests.helpers.db import db_url, engine, make_sample  # noqa: F401

T0 = datetime(2026, 12, 5, 9, 59, 50, tzinfo=UTC)
MB2 = 2 << 20
(HUGETLB_Q,) = generic.QUANTITIES
INC = Quantity("x_events", "x", "event", "x_event", 1, "", method="increase",
               values=re.compile(r"x\.[^.]+\.events"))


def s(i: int, values: dict[str, int] | None, *, cid: int = 100, dt: int = 10,
      created: datetime | None = None) -> GroupSample:
    wall = T0 + timedelta(seconds=dt * i)
    return dataclasses.replace(make_sample(wall=wall, cgroup_id=cid, created=created),
                               values=values)


def hv(a: int, b: int = 0) -> dict[str, int]:
    return {"hugetlb.2MB.current": a, "hugetlb.1GB.current": b,
            "hugetlb.2MB.events_max": 9}


def test_the_registered_quantity_is_metered_here() -> None:
    assert HUGETLB_Q.name == "hugetlb_byte_seconds" and HUGETLB_Q.method == "integral"


@pytest.mark.parametrize(("prev", "cur", "dt_us", "want"), [
    (hv(MB2), hv(MB2), 10_000_000, MB2 * 10),
    (hv(0), hv(2 * MB2, 1 << 30), 10_000_000, _trapezoid(0, 2 * MB2 + (1 << 30), 10**7)),
    (hv(3), hv(4), 1, 0),               # 3.5e-6 byte-seconds: rounds to 0 (half-even)
    (None, hv(MB2), 4_000_000, MB2 * 2),  # from a known creation: from 0
    ({"hugetlb.2MB.current": MB2}, hv(MB2), 10**7, None),  # a size appeared: not known
    (hv(MB2), {"hugetlb.2MB.events_max": 1}, 10**7, None),  # no usage read
    ({}, hv(MB2), 10**7, None),
])
def test_integral(prev: dict[str, int] | None, cur: dict[str, int], dt_us: int,
                  want: int | None) -> None:
    assert quantity_between(HUGETLB_Q, prev, cur, dt_us) == want


def test_increase_with_resets() -> None:
    a = {"x.a.events": 5, "x.b.events": 1}
    assert quantity_between(INC, a, {"x.a.events": 7, "x.b.events": 4}, 1) == 5
    assert quantity_between(INC, a, {"x.a.events": 4, "x.b.events": 9}, 1) is None
    assert quantity_between(INC, None, a, 1) == 6


def test_pairs_as_the_meter_pairs_and_splits_hours_exactly() -> None:
    series = {"k": [s(0, hv(MB2)), s(1, hv(2 * MB2)), s(2, None), s(3, hv(MB2)),
                    s(4, hv(MB2))]}
    m = pair_series(series, {"k": None})
    assert m.values is not None
    # the first sample: unknown birth (nothing); the one without values and the one
    # after it: not known at both ends
    got = [(a, b, q) for _, a, b, q in m.values.usages]
    assert got == [
        (T0, T0 + timedelta(seconds=10), {"hugetlb_byte_seconds": 15 * MB2}),
        (T0 + timedelta(seconds=30), T0 + timedelta(seconds=40),
         {"hugetlb_byte_seconds": 10 * MB2})]
    # the first interval crosses 10:00 (9:59:50 to 10:00:00 is inside 9:00; the second
    # is in 10:00): the hours' sums are the intervals' to the unit
    hours = {h: q["hugetlb_byte_seconds"] for (_, h), q in m.values.rollups.items()}
    assert sum(hours.values()) == 25 * MB2
    # 9:59:50 to 10:01:00 crosses the hour: split by time share, 10 s and 60 s of 70
    cross = pair_series({"k": [s(1, hv(MB2 * 3), dt=70)]}, {"k": s(0, hv(MB2), dt=70)})
    assert cross.values is not None
    parts = sorted((h, q["hugetlb_byte_seconds"]) for (_, h), q in cross.values.rollups.items())
    assert [(h.hour, v) for h, v in parts] == [(9, 20 * MB2), (10, 120 * MB2)]


def test_from_a_known_creation_and_nothing_without_values() -> None:
    born = T0 - timedelta(seconds=4)
    m = pair_series({"k": [s(0, hv(MB2), created=born)]}, {"k": None})
    assert m.values is not None and m.values.usages[0][3] == {
        "hugetlb_byte_seconds": 2 * MB2}
    assert meter_values({"k": [s(0, None), s(1, None)]}, {"k": None}) is None


def test_pending_holds_the_same_sums_as_the_steps() -> None:
    rnd = random.Random(3)
    m, pending = Meter(), Pending[Any]()
    steps_rollups: dict[Any, int] = {}
    prev: GroupSample | None = None
    for i in range(200):
        cur = s(i, None if rnd.random() < 0.1 else hv(rnd.randrange(0, 64) * MB2), dt=37)
        resolved = {inc_key(cur): harness.Anchor(prev, None)} if i == 0 else None
        step = m.step([cur], resolved, with_rollups=True)
        if step.values:
            for (_k, h), q in step.values.rollups.items():
                steps_rollups[h] = steps_rollups.get(h, 0) + q["hugetlb_byte_seconds"]
        pending.add(dataclasses.replace(step, rollups={}), {inc_key(cur): 7})
        m.advance(step)
        prev = cur
    held = pending.metered().values
    assert held is not None
    assert {h: q["hugetlb_byte_seconds"] for (_, h), q in held.rollups.items()} == \
        steps_rollups
    assert len(held.usages) < 100  # merged within each hour


def _with_values(node: str, batch: list[dict[str, Any]]) -> list[GroupSample]:
    """The memory harness's samples, with hugetlb usage following memory (absent now and
    then, as a group where hugetlb is not enabled)."""
    out = []
    for b in batch:
        smp = make_sample(node=node, **b)
        mem = b["mem"]
        values = None if mem % 7 == 0 else {"hugetlb.2MB.current": mem // MB2 * MB2}
        out.append(dataclasses.replace(smp, values=values))
    return out


def _stored(eng: Engine, node: str) -> tuple[list[Any], list[Any]]:
    with eng.connect() as c:
        nid = c.execute(select(nodes.c.id).where(nodes.c.name == node)).scalar_one()
        usage = c.execute(select(groups.c.path, groups.c.cgroup_id, usage_values.c.end_ts,
                                 usage_values.c.quantity, usage_values.c.value)
                          .join(groups, groups.c.id == usage_values.c.group_id)
                          .where(usage_values.c.node_id == nid)).all()
        roll = c.execute(select(groups.c.path, groups.c.cgroup_id, rollup_values.c.hour,
                                rollup_values.c.quantity, rollup_values.c.value)
                         .join(groups, groups.c.id == rollup_values.c.group_id)
                         .where(rollup_values.c.node_id == nid)).all()
    return sorted(map(tuple, usage)), sorted(map(tuple, roll))


@pytest.mark.parametrize("seed", range(6))
def test_in_memory_and_catch_up_write_the_same_values(
        engine: Engine, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(harness, "samples", _with_values)
    events = harness.history(seed)
    scope = scope_factory(engine)
    harness.replay_db(scope, events)
    harness.replay_mem(scope, events, keep_passes=3 if seed % 2 else 360)
    usage_db, roll_db = _stored(engine, "db")
    usage_mem, roll_mem = _stored(engine, "mem")
    assert usage_db and roll_db
    assert usage_mem == usage_db
    # the rollups are the sums of the intervals, per hour, to the unit
    assert roll_mem == roll_db
    assert sum(r[-1] for r in roll_db) == sum(r[-1] for r in usage_db)


def test_after_a_restart_the_catch_up_pairs_with_the_stored_values(
        engine: Engine) -> None:  # noqa: F811
    scope = scope_factory(engine)
    inc = Incarnations()
    m = Meter()
    first = [s(0, hv(MB2))]
    with scope() as session:
        node_id, ids = store_samples(session=session, node="n1", samples=first,
                                     incarnations=inc)
        meter(session=session, node="n1")  # the anchor: sample 0
    # a restart: the next samples are stored, then the catch-up meters from the store
    with scope() as session:
        record_samples(session=session, node="n1", samples=[s(1, hv(3 * MB2)),
                                                            s(2, hv(3 * MB2))])
        meter(session=session, node="n1")
    with engine.connect() as c:
        total = c.execute(select(func.sum(rollup_values.c.value))).scalar_one()
    assert total == 20 * MB2 + 30 * MB2
    # and the in-memory meter resolving its anchor from the store agrees
    from governor.metering.catchup import load_anchors

    cur = s(3, hv(MB2))
    with scope() as session:
        node_id, ids = store_samples(session=session, node="n1", samples=[cur],
                                     incarnations=inc)
        resolved = load_anchors(session=session, node="n1", node_id=node_id,
                                samples=[cur], ids=ids)
        step = m.step([cur], resolved)
        write_metered(session=session, node_id=node_id, metered=step, ids=ids)
    with engine.connect() as c:
        total = c.execute(select(func.sum(rollup_values.c.value))).scalar_one()
    assert total == 50 * MB2 + 20 * MB2
