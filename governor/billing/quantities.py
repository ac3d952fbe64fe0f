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

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Float,
    Integer,
    MetaData,
    Table,
    and_,
    case,
    cast,
    func,
    select,
    text,
)
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


@dataclasses.dataclass(slots=True)
class PieceTotals(Totals):
    """:class:`Totals` plus the split of the memory integral needed by the "max" basis:
    ``mem_usage_wins`` byte-seconds from hours where usage was at least the reservation,
    and ``covered_reserved_us`` microseconds of hours where the reservation was larger."""

    mem_usage_wins: int = 0
    covered_reserved_us: int = 0


#: (node_id, group_id, piece index) -> reserved bytes for the "max" basis
ReservationTable = dict[tuple[int, int, int], int]


def sum_pieces(
    *,
    session: Session,
    pieces: Sequence[tuple[datetime, datetime]],
    group_ids: ColumnElement[bool],
    reserved: ReservationTable | None = None,
) -> dict[tuple[int, int, int], PieceTotals]:
    """Totals per ``(node_id, group_id, piece index)`` over consecutive ``pieces`` in one scan.

    Whole hours inside a piece are summed in SQL (one query for every piece, the piece given
    by a CASE on the hour); hours cut by a piece boundary are read per row and shared out
    exactly (:func:`share`).  With ``reserved``, each hour also compares usage with the
    reservation (in floating point: at an exact tie either side gives the same amount to
    within 1e-15) and keeps the winners apart, so the caller can bill
    ``max(usage, reservation)`` per hour with exact integers.
    """
    out: dict[tuple[int, int, int], PieceTotals] = {}
    if not pieces:
        return out
    start, end = pieces[0][0], pieces[-1][1]
    cuts = {start, end, *(b for _, b in pieces)}
    partial = sorted({hour_floor(c) for c in cuts if hour_floor(c) != c})
    h = HourlyRollup
    if session.get_bind().dialect.name == "postgresql":
        # aggregating a month of 1,000 groups sorts ~400k rows per piece: let it happen in
        # memory rather than in an external merge (default work_mem is 4 MB); this
        # transaction only
        session.execute(text("SET LOCAL work_mem = '64MB'"))
    sums = _sums()
    extra: list[ColumnElement[Any]] = []
    res_table = None
    if reserved:
        res_table = Table("governor_bill_reserved", MetaData(),
                          Column("group_id", BigInteger, primary_key=True),
                          Column("piece", Integer, primary_key=True),
                          Column("node_id", Integer, primary_key=True),
                          Column("reserved", BigInteger),
                          prefixes=["TEMPORARY"])
        conn = session.connection()
        res_table.drop(conn, checkfirst=True)
        res_table.create(conn)
        conn.execute(res_table.insert(), [
            {"node_id": n, "group_id": g, "piece": i, "reserved": r}
            for (n, g, i), r in reserved.items()])
        res_wins = and_(res_table.c.reserved.is_not(None),
                        cast(h.memory_byte_seconds, Float) * 1e6
                        < cast(res_table.c.reserved, Float) * h.covered_us)
        extra = [
            func.coalesce(func.sum(case((res_wins, 0), else_=h.memory_byte_seconds)), 0),
            func.coalesce(func.sum(case((res_wins, h.covered_us), else_=0)), 0),
        ]
    try:
        # one query per piece over its whole hours, grouped in the clustered key's order
        # (group, node) so that the database can aggregate while it reads
        for i, (a, b) in enumerate(pieces):
            lo, hi = hour_ceil(a), hour_floor(b)
            if lo >= hi:
                continue
            q = (select(h.group_id, h.node_id, *sums, *extra)
                 .where(group_ids, h.hour >= lo, h.hour < hi)
                 .group_by(h.group_id, h.node_id))
            if res_table is not None:
                q = q.outerjoin(res_table, and_(res_table.c.group_id == h.group_id,
                                                res_table.c.piece == i,
                                                res_table.c.node_id == h.node_id))
            for row in session.execute(q):
                values = [int(v) for v in row[2:]]
                t = PieceTotals(*values[: len(FIELDS)])
                if extra:
                    t.mem_usage_wins, t.covered_reserved_us = values[len(FIELDS):]
                else:
                    t.mem_usage_wins = t.memory_byte_seconds
                out[(row[1], row[0], i)] = t
    finally:
        if res_table is not None:
            res_table.drop(session.connection(), checkfirst=True)
    if partial:
        q2 = select(h.node_id, h.group_id, h.hour, *(getattr(h, f) for f in FIELDS)).where(
            group_ids, h.hour.in_(partial))
        for row in session.execute(q2):
            node_id, group_id, hour = row[0], row[1], row[2]
            for i, (a, b) in enumerate(pieces):
                if b <= hour or a >= hour + HOUR:
                    continue
                part = PieceTotals(*(share(int(v), hour, a, b) for v in row[3:]))
                r = reserved.get((node_id, group_id, i)) if reserved else None
                if r is not None and part.memory_byte_seconds * 1_000_000 < r * part.covered_us:
                    part.covered_reserved_us = part.covered_us
                else:
                    part.mem_usage_wins = part.memory_byte_seconds
                key = (node_id, group_id, i)
                acc = out.get(key)
                if acc is None:
                    out[key] = part
                else:
                    acc.add(part)
                    acc.mem_usage_wins += part.mem_usage_wins
                    acc.covered_reserved_us += part.covered_reserved_us
    return out
