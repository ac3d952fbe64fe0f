"""Edge hours: an hour that a period boundary, a price or a reservation change cuts is
read from the stored intervals that lie in it, split exactly at the cut points, where
they account for the hour's rollup exactly; else from the rollup's time share (the
rules are in :mod:`governor.billing.quantities`)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    and_,
    bindparam,
    case,
    func,
    select,
)

from governor.store.service import chunks
from governor.store.tables import groups as _GROUPS
from governor.store.tables import rollups_hourly as _ROLLUPS
from governor.store.tables import tenants as _TENANTS
from governor.store.tables import usage_intervals as _USAGE

if TYPE_CHECKING:
    from governor.store.db import Executor

from governor.billing.totals import FIELDS, HOUR, KeyColumn, _us, share

#: the ``usage_intervals`` column of each :data:`FIELDS` entry: an interval's covered time
#: is its ``duration_us``, split on hours by wall-clock time as its quantities are
_IV_COLUMNS: Final = tuple("duration_us" if f == "covered_us" else f for f in FIELDS)


def hour_points(hour: datetime, cuts: Iterable[datetime]) -> list[datetime]:
    """The hour's start, the ``cuts`` strictly inside it (sorted, once each) and its end:
    the bounds of the hour's segments."""
    return [hour, *sorted({c for c in cuts if hour < c < hour + HOUR}), hour + HOUR]


def split_parts(values: Sequence[int], start: datetime, end: datetime,
                points: Sequence[datetime]) -> list[list[int]] | None:
    """The parts of an interval ``[start, end)``'s ``values`` in each segment between
    consecutive ``points``, each by its exact time share (cumulative flooring on the
    interval's wall-clock microseconds, as the meter splits it on hours); None for an
    interval without length (the meter puts it in no hour)."""
    length = _us(end - start)
    if length <= 0:
        return None
    offs = [min(max(_us(p - start), 0), length) for p in points]
    out: list[list[int]] = [[0] * len(values) for _ in range(len(points) - 1)]
    for j, v in enumerate(values):
        cum = [v * o // length for o in offs]
        for i in range(len(points) - 1):
            out[i][j] = cum[i + 1] - cum[i]
    return out


@dataclasses.dataclass(slots=True)
class EdgeHour:
    """One node's and group's usage in an edge hour: ``segments[i]`` the :data:`FIELDS`
    values of the segment ``[points[i], points[i + 1])`` (:func:`hour_points`)."""

    keys: tuple[Any, ...]
    segments: list[list[int]]
    #: True: from the stored intervals; False: the rollup's time share (intervals pruned
    #: or not matching the rollup)
    from_intervals: bool


def _add_into(acc: list[int], values: Sequence[int]) -> None:
    for j, v in enumerate(values):
        acc[j] += int(v)


def _interval_parts(session: Executor, hour: datetime, points: Sequence[datetime],
                    rollups: Mapping[tuple[int, int], Sequence[int]]
                    ) -> dict[tuple[int, int], list[list[int]]]:
    """Per ``(node_id, group_id)`` of ``rollups`` (their :data:`FIELDS` values in
    ``hour``): the :data:`FIELDS` values of the stored intervals overlapping ``hour``, in
    each segment between ``points`` and (last) in the whole hour.

    Read by the intervals' key (node, group, end): those ending inside the hour (the ones
    inside one segment summed in SQL, the others split here) and the one after it that
    starts inside it (an interval overlaps the hour's end at most once per group), looked
    up only where those ending inside do not already add up to the rollup: there, every
    quantity being a non-negative count, nothing else can lie in the hour."""
    u = _USAGE.c
    end_h = hour + HOUR
    nseg = len(points) - 1
    cols = [u[c] for c in _IV_COLUMNS]
    out: dict[tuple[int, int], list[list[int]]] = {}

    def acc(pair: tuple[int, int]) -> list[list[int]]:
        got = out.get(pair)
        if got is None:
            got = out[pair] = [[0] * len(FIELDS) for _ in range(nseg + 1)]
        return got

    def add_row(pair: tuple[int, int], start: datetime, end: datetime,
                values: Sequence[int]) -> None:
        parts = split_parts([int(v) for v in values], start, end, points)
        if parts is None:
            return
        a = acc(pair)
        for i, part in enumerate(parts):   # the segments partition the hour
            _add_into(a[i], part)
            _add_into(a[nseg], part)

    seg = case(*((and_(u.start_ts >= points[i], u.end_ts <= points[i + 1]), i)
                 for i in range(nseg)), else_=None)
    # built once, run per node and chunk of groups (the ids an expanding parameter: a
    # thousand literals coerced per query were half of an edge hour's cost)
    node: BindParameter[int] = bindparam("node")
    gids_p: BindParameter[list[int]] = bindparam("gids", expanding=True)
    ending = (u.node_id == node, u.group_id.in_(gids_p), u.end_ts > hour, u.end_ts <= end_h)
    inner = select(u.group_id, seg.label("seg"), *cols).where(*ending).subquery()
    summed = (select(inner.c.group_id, inner.c.seg,
                     *(func.sum(inner.c[c]) for c in _IV_COLUMNS))
              .where(inner.c.seg.is_not(None))
              .group_by(inner.c.group_id, inner.c.seg))
    crossing = select(u.group_id, u.start_ts, u.end_ts, *cols).where(*ending, seg.is_(None))
    # the interval across the hour's end, if any: the first to end after it
    later = _USAGE.alias("later").c
    nxt = (select(func.min(later.end_ts))
           .where(later.node_id == node, later.group_id == _GROUPS.c.id, later.end_ts > end_h)
           .correlate(_GROUPS).scalar_subquery())
    following = (select(u.group_id, u.start_ts, u.end_ts, *cols)
                 .select_from(_GROUPS).join(_USAGE, and_(u.node_id == node,
                                                         u.group_id == _GROUPS.c.id,
                                                         u.end_ts == nxt))
                 .where(_GROUPS.c.id.in_(gids_p), u.start_ts < end_h))
    by_node: dict[int, list[int]] = defaultdict(list)
    for node_id, group_id in rollups:
        by_node[node_id].append(group_id)
    for node_id, gids in by_node.items():
        for chunk in chunks(sorted(gids)):
            params = {"node": node_id, "gids": list(chunk)}
            for row in session.execute(summed, params):
                a = acc((node_id, row[0]))
                _add_into(a[int(row[1])], row[2:])
                _add_into(a[nseg], row[2:])
            for row in session.execute(crossing, params):
                add_row((node_id, row[0]), row[1], row[2], row[3:])
            short = [g for g in chunk if (got := out.get((node_id, g))) is None
                     or got[nseg] != list(rollups[(node_id, g)])]
            if short:
                for row in session.execute(following, {"node": node_id, "gids": short}):
                    add_row((node_id, row[0]), row[1], row[2], row[3:])
    return out


def edge_hour(*, session: Executor, hour: datetime, cuts: Iterable[datetime],
              where: Sequence[ColumnElement[bool]],
              keys: Sequence[KeyColumn] = ()) -> dict[tuple[int, int], EdgeHour]:
    """The usage of ``hour`` cut at ``cuts`` per ``(node_id, group_id)`` of its rollups
    (joined with ``groups`` and ``tenants``, filtered by ``where``; ``keys`` columns
    returned with each): from the stored intervals where they account for the rollup
    exactly, else the rollup's time share (the module's rule)."""
    points = hour_points(hour, cuts)
    r = _ROLLUPS.c
    q = (select(r.node_id, r.group_id, *keys, *(r[f] for f in FIELDS))
         .select_from(_ROLLUPS).join(_GROUPS, _GROUPS.c.id == r.group_id)
         .join(_TENANTS, _TENANTS.c.id == _GROUPS.c.tenant_id)
         .where(r.hour == hour, *where))
    rollups: dict[tuple[int, int], tuple[tuple[Any, ...], list[int]]] = {}
    for row in session.execute(q):
        rollups[(row[0], row[1])] = (tuple(row[2:2 + len(keys)]),
                                     [int(v) for v in row[2 + len(keys):]])
    if not rollups:
        return {}
    found = _interval_parts(session, hour, points,
                            {pair: totals for pair, (_, totals) in rollups.items()})
    nseg = len(points) - 1
    out: dict[tuple[int, int], EdgeHour] = {}
    for pair, (kv, totals) in rollups.items():
        got = found.get(pair)
        if got is not None and got[nseg] == totals:
            out[pair] = EdgeHour(kv, got[:nseg], True)
        else:
            out[pair] = EdgeHour(kv, [[share(v, hour, a, b) for v in totals]
                                      for a, b in itertools.pairwise(points)], False)
    return out
