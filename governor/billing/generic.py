"""The registered controllers' billable quantities (governor.controllers, issue #17) in
bills and usage reports, read from ``rollup_values`` as the others are read from
``rollups_hourly`` (:mod:`.quantities`): whole hours as they are, an hour cut by a period
or piece boundary by its exact integer time share (:func:`~.quantities.share`), so
adjacent periods neither lose nor double a unit.  Sums are Python integers: exact at any
size.

Each quantity bills as ``resource`` in ``unit`` at the plan's ``plan_key`` price (a
version's ``quantity_prices``, 0 when the plan leaves it out); ``governor usage`` shows
it in the column ``<plan_key>s`` (``hugetlb_gib_hours``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import ColumnElement, Select, select

from governor.billing.plans import PriceVersionLike
from governor.billing.quantities import HOUR, hour_floor, share
from governor.controllers import registry
from governor.controllers.base import Quantity
from governor.store.tables import groups as _GROUPS
from governor.store.tables import rollup_values as _VALUES
from governor.store.tables import tenants as _TENANTS

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
    v = _VALUES.c
    q = (select(v.node_id, v.group_id, v.hour, v.quantity, v.value, *extra)
         .select_from(_VALUES).join(_GROUPS, _GROUPS.c.id == v.group_id)
         .join(_TENANTS, _TENANTS.c.id == _GROUPS.c.tenant_id)
         .where(v.hour >= hour_floor(start), v.hour < end, *where))
    for row in session.execute(q):
        if row.quantity in QUANTITIES:
            yield row


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
    for row in _rows(session, pieces[0][0], pieces[-1][1],
                     [_VALUES.c.group_id.in_(select(gid))]):
        hour = row.hour
        for i, (a, b) in enumerate(pieces):
            if b <= hour or a >= hour + HOUR:
                continue
            part = share(int(row.value), hour, a, b)
            if part:
                acc = out[(row.node_id, row.group_id, i)]
                acc[row.quantity] = acc.get(row.quantity, 0) + part
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
    for row in _rows(session, start, end, where, _TENANTS.c.name, _GROUPS.c.path):
        key = {"group": row.path, "node": row.node_id}.get(by, row.hour)
        part = share(int(row.value), row.hour, start, end)
        acc = out[(row.name, key)]
        acc[row.quantity] = acc.get(row.quantity, 0) + part
    return dict(out)
