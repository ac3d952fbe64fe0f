"""The registered controllers' billable quantities (governor.controllers, issue #17) in
bills and usage reports, read from ``rollup_values`` as the others are read from
``rollups_hourly`` (:mod:`.quantities`): whole hours as they are, an hour cut by a period
or piece boundary (an edge hour) from the stored intervals' values (``usage_values``)
that lie in it, each split by its exact time share, where they account for the hour's
``rollup_values`` row exactly, else by the rollup's exact integer time share
(:func:`~.quantities.share`); so adjacent periods neither lose nor double a unit and a
report up to now holds every value stored so far.  ``usage_values`` keeps an interval's
end, not its start: the span is the ``usage_intervals`` row with the same key (the same
pair of samples); a value row without one makes its quantity's hour fall back to the
share.  Sums are Python integers: exact at any size.

Each quantity bills as ``resource`` in ``unit`` at the plan's ``plan_key`` price (a
version's ``quantity_prices``, 0 when the plan leaves it out); ``governor usage`` shows
it in the column ``<plan_key>s`` (``hugetlb_gib_hours``).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import BindParameter, ColumnElement, Select, and_, bindparam, func, select, tuple_

from governor.billing.plans import PriceVersionLike
from governor.billing.quantities import (
    HOUR,
    hour_ceil,
    hour_floor,
    hour_points,
    share,
    split_parts,
)
from governor.controllers import registry
from governor.controllers.base import Quantity
from governor.store.service import chunks
from governor.store.tables import groups as _GROUPS
from governor.store.tables import rollup_values as _VALUES
from governor.store.tables import tenants as _TENANTS
from governor.store.tables import usage_intervals as _USAGE
from governor.store.tables import usage_values as _USAGE_VALUES

if TYPE_CHECKING:
    from governor.store.db import Executor

#: the quantities metered by governor.metering.generic that a plan can price, by name (one
#: without a plan_key is metered and stored, not billed)
QUANTITIES: Final[dict[str, Quantity]] = {
    q.name: q for q in registry.quantities()
    if q.method is not None and q.plan_key is not None}
#: resource -> (unit, divisor of the stored integer, price key), as report.RESOURCES
RESOURCES: Final[dict[str, tuple[str, int, str]]] = {
    q.resource: (q.unit, q.per_unit, q.plan_key) for q in QUANTITIES.values()
    if q.plan_key is not None}
#: their price keys (a plan's optional keys; recorded in price_plans.quantity_prices)
PRICE_KEYS: Final[tuple[str, ...]] = tuple(
    q.plan_key for q in QUANTITIES.values() if q.plan_key is not None)
#: quantity name -> its column in ``governor usage`` (``hugetlb_gib_hours``)
USAGE_COLUMNS: Final[dict[str, str]] = {
    q.name: f"{q.plan_key}s" for q in QUANTITIES.values() if q.plan_key is not None}


def unit_price(version: PriceVersionLike, key: str) -> Decimal:
    """The price of ``key`` in ``version``: a field of its own, or a registered
    controller's price (0 when the plan leaves it out)."""
    own = getattr(version, key, None)
    if own is not None:
        return Decimal(own)
    return Decimal(version.quantity_prices.get(key, 0))


def _rows(session: Executor, start: datetime, end: datetime,
          where: Sequence[ColumnElement[bool]], *extra: Any) -> Iterator[Any]:
    """The ``rollup_values`` rows of the whole hours inside ``[start, end)``."""
    v = _VALUES.c
    q = (select(v.node_id, v.group_id, v.hour, v.quantity, v.value, *extra)
         .select_from(_VALUES).join(_GROUPS, _GROUPS.c.id == v.group_id)
         .join(_TENANTS, _TENANTS.c.id == _GROUPS.c.tenant_id)
         .where(v.hour >= hour_ceil(start), v.hour < hour_floor(end), *where))
    for row in session.execute(q):
        if row.quantity in QUANTITIES:
            yield row


#: an edge hour's value of one node, group and quantity: (extra columns, value per segment)
EdgeValues = dict[tuple[int, int, str], tuple[tuple[Any, ...], list[int]]]


def _interval_values(session: Executor, hour: datetime, points: Sequence[datetime],
                     pairs: Iterable[tuple[int, int]]
                     ) -> tuple[dict[tuple[int, int, str], list[int]], set[tuple[int, int]]]:
    """Per ``(node_id, group_id, quantity)`` of ``pairs``: the stored interval values
    overlapping ``hour`` in each segment between ``points`` and (last) in the whole hour;
    and the pairs with a value row whose span is not known (no ``usage_intervals`` row
    with its key)."""
    uv, ui = _USAGE_VALUES.c, _USAGE.c
    end_h = hour + HOUR
    nseg = len(points) - 1
    out: dict[tuple[int, int, str], list[int]] = {}
    unknown: set[tuple[int, int]] = set()
    joined = _USAGE_VALUES.outerjoin(_USAGE, and_(
        ui.node_id == uv.node_id, ui.group_id == uv.group_id, ui.end_ts == uv.end_ts))
    cols = (uv.group_id, uv.quantity, uv.value, ui.start_ts, uv.end_ts)

    def add(node_id: int, row: Any) -> None:
        gid, name, value, start, end = row
        if name not in QUANTITIES:
            return
        if start is None:
            unknown.add((node_id, gid))
            return
        parts = split_parts([int(value)], start, end, points)
        if parts is None:
            return
        acc = out.setdefault((node_id, gid, name), [0] * (nseg + 1))
        for i, (part,) in enumerate(parts):
            acc[i] += part
            acc[nseg] += part

    node: BindParameter[int] = bindparam("node")
    gids_p: BindParameter[list[int]] = bindparam("gids", expanding=True)
    ending = (select(*cols).select_from(joined)
              .where(uv.node_id == node, uv.group_id.in_(gids_p), uv.end_ts > hour,
                     uv.end_ts <= end_h))
    # the interval across the hour's end, if any: the first to end after it
    nxt = (select(func.min(uv.end_ts))
           .where(uv.node_id == node, uv.group_id == _GROUPS.c.id, uv.end_ts > end_h)
           .scalar_subquery())
    following = select(_GROUPS.c.id, nxt).where(_GROUPS.c.id.in_(gids_p), nxt.is_not(None))
    by_node: dict[int, list[int]] = defaultdict(list)
    for node_id, group_id in pairs:
        by_node[node_id].append(group_id)
    for node_id, gids in by_node.items():
        for chunk in chunks(sorted(gids)):
            params = {"node": node_id, "gids": list(chunk)}
            for row in session.execute(ending, params):
                add(node_id, row)
            after = [(g, e) for g, e in session.execute(following, params)]
            for sub in chunks(after, 500):
                for row in session.execute(select(*cols).select_from(joined).where(
                        uv.node_id == node_id, tuple_(uv.group_id, uv.end_ts).in_(sub))):
                    if row.start_ts is None or row.start_ts < end_h:
                        add(node_id, row)
    return out, unknown


def edge_values(*, session: Executor, hour: datetime, cuts: Iterable[datetime],
                where: Sequence[ColumnElement[bool]], extra: Sequence[Any] = ()
                ) -> EdgeValues:
    """The values of ``hour`` cut at ``cuts`` per ``(node_id, group_id, quantity)`` of its
    ``rollup_values`` rows (joined with ``groups`` and ``tenants``, filtered by
    ``where``; ``extra`` columns returned with each): from the stored interval values
    where they account for the rollup exactly, else the rollup's time share."""
    points = hour_points(hour, cuts)
    v = _VALUES.c
    q = (select(v.node_id, v.group_id, v.quantity, v.value, *extra)
         .select_from(_VALUES).join(_GROUPS, _GROUPS.c.id == v.group_id)
         .join(_TENANTS, _TENANTS.c.id == _GROUPS.c.tenant_id)
         .where(v.hour == hour, *where))
    rollups = {(row[0], row[1], row[2]): (tuple(row[4:]), int(row[3]))
               for row in session.execute(q) if row[2] in QUANTITIES}
    if not rollups:
        return {}
    found, unknown = _interval_values(session, hour, points,
                                      {(n, g) for n, g, _ in rollups})
    nseg = len(points) - 1
    out: EdgeValues = {}
    for key, (kv, total) in rollups.items():
        got = found.get(key)
        if got is not None and key[:2] not in unknown and got[nseg] == total:
            out[key] = (kv, got[:nseg])
        else:
            out[key] = (kv, [share(total, hour, a, b) for a, b in itertools.pairwise(points)])
    return out


def _edge_hours(cuts: Sequence[datetime], start: datetime, end: datetime) -> list[datetime]:
    """The hours of ``[start, end)`` that a point of ``cuts`` falls inside."""
    return sorted({hour_floor(c) for c in cuts if hour_floor(c) != c
                   and hour_floor(c) + HOUR > start and hour_floor(c) < end})


def value_pieces(*, session: Executor, pieces: Sequence[tuple[datetime, datetime]],
                 group_ids: Select[tuple[int]]
                 ) -> dict[tuple[int, int, int], dict[str, int]]:
    """``(node_id, group_id, piece index) -> {quantity: integer}`` over consecutive
    ``pieces`` for the groups ``group_ids`` selects."""
    out: dict[tuple[int, int, int], dict[str, int]] = defaultdict(dict)
    if not pieces or not QUANTITIES:
        return {}
    ids = group_ids.subquery()
    gid = next(iter(ids.c))
    start, end = pieces[0][0], pieces[-1][1]
    bounds = [start, *(b for _, b in pieces)]
    edges = set(_edge_hours(bounds, start, end))

    def put(node_id: int, group_id: int, i: int, name: str, part: int) -> None:
        if part:
            acc = out[(node_id, group_id, i)]
            acc[name] = acc.get(name, 0) + part

    for row in _rows(session, start, end, [_VALUES.c.group_id.in_(select(gid))]):
        hour = row.hour
        if hour in edges:
            continue
        for i, (a, b) in enumerate(pieces):
            if a <= hour and hour + HOUR <= b:
                put(row.node_id, row.group_id, i, row.quantity, int(row.value))
                break
    for hour in sorted(edges):
        points = hour_points(hour, bounds)
        piece_of = [next((i for i, (a, b) in enumerate(pieces) if a <= p and q <= b), None)
                    for p, q in itertools.pairwise(points)]
        for (node_id, group_id, name), (_, parts) in edge_values(
                session=session, hour=hour, cuts=bounds,
                where=[_VALUES.c.group_id.in_(select(gid))]).items():
            for piece, part in zip(piece_of, parts, strict=True):
                if piece is not None:
                    put(node_id, group_id, piece, name, part)
    return dict(out)


def value_range(*, session: Executor, start: datetime, end: datetime,
                where: Sequence[ColumnElement[bool]], by: str
                ) -> dict[tuple[str, Any], dict[str, int]]:
    """``(tenant, key) -> {quantity: integer}`` over ``[start, end)``, keyed as
    :func:`governor.billing.report.usage_report` keys its rows before naming them (the
    hour, the group's path or the node id; days are the caller's)."""
    out: dict[tuple[str, Any], dict[str, int]] = defaultdict(dict)
    if not QUANTITIES:
        return {}

    def put(tenant: str, key: Any, name: str, part: int) -> None:
        acc = out[(tenant, key)]
        acc[name] = acc.get(name, 0) + part

    for row in _rows(session, start, end, where, _TENANTS.c.name, _GROUPS.c.path):
        key = {"group": row.path, "node": row.node_id}.get(by, row.hour)
        put(row.name, key, row.quantity, int(row.value))
    for hour in _edge_hours((start, end), start, end):
        points = hour_points(hour, (start, end))
        inside = [i for i, (a, b) in enumerate(itertools.pairwise(points))
                  if start <= a and b <= end]
        for (node_id, _, name), ((tenant, path), parts) in edge_values(
                session=session, hour=hour, cuts=(start, end), where=where,
                extra=(_TENANTS.c.name, _GROUPS.c.path)).items():
            key = {"group": path, "node": node_id}.get(by, hour)
            put(tenant, key, name, sum(parts[i] for i in inside))
    return dict(out)
