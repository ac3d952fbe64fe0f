"""Reading hourly rollups over an arbitrary period, with exact integer shares.

Bills and usage reports read **only** ``rollups_hourly`` (plus the applied policies for
reservations), never raw samples, so retention of raw data cannot change a past bill.

A period boundary inside an hour takes that hour's share by time: the piece ``[p, q)`` of the
hour starting at ``h`` gets ``floor(T*(q-h)/H) - floor(T*(p-h)/H)`` of a quantity ``T``
(``H`` = one hour in microseconds).  The pieces of an hour cut at any set of points therefore
add up to exactly ``T``: adjacent periods neither lose nor double a unit.  Within an hour the
group's usage is taken to be spread evenly (the rollup does not keep finer detail).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from governor.store.models import Group, HourlyRollup, Tenant

HOUR = timedelta(hours=1)
#: a grouping key of sum_range: a mapped attribute or a column expression
KeyColumn = ColumnElement[Any] | InstrumentedAttribute[Any]
HOUR_US = 3_600_000_000

#: the integer quantities summed by reports and bills, in rollup units
FIELDS = ("covered_us", "cpu_usec", "memory_byte_seconds", "io_rbytes", "io_wbytes",
          "oom_kills")


@dataclasses.dataclass(slots=True)
class Totals:
    covered_us: int = 0
    cpu_usec: int = 0
    memory_byte_seconds: int = 0
    io_rbytes: int = 0
    io_wbytes: int = 0
    oom_kills: int = 0

    def add(self, other: Totals) -> None:
        for f in FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))


def hour_floor(dt: datetime) -> datetime:
    return dt.replace(minute=0, second=0, microsecond=0)


def hour_ceil(dt: datetime) -> datetime:
    f = hour_floor(dt)
    return f if f == dt else f + HOUR


def _us(d: timedelta) -> int:
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def share(total: int, hour: datetime, p: datetime, q: datetime) -> int:
    """The exact integer share of ``total`` (one hour's rollup) for ``[p, q)`` in that hour."""
    a = _us(max(p, hour) - hour)
    b = _us(min(q, hour + HOUR) - hour)
    return total * b // HOUR_US - total * a // HOUR_US


def _sums() -> list[ColumnElement[Any]]:
    return [func.coalesce(func.sum(getattr(HourlyRollup, f)), 0).label(f) for f in FIELDS]


def sum_range(
    *,
    session: Session,
    start: datetime,
    end: datetime,
    keys: Sequence[KeyColumn],
    where: Sequence[ColumnElement[bool]] = (),
) -> dict[tuple[Any, ...], Totals]:
    """Totals of the rollups over ``[start, end)`` grouped by ``keys`` (columns of
    ``rollups_hourly``, ``groups`` and ``tenants``)."""
    out: dict[tuple[Any, ...], Totals] = {}
    base = (select(*keys, *_sums())
            .select_from(HourlyRollup)
            .join(Group, Group.id == HourlyRollup.group_id)
            .join(Tenant, Tenant.id == Group.tenant_id)
            .where(*where))
    full_from, full_to = hour_ceil(start), hour_floor(end)
    if full_from < full_to:
        q = base.where(HourlyRollup.hour >= full_from, HourlyRollup.hour < full_to)
        for row in session.execute(q.group_by(*keys)):
            t = out.setdefault(tuple(row[: len(keys)]), Totals())
            t.add(Totals(*(int(v) for v in row[len(keys):])))
    partial = {hour_floor(start)} if hour_floor(start) != start else set()
    if hour_floor(end) != end:
        partial.add(hour_floor(end))
    for hour in sorted(partial):
        if hour + HOUR <= start or hour >= end:
            continue
        q = base.where(HourlyRollup.hour == hour)
        for row in session.execute(q.group_by(*keys)):
            values = [share(int(v), hour, start, end) for v in row[len(keys):]]
            t = out.setdefault(tuple(row[: len(keys)]), Totals())
            t.add(Totals(*values))
    return out


def hourly_rows(
    *,
    session: Session,
    start: datetime,
    end: datetime,
    where: Sequence[ColumnElement[bool]] = (),
) -> list[tuple[int, str, datetime, int, int]]:
    """``(node_id, path, hour, covered_us, memory_byte_seconds)`` per node, path and hour
    over ``[start, end)`` (partial hours by exact share) -- for per-hour memory maxima."""
    q = (select(HourlyRollup.node_id, Group.path, HourlyRollup.hour,
                func.sum(HourlyRollup.covered_us), func.sum(HourlyRollup.memory_byte_seconds))
         .join(Group, Group.id == HourlyRollup.group_id)
         .join(Tenant, Tenant.id == Group.tenant_id)
         .where(*where, HourlyRollup.hour >= hour_floor(start), HourlyRollup.hour < end)
         .group_by(HourlyRollup.node_id, Group.path, HourlyRollup.hour))
    out: list[tuple[int, str, datetime, int, int]] = []
    for node_id, path, hour, covered_sum, mem_sum in session.execute(q):
        covered, mem = int(covered_sum), int(mem_sum)
        if hour < start or hour + HOUR > end:
            covered, mem = share(covered, hour, start, end), share(mem, hour, start, end)
        out.append((node_id, path, hour, covered, mem))
    return out
