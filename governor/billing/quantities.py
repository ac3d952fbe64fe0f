"""Reading usage over an arbitrary period, with exact integer shares.

Bills and usage reports read the **whole hours** of a period from ``rollups_hourly`` (plus
the applied policies for reservations), never raw samples.

An hour that a period boundary (or a price or reservation change) cuts -- an **edge hour**
-- is read from the stored intervals (``usage_intervals``) that lie in it, per node and
group (:func:`edge_hour`): an interval inside a piece counts whole, and one that a cut
point crosses is split by its exact time share, as the meter split it on hour boundaries
(:func:`governor.metering.rollup.split_interval`): the part of an interval ``[s, e)`` with
total ``T`` before ``t`` is ``floor(T*(t-s)/(e-s))``, so the piece ``[p, q)`` gets
``cum(q) - cum(p)``.  The pieces of an interval, and so of an hour, cut at any set of points
add up to exactly its total: adjacent periods neither lose nor double a unit, and a report
up to now holds every interval stored so far, exactly (issue #18: the current hour is not
prorated by wall time).

The intervals are used only where they account for the hour's rollup exactly (their parts
in the hour sum to the rollup's covered time and every billed quantity); where retention
pruned them (``usage_intervals`` is kept ``retention_raw``, 14 days by default; the rollups
for ever), or they do not match, the hour falls back to its rollup's time share: the piece
``[p, q)`` of the hour starting at ``h`` gets ``floor(T*(q-h)/H) - floor(T*(p-h)/H)``
(``H`` = one hour in microseconds, :func:`share`), the usage taken to be spread evenly in
the hour.  The choice is made per node, group and hour from the stored rows alone, never
from the period, so every period sees the same split of an hour.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Float,
    Integer,
    MetaData,
    Select,
    Table,
    and_,
    case,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.exc import OperationalError

from governor.billing.edges import edge_hour, hour_points, split_parts
from governor.billing.totals import (
    FIELDS,
    HOUR,
    HOUR_US,
    KeyColumn,
    Totals,
    _totals,
    hour_ceil,
    hour_floor,
    share,
)
from governor.store.db import connection_of
from governor.store.tables import groups as _GROUPS
from governor.store.tables import rollups_hourly as _ROLLUPS
from governor.store.tables import tenants as _TENANTS

__all__ = ["FIELDS", "HOUR", "HOUR_US", "KeyColumn", "PieceTotals", "Totals", "edge_hour",
           "hour_ceil", "hour_floor", "hour_points", "share", "split_parts", "sum_pieces",
           "sum_range"]

if TYPE_CHECKING:
    from governor.store.db import Executor


#: SQLite's SUM() of integers stops with "integer overflow" past 2**63 - 1 (a year of a
#: big group's rollups can get there, issue #15).  A query that overflows is run again with
#: each sum taken in two halves, the high bits (``x >> 32``) and the low 32 bits
#: (``x & 0xFFFFFFFF``), whose sums stay below 2**63 for 2**31 rows, put together exactly
#: in Python (:func:`exact`).  Only then: the halves cost about half as much again (bench/
#: bill.py).  PostgreSQL's SUM(bigint) is a NUMERIC: exact as it is, never split.
_LOW_BITS = 32
_LOW_MASK = (1 << _LOW_BITS) - 1


def exact_sum(expr: ColumnElement[Any], split: bool
              ) -> list[ColumnElement[Any]]:
    """The columns that sum ``expr``: one, or two (high and low bits) when ``split``;
    :func:`exact` turns a row's values back into ints."""
    if not split:
        return [func.coalesce(func.sum(expr), 0)]
    return [func.coalesce(func.sum(expr.op(">>")(_LOW_BITS)), 0),
            func.coalesce(func.sum(expr.op("&")(_LOW_MASK)), 0)]


def exact(values: Sequence[Any], split: bool) -> list[int]:
    """The integer sums of a row's :func:`exact_sum` columns (in order)."""
    if not split:
        return [int(v) for v in values]
    return [(int(hi) << _LOW_BITS) + int(lo) for hi, lo in zip(values[::2], values[1::2],
                                                               strict=True)]


def _sums(split: bool) -> list[ColumnElement[Any]]:
    return [c for f in FIELDS for c in exact_sum(_ROLLUPS.c[f], split)]


def _overflowed(exc: OperationalError) -> bool:
    return "integer overflow" in str(exc.orig)


def sum_range(
    *,
    session: Executor,
    start: datetime,
    end: datetime,
    keys: Sequence[KeyColumn],
    where: Sequence[ColumnElement[bool]] = (),
) -> dict[tuple[Any, ...], Totals]:
    """Totals of the rollups over ``[start, end)`` grouped by ``keys`` (columns of
    ``rollups_hourly``, ``groups`` and ``tenants``); exact past 2**63 (see ``exact_sum``)."""
    try:
        return _sum_range(session=session, start=start, end=end, keys=keys, where=where,
                          split=False)
    except OperationalError as exc:
        if not _overflowed(exc):
            raise
        return _sum_range(session=session, start=start, end=end, keys=keys, where=where,
                          split=True)


def _sum_range(
    *,
    split: bool,
    session: Executor,
    start: datetime,
    end: datetime,
    keys: Sequence[KeyColumn],
    where: Sequence[ColumnElement[bool]] = (),
) -> dict[tuple[Any, ...], Totals]:
    """Totals of the rollups over ``[start, end)`` grouped by ``keys`` (columns of
    ``rollups_hourly``, ``groups`` and ``tenants``)."""
    out: dict[tuple[Any, ...], Totals] = {}
    base = (select(*keys, *_sums(split))
            .select_from(_ROLLUPS)
            .join(_GROUPS, _GROUPS.c.id == _ROLLUPS.c.group_id)
            .join(_TENANTS, _TENANTS.c.id == _GROUPS.c.tenant_id)
            .where(*where))
    full_from, full_to = hour_ceil(start), hour_floor(end)
    if full_from < full_to:
        q = base.where(_ROLLUPS.c.hour >= full_from, _ROLLUPS.c.hour < full_to)
        for row in session.execute(q.group_by(*keys)):
            t = out.setdefault(tuple(row[: len(keys)]), Totals())
            t.add(_totals(Totals, exact(row[len(keys):], split)))
    partial = {hour_floor(start)} if hour_floor(start) != start else set()
    if hour_floor(end) != end:
        partial.add(hour_floor(end))
    for hour in sorted(partial):
        if hour + HOUR <= start or hour >= end:
            continue
        points = hour_points(hour, (start, end))
        inside = [i for i, (a, b) in enumerate(itertools.pairwise(points))
                  if start <= a and b <= end]
        for eh in edge_hour(session=session, hour=hour, cuts=(start, end), where=where,
                            keys=keys).values():
            values = [sum(eh.segments[i][j] for i in inside) for j in range(len(FIELDS))]
            out.setdefault(eh.keys, Totals()).add(_totals(Totals, values))
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
    session: Executor,
    pieces: Sequence[tuple[datetime, datetime]],
    group_ids: Select[tuple[int]],
    reserved: ReservationTable | None = None,
) -> dict[tuple[int, int, int], PieceTotals]:
    """:func:`_sum_pieces`, exact past 2**63 (see ``exact_sum``)."""
    try:
        return _sum_pieces(session=session, pieces=pieces, group_ids=group_ids,
                           reserved=reserved, split=False)
    except OperationalError as exc:
        if not _overflowed(exc):
            raise
        return _sum_pieces(session=session, pieces=pieces, group_ids=group_ids,
                           reserved=reserved, split=True)


def _sum_pieces(
    *,
    split: bool,
    session: Executor,
    pieces: Sequence[tuple[datetime, datetime]],
    group_ids: Select[tuple[int]],
    reserved: ReservationTable | None = None,
) -> dict[tuple[int, int, int], PieceTotals]:
    """Totals per ``(node_id, group_id, piece index)`` over consecutive ``pieces``.

    ``group_ids`` selects the ids of the groups to sum.  Whole hours inside a piece are
    summed in SQL; hours cut by a piece boundary are read per row and shared out exactly
    (:func:`share`).  With ``reserved``, each hour also compares usage with the reservation
    (in floating point: at an exact tie either side gives the same amount to within 1e-15)
    and keeps the winners apart, so the caller can bill ``max(usage, reservation)`` per hour
    with exact integers.

    The whole-hour queries aggregate per group while they read the rollups in their key
    order (group, hour, node): a group's rows are one index range, and grouping by group
    alone needs no sort (grouping by group and node would sort every row).  The node comes
    out as ``min(node_id)``; a group whose rows in a piece carry several nodes (``min`` and
    ``max`` differ, which metering never writes) is summed again per node.  Groups with a
    reservation are read in a join *driven* by a temporary table of the reservations (one
    row per group and piece, in group order), so each rollup row meets its reservation
    without an index lookup; the other groups are read without it.
    """
    out: dict[tuple[int, int, int], PieceTotals] = {}
    if not pieces:
        return out
    start, end = pieces[0][0], pieces[-1][1]
    cuts = {start, end, *(b for _, b in pieces)}
    partial = sorted({hour_floor(c) for c in cuts if hour_floor(c) != c})
    h = _ROLLUPS.c
    dialect = connection_of(session).dialect.name
    if dialect == "postgresql":
        # aggregating a month of 1,000 groups sorts ~400k rows per piece: let it happen in
        # memory rather than in an external merge (default work_mem is 4 MB); this
        # transaction only
        session.execute(text("SET LOCAL work_mem = '64MB'"))
    sums = _sums(split)
    ids = group_ids.subquery()
    gid = next(iter(ids.c))
    res = None
    if reserved:
        res = Table("governor_bill_reserved", MetaData(),
                    Column("piece", Integer, primary_key=True),
                    Column("group_id", BigInteger, primary_key=True),
                    Column("node_id", Integer, primary_key=True),
                    Column("reserved", BigInteger),
                    prefixes=["TEMPORARY"], sqlite_with_rowid=False)
        conn = connection_of(session)
        res.drop(conn, checkfirst=True)
        res.create(conn)
        conn.execute(res.insert(), [
            {"node_id": n, "group_id": g, "piece": i, "reserved": r}
            for (n, g, i), r in sorted(reserved.items(), key=lambda kv: (kv[0][2], kv[0][1]))])
        if conn.dialect.name == "postgresql":
            # statistics for the planner (a temporary table has none: it would take it for
            # a dozen rows and loop over the rollups' index once per group)
            conn.execute(text(f"ANALYZE {res.name}"))

    def max_sums(res: Table, node_matches: ColumnElement[bool]) -> list[ColumnElement[Any]]:
        wins = and_(node_matches, cast(h.memory_byte_seconds, Float) * 1e6
                    < cast(res.c.reserved, Float) * h.covered_us)
        return [*exact_sum(case((wins, 0), else_=h.memory_byte_seconds), split),
                *exact_sum(case((wins, h.covered_us), else_=0), split)]

    def collect(rows: Any, i: int, with_res: bool, multi: set[int] | None) -> None:
        """Rows (group, node low, node high, sums...) into ``out``; groups seen on several
        nodes into ``multi`` (None: rows already per node, low = high)."""
        for row in rows:
            if row[1] != row[2]:
                assert multi is not None
                multi.add(row[0])
                continue
            values = exact(row[3:], split)
            t = _totals(PieceTotals, values[: len(FIELDS)])
            if with_res:
                t.mem_usage_wins, t.covered_reserved_us = values[len(FIELDS):]
            else:
                t.mem_usage_wins = t.memory_byte_seconds
            out[(row[1], row[0], i)] = t

    try:
        for i, (a, b) in enumerate(pieces):
            lo, hi = hour_ceil(a), hour_floor(b)
            if lo >= hi:
                continue
            in_piece = and_(h.hour >= lo, h.hour < hi)
            multi: set[int] = set()
            plain = h.group_id.in_(select(gid))
            if res is not None:
                r = res.c
                q = (select(r.group_id, func.min(h.node_id), func.max(h.node_id), *sums,
                            *max_sums(res, h.node_id == r.node_id))
                     .select_from(res.join(_ROLLUPS, and_(h.group_id == r.group_id, in_piece)))
                     .where(r.piece == i, r.group_id.in_(select(gid)))
                     .group_by(r.group_id))
                collect(session.execute(q), i, True, multi)
                plain = h.group_id.in_(
                    select(gid).where(gid.not_in(select(r.group_id).where(r.piece == i))))
            q = (select(h.group_id, func.min(h.node_id), func.max(h.node_id), *sums)
                 .where(plain, in_piece).group_by(h.group_id))
            collect(session.execute(q), i, False, multi)
            if multi:  # per node, the reservation looked up per row
                q = (select(h.group_id, h.node_id.label("node_lo"),
                            h.node_id.label("node_hi"), *sums)
                     .where(h.group_id.in_(sorted(multi)), in_piece)
                     .group_by(h.group_id, h.node_id))
                if res is not None:
                    r = res.c
                    q = (q.add_columns(*max_sums(res, r.node_id.is_not(None)))
                         .outerjoin(res, and_(r.group_id == h.group_id, r.piece == i,
                                              r.node_id == h.node_id)))
                collect(session.execute(q), i, res is not None, None)
    finally:
        if res is not None:
            res.drop(connection_of(session), checkfirst=True)
    bounds = [start, *(b for _, b in pieces)]
    for hour in partial:
        points = hour_points(hour, bounds)
        # the piece of each segment of the hour (None: outside the period)
        piece_of = [next((i for i, (a, b) in enumerate(pieces) if a <= p and q <= b), None)
                    for p, q in itertools.pairwise(points)]
        for (node_id, group_id), eh in edge_hour(
                session=session, hour=hour, cuts=bounds,
                where=[h.group_id.in_(select(gid))]).items():
            for piece, values in zip(piece_of, eh.segments, strict=True):
                if piece is None:
                    continue
                part = _totals(PieceTotals, values)
                rv = reserved.get((node_id, group_id, piece)) if reserved else None
                if rv is not None and part.memory_byte_seconds * 1_000_000 < rv * part.covered_us:
                    part.covered_reserved_us = part.covered_us
                else:
                    part.mem_usage_wins = part.memory_byte_seconds
                key = (node_id, group_id, piece)
                acc = out.get(key)
                if acc is None:
                    out[key] = part
                else:
                    acc.add(part)
                    acc.mem_usage_wins += part.mem_usage_wins
                    acc.covered_reserved_us += part.covered_reserved_us
    return out
