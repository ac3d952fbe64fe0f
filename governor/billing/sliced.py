"""Sliced invoices: an invoice cut per node and per UTC hour, day or month (what
``governor bill --format focus`` writes, :mod:`governor.billing.focus`), made with the
rules of :mod:`governor.billing.report` (one rounding per line, the memory basis, the
stored intervals at the window's edges)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

from sqlalchemy import select

from governor.billing import generic
from governor.billing.errors import InvalidPeriod
from governor.billing.plans import PolicyLike, PriceVersionLike, plan_for, version_segments
from governor.billing.quantities import sum_pieces
from governor.billing.report import (
    _BUS,
    _QUANTITY,
    QUANTITY_PLACES,
    RESOURCES,
    STORAGE,
    _amount,
    _check_period,
    _group_label,
    billed_rows,
    known_tenants,
    memory_billed,
    minor_exponent,
    reservations,
    reservations_at,
)
from governor.store.service import node_id_named
from governor.store.tables import nodes as _NODES

if TYPE_CHECKING:
    from governor.store.db import Executor

#: the slices of a sliced invoice (``governor bill --by``): UTC hours, days or months
Granularity = Literal["hour", "day", "month"]
GRANULARITIES: Final = ("hour", "day", "month")


def charge_slices(start: datetime, end: datetime, by: Granularity
                  ) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut at every UTC hour, day or first of a month: consecutive slices,
    the first and last clipped to the window."""
    _check_period(start, end)
    if by not in GRANULARITIES:
        raise InvalidPeriod(f"--by {by!r}: a bill is sliced by hour, day or month")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if by == "hour":
        first = start.replace(minute=0, second=0, microsecond=0)
    else:
        first = start.replace(hour=0, minute=0, second=0, microsecond=0)
        if by == "month":
            first = first.replace(day=1)

    def step(t: datetime) -> datetime:
        if by == "hour":
            return t + timedelta(hours=1)
        if by == "day":
            return t + timedelta(days=1)
        return (t.replace(day=1) + timedelta(days=32)).replace(day=1)

    out: list[tuple[datetime, datetime]] = []
    a = start
    b = step(first)
    while a < end:
        out.append((a, min(b, end)))
        a, b = b, step(b)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Charge:
    """One row of a sliced invoice: a group's resource at one price version, on one node,
    within one slice.  ``quantity`` and ``amount`` are this row's share of its invoice
    line's (cumulative rounding, :func:`sliced_invoice`): the rows of a line add up to the
    line exactly."""

    node: str
    group: str
    path: str
    resource: str
    price_version: int
    #: the slice, cut where the price version changes
    charge_start: datetime
    charge_end: datetime
    #: billed, in ``unit`` (memory: per the plan's memory basis)
    quantity: Decimal
    #: metered, in ``unit`` (memory: the usage integral whatever the basis)
    consumed: Decimal
    unit: str
    unit_price: Decimal
    amount: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class SlicedInvoice:
    """:func:`invoice`'s bill, one row per node and slice: the same total."""

    tenant: str
    plan: str
    currency: str
    memory_basis: str
    start: datetime
    end: datetime
    by: str
    charges: tuple[Charge, ...]
    total: Decimal


def sliced_invoice(*, session: Executor, policy: PolicyLike, tenant: str, start: datetime,
                   end: datetime, by: Granularity = "month",
                   node: str | None = None) -> SlicedInvoice:
    """The invoice of ``tenant`` for ``[start, end)`` (:func:`invoice`: the same lines, amounts
    and total) with each line split per node and per UTC hour, day or month (``by``).

    Each slice is read as :func:`invoice` reads its period (price versions and reservation
    changes cut it into pieces, summed by :func:`~.quantities.sum_pieces` and
    :func:`~.generic.value_pieces`), keeping the node: slices start on whole hours, so
    their integer quantities add up to the window's exactly.  A line's amount is rounded
    once, as on the invoice; its rows take ``R(C_k) - R(C_{k-1})``, where ``C_k`` is the
    line's integer quantity up to and including row ``k`` (rows in time, then node order)
    and ``R`` the invoice's rounding: every row is within one minor unit of its exact
    share and the rows add up to the line's amount.  Quantities are shared out the same way
    at 9 decimals.  ``node``: that node's rows only (their total its share).
    """
    slices = charge_slices(start, end, by)
    if node is not None:
        node_id_named(session=session, name=node)  # an unknown name: UnknownNode
    plan = plan_for(policy, tenant, known_tenants=known_tenants(session))
    basis = plan.memory_basis
    res = ({} if basis == "usage" else reservations(session=session, tenant=tenant, until=end))
    cuts = sorted({t for hist in res.values() for t, _ in hist if start < t < end})
    groups, tenant_groups = billed_rows(session, tenant)
    path_of = {gid: path for gid, path, _ in groups}
    node_name = dict(session.execute(select(_NODES.c.id, _NODES.c.name)).tuples().all())

    # (path, resource, version) -> {(slice, node name): [billed units, consumed units]}
    qty: dict[tuple[str, str, int], dict[tuple[int, str], list[int]]] = defaultdict(dict)
    # (slice, version) -> the part of the slice the version covers
    period: dict[tuple[int, int], tuple[datetime, datetime]] = {}

    def add(key: tuple[str, str, int], where: tuple[int, str], billed: int,
            consumed: int) -> None:
        acc = qty[key].setdefault(where, [0, 0])
        acc[0] += billed
        acc[1] += consumed

    for s, (sa, sb) in enumerate(slices):
        pieces: list[tuple[datetime, datetime, int, PriceVersionLike]] = []
        for a, b, idx, version in version_segments(plan, sa, sb):
            period[(s, idx)] = (a, b)
            points = [a, *(c for c in cuts if a < c < b), b]
            pieces.extend((p, q, idx, version) for p, q in itertools.pairwise(points))
        reserved_at = reservations_at(res, groups, pieces)
        reserved_ints = {k: r for k, r in reserved_at.items() if r}
        spans = [(a, b) for a, b, _, _ in pieces]
        totals = sum_pieces(session=session, pieces=spans, group_ids=tenant_groups,
                            reserved=reserved_ints if basis == "max" else None)
        for (node_id, gid, i), t in totals.items():
            idx = pieces[i][2]
            mem_bus, usage_bus = memory_billed(t, basis,
                                               reserved_at.get((node_id, gid, i), 0))
            where = (s, node_name.get(node_id, str(node_id)))
            for resource, name in _QUANTITY.items():
                if resource == "memory":
                    add((path_of[gid], resource, idx), where, mem_bus, usage_bus)
                    continue
                value: int = getattr(t, name)
                if resource == STORAGE:
                    value *= _BUS
                add((path_of[gid], resource, idx), where, value, value)
        for (node_id, gid, i), got in generic.value_pieces(
                session=session, pieces=spans, group_ids=tenant_groups).items():
            where = (s, node_name.get(node_id, str(node_id)))
            for name, value in got.items():
                add((path_of[gid], generic.QUANTITIES[name].resource, pieces[i][2]), where,
                    value, value)

    def places(units: int, divisor: int) -> Decimal:
        return (Decimal(units) / Decimal(divisor)).quantize(QUANTITY_PLACES)

    charges: list[tuple[tuple[Any, ...], Charge]] = []
    order = list(RESOURCES)
    for (path, resource, idx), rows in qty.items():
        unit, divisor, attr = RESOURCES[resource]
        price = generic.unit_price(plan.versions[idx], attr)
        billed = consumed = 0
        amount_before = quantity_before = consumed_before = Decimal(0)
        for (s, on) in sorted(rows):
            units, used = rows[(s, on)]
            billed += units
            consumed += used
            amount = _amount(billed, divisor, price, plan.currency)
            quantity = places(billed, divisor)
            used_q = places(consumed, divisor)
            if units:  # as the invoice leaves zero quantities out
                a, b = period[(s, idx)]
                charges.append(((s, path, order.index(resource), idx, on), Charge(
                    node=on, group=_group_label(path), path=path, resource=resource,
                    price_version=idx, charge_start=a, charge_end=b,
                    quantity=quantity - quantity_before, consumed=used_q - consumed_before,
                    unit=unit, unit_price=price, amount=amount - amount_before)))
            amount_before, quantity_before, consumed_before = amount, quantity, used_q
    charges = [kc for kc in charges if node is None or kc[1].node == node]
    charges.sort(key=lambda kc: kc[0])
    total = sum((c.amount for _, c in charges), Decimal(0))
    total = total.quantize(Decimal(1).scaleb(-minor_exponent(plan.currency)))
    return SlicedInvoice(tenant=tenant, plan=plan.name, currency=plan.currency,
                         memory_basis=basis, start=start, end=end, by=by,
                         charges=tuple(c for _, c in charges), total=total)
