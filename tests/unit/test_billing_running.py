"""Issue #16: the daemon's billed-cost gauge keeps the month's settled hours summed in
memory (governor.billing.running) and reads only the recent ones; it must equal
``governor bill --node`` for the month so far at every update (SQLite and PostgreSQL), for
every memory basis, across a price change and reservation cuts, and read each settled hour
once, except when told the settled hours changed, after ``full_every``, for a new policy
and in a new month."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from governor.billing.report import invoice
from governor.billing.running import RunningBills
from governor.errors import GovernorError
from governor.policy.model import PricePlan, PriceVersion
from governor.store.service import record_applied_policy
from governor.store.tables import rollups_hourly
from tests.helpers.db import db_url, engine, session  # noqa: F401
from tests.unit.test_billing_nodes import CHANGE, NODES, T0, _fleet, _policy

D = Decimal
HOUR = timedelta(hours=1)
#: update times: inside the first hours, on and around hour boundaries, across the price
#: change and the reservation cuts, after the data ends, late in the month
NOWS = [T0 + timedelta(minutes=40), T0 + timedelta(hours=1, minutes=5),
        T0 + timedelta(hours=2, minutes=59, seconds=59), T0 + timedelta(days=2, minutes=31),
        T0 + timedelta(days=3, hours=7, seconds=1), CHANGE + timedelta(minutes=30),
        CHANGE + HOUR, CHANGE + timedelta(hours=2, minutes=1),
        CHANGE + timedelta(hours=2, minutes=6), T0 + timedelta(days=8, hours=23, minutes=59),
        T0 + timedelta(days=9, hours=5), T0 + timedelta(days=20, minutes=17)]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _reference(s: Session, pol: object, node: str, now: datetime) -> dict[tuple[str, str], D]:
    """What the gauge showed before: each tenant's ``invoice(..., node=node)`` for the
    month so far, read whole."""
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    out = {}
    for t in ("acme", "beta"):
        try:
            inv = invoice(session=s, policy=pol, tenant=t, start=month,  # type: ignore[arg-type]
                          end=now, node=node)
        except GovernorError:
            continue
        out[(t, inv.currency)] = inv.total
    return out


def _reservations(s: Session) -> None:
    """memory.min written mid-hour on two nodes, one of them back to max: cuts."""
    for node, at, value in (("node-a", T0 + timedelta(days=2, minutes=30), str(1 << 30)),
                            ("node-b", CHANGE + timedelta(minutes=10), str(3 << 29)),
                            ("node-a", T0 + timedelta(days=5, hours=2, minutes=7), "max")):
        record_applied_policy(session=s, node=node, applied_at=at, policy_hash="h",
                              trigger="test", writes=[{"path": "acme/web", "file": "memory.min",
                                                       "value": value}])
    s.commit()


@pytest.mark.parametrize("basis", ["usage", "reservation", "max"])
def test_the_gauge_equals_the_node_bill_at_every_update(session: Session,  # noqa: F811
                                                        basis: str) -> None:
    _fleet(session)
    _reservations(session)
    pol = _policy(basis)
    clock = Clock()
    running = {n: RunningBills(monotonic=clock) for n in NODES}
    for now in NOWS:
        for n in NODES:
            got = running[n].bills(session=session, policy=pol, digest="x", node=n, now=now)
            want = _reference(session, pol, n, now)
            assert got == want, (n, now)
        clock.t += 300
    settled = (NOWS[-1] - HOUR).replace(minute=0, second=0) - T0
    for n in NODES:
        # one full read; each settled hour read once per tenant since
        assert running[n].full_reads == 1
        assert running[n].hours_read == 2 * int(settled / HOUR)
    # the totals are not trivially zero, and the nodes add up to the fleet
    fleet = invoice(session=session, policy=pol, tenant="acme", start=T0, end=NOWS[-1])
    last = [running[n].bills(session=session, policy=pol, digest="x", node=n,
                             now=NOWS[-1])[("acme", "EUR")] for n in NODES]
    assert sum(last, D(0)) == fleet.total > 0


def test_settled_hours_read_again_when_told_after_full_every_and_for_a_new_policy(
        session: Session) -> None:  # noqa: F811
    _fleet(session)
    pol = _policy()
    clock = Clock()
    node = "node-a"
    bills = RunningBills(monotonic=clock, full_every=3600)
    now = T0 + timedelta(days=5, minutes=3)
    before = bills.bills(session=session, policy=pol, digest="x", node=node, now=now)
    assert before == _reference(session, pol, node, now)

    def late_rows() -> None:
        """More CPU in an hour settled long ago (a spool drained late)."""
        session.execute(update(rollups_hourly).where(
            rollups_hourly.c.hour == T0 + timedelta(days=1)).values(
                cpu_usec=rollups_hourly.c.cpu_usec + 3_600_000_000))
        session.commit()

    late_rows()
    now += timedelta(minutes=5)
    fresh = _reference(session, pol, node, now)
    # the settled sum is kept: the late rows do not show until it is read again
    kept = bills.bills(session=session, policy=pol, digest="x", node=node, now=now)
    assert kept != fresh and kept == before
    bills.invalidate()
    assert bills.bills(session=session, policy=pol, digest="x", node=node, now=now) == fresh
    assert bills.full_reads == 2

    late_rows()
    now += timedelta(minutes=5)
    clock.t += 3600   # full_every later: read whole again
    assert bills.bills(session=session, policy=pol, digest="x", node=node,
                       now=now) == _reference(session, pol, node, now)
    assert bills.full_reads == 3

    # a new policy (new prices): read whole, priced by it
    [v1, v2] = pol.plans["std"].versions
    dearer = PriceVersion(v2.effective, v2.cpu_core_hour * 2, v2.memory_gib_hour,
                          v2.io_read_gib, v2.io_write_gib, v2.oom_kill,
                          storage_gib_hour=v2.storage_gib_hour)
    pol2 = _policy()
    pol2.plans["std"] = PricePlan("std", "EUR", (v1, dearer), "usage")  # type: ignore[index]
    got = bills.bills(session=session, policy=pol2, digest="y", node=node, now=now)
    assert got == _reference(session, pol2, node, now) != _reference(session, pol, node, now)
    assert bills.full_reads == 4

    # a new month: its own bill (no rows yet: zero), the old month's sums dropped
    nov = datetime(2026, 11, 1, 0, 5, tzinfo=T0.tzinfo)
    assert bills.bills(session=session, policy=pol2, digest="y", node=node,
                       now=nov) == _reference(session, pol2, node, nov)
    assert bills.full_reads == 5
    # the first second of a month bills nothing; an unknown node: no series
    assert bills.bills(session=session, policy=pol2, digest="y", node=node,
                       now=datetime(2026, 11, 1, tzinfo=T0.tzinfo)) == {}
    assert bills.bills(session=session, policy=pol2, digest="y", node="node-unknown",
                       now=nov) == {}
