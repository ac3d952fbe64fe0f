"""Usage reports and invoices, read from hourly rollups and, for the hours a period or a
price or reservation change cuts, from the stored intervals (see :mod:`.quantities`).

**Rounding rule** (the only one): every invoice line's amount is computed exactly (integer
usage times the Decimal unit price, as a fraction), then rounded once, half-even, to the
currency's minor unit (2 decimals unless listed in :data:`MINOR_UNITS`).  The total is the sum
of the rounded lines, so the lines always add up to the total.  Displayed quantities are
rounded to 9 decimals for reading only; amounts use the exact quantity.

**Lines**: one per group, resource and price version (a price change inside the period gives
two lines with their own unit prices and charge periods), summed across nodes and group
incarnations.  Zero-quantity lines are left out; a period without usage is an invoice with no
lines and a total of 0.

**Memory basis** (``PricePlan.memory_basis``):

* ``usage`` -- the memory integral (GiB-hours of ``memory.current``);
* ``reservation`` -- the reserved amount (``memory.min``, else ``memory.low``, as last written
  by an applied policy on that node) times the time the group existed (covered time);
* ``max`` -- per node and hour, the larger of the two.
A reservation written as ``max`` protects all the group uses, so it is billed as usage.

**Storage** (the writable layers of containers launched from images, issue #19) is billed
on its usage integral whatever the memory basis, in GiB-hours, exactly as the ``usage``
basis bills memory.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final, Literal

from sqlalchemy import ColumnElement, Select, select

from governor.billing import generic
from governor.billing.errors import InvalidPeriod, UnknownTenant
from governor.billing.nodes import Quantities, merged_span, node_names, share
from governor.billing.plans import (
    PolicyLike,
    PricePlanLike,
    PriceVersionLike,
    plan_for,
    version_segments,
)
from governor.billing.quantities import (
    HOUR_US,
    KeyColumn,
    PieceTotals,
    Totals,
    sum_pieces,
    sum_range,
)
from governor.billing.totals import billed_groups
from governor.controllers import registry
from governor.store.service import node_id_named
from governor.store.tables import applied_policies as _APPLIED
from governor.store.tables import groups as _GROUPS
from governor.store.tables import nodes as _NODES
from governor.store.tables import rollups_hourly as _ROLLUPS
from governor.store.tables import tenants as _TENANTS

if TYPE_CHECKING:
    from governor.store.db import Executor

GIB: Final = 1 << 30
#: minor-unit exponents that differ from 2 (ISO 4217)
MINOR_UNITS: Final = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "VND": 0, "BHD": 3, "KWD": 3,
                      "OMR": 3, "JOD": 3, "TND": 3}

#: the writable layers of containers launched from images (issue #19), not a cgroup
#: controller's: their integral, in byte-microseconds as memory's usage basis
STORAGE: Final = "storage"
#: the order of a group's invoice lines (a bill's layout, unchanged): the priced quantities'
#: resources (governor/controllers/) and the writable layers
LINE_ORDER: Final = ("cpu", "memory", STORAGE, "io_read", "io_write", "oom_kill")
#: byte-microseconds per byte-second: memory is billed in byte-microseconds so that
#: reservations (bytes x covered microseconds) stay exact
_BUS: Final = 1_000_000
#: resource -> the Totals attribute of its quantity (memory's and storage's in
#: byte-seconds: billed times :data:`_BUS`)
_QUANTITY: Final[dict[str, str]] = {
    **{q.resource: q.name for c in registry.first_wave() for q in c.quantities
       if q.plan_key is not None},
    STORAGE: "storage_byte_seconds"}


def memory_billed(t: PieceTotals, basis: str, reserved: int | None) -> tuple[int, int]:
    """``(billed, used)`` byte-microseconds of memory in one piece: the usage integral, the
    reservation over the covered time, or per hour the larger of the two (the "max"
    basis), by the plan's ``basis``; ``reserved`` None: none known, the usage is billed
    (0 under "max" too).  The one rule of :func:`invoice` and :func:`sliced_invoice`."""
    usage_bus = t.memory_byte_seconds * _BUS
    if basis == "usage" or reserved is None:
        return usage_bus, usage_bus
    if basis == "reservation":
        return reserved * t.covered_us, usage_bus
    if reserved == 0:   # "max" without a reservation: the usage
        return usage_bus, usage_bus
    return t.mem_usage_wins * _BUS + reserved * t.covered_reserved_us, usage_bus


def _resources() -> dict[str, tuple[str, int, str]]:
    priced = {q.resource: q for c in registry.first_wave() for q in c.quantities
              if q.plan_key is not None}
    if set(LINE_ORDER) != {*priced, STORAGE}:
        raise ImportError(f"governor.billing.report: LINE_ORDER {LINE_ORDER} does not name "
                          f"the priced resources {sorted(priced)} and {STORAGE}")
    out: dict[str, tuple[str, int, str]] = {}
    for res in LINE_ORDER:
        if res == STORAGE:
            out[res] = ("GiB-hour", GIB * HOUR_US, "storage_gib_hour")
            continue
        q = priced[res]
        assert q.plan_key is not None
        out[res] = (q.unit, q.per_unit * (_BUS if res == "memory" else 1), q.plan_key)
    return out


#: resource -> (unit, divisor turning the integer quantity into that unit, price attribute)
RESOURCES: Final[dict[str, tuple[str, int, str]]] = {
    **_resources(),
    # the registered generic controllers' quantities (governor.billing.generic), e.g. hugetlb
    **generic.RESOURCES,
}
QUANTITY_PLACES: Final = Decimal("1e-9")

By = Literal["hour", "day", "group", "node"]


def minor_exponent(currency: str) -> int:
    return MINOR_UNITS.get(currency.upper(), 2)


def round_money(exact: Fraction, currency: str) -> Decimal:
    """``exact`` rounded half-even to the currency's minor unit."""
    exp = minor_exponent(currency)
    return Decimal(round(exact * 10**exp)).scaleb(-exp)


def _amount(units: int, divisor: int, price: Decimal, currency: str) -> Decimal:
    """``round_money(Fraction(units, divisor) * Fraction(price), currency)`` in integers:
    the same half-even rounding of the same exact value (Fraction's ``round`` rounds
    ``floor(n/d)`` up when the remainder is over half, or half and the floor is odd),
    without building Fractions (9,000 lines of a month's bill)."""
    exp = minor_exponent(currency)
    pn, pd = price.as_integer_ratio()
    num, den = units * pn * 10**exp, divisor * pd  # den > 0
    q, rem = divmod(num, den)
    if rem * 2 > den or (rem * 2 == den and q % 2 == 1):
        q += 1
    return Decimal(q).scaleb(-exp)


def _places(units: int, divisor: int) -> Decimal:
    return (Decimal(units) / Decimal(divisor)).quantize(QUANTITY_PLACES)


def _check_period(start: datetime, end: datetime) -> None:
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidPeriod(f"the {name} of a period must be an aware UTC time, got {value}")
    if start >= end:
        raise InvalidPeriod(f"empty or inverted period: from {start.isoformat()} "
                            f"to {end.isoformat()}")


def known_tenants(session: Executor) -> set[str]:
    return set(session.execute(select(_TENANTS.c.name)).scalars())


def _group_label(path: str) -> str:
    return path.split("/", 1)[1] if "/" in path else "(tenant)"


@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceLine:
    group: str
    path: str
    resource: str
    #: the quantity in ``unit``, rounded to 9 decimals for reading
    quantity: Decimal
    unit: str
    unit_price: Decimal
    amount: Decimal
    charge_start: datetime
    charge_end: datetime
    price_version: int


@dataclasses.dataclass(frozen=True, slots=True)
class Invoice:
    tenant: str
    plan: str
    currency: str
    memory_basis: str
    start: datetime
    end: datetime
    lines: tuple[InvoiceLine, ...]
    total: Decimal


Reservation = int | None  # bytes; None: "max" (everything used is protected)


def _reservation_value(files: dict[str, str]) -> Reservation:
    def parse(v: str | None) -> Reservation:
        if v is None:
            return 0
        if v.strip() == "max":
            return None
        return int(v)

    mn = parse(files.get("memory.min"))
    if mn is None or mn > 0:
        return mn
    return parse(files.get("memory.low"))


def reservations(*, session: Executor, tenant: str, until: datetime
                 ) -> dict[tuple[int, str], list[tuple[datetime, Reservation]]]:
    """Reservation history per ``(node_id, path)`` of ``tenant``'s groups from the applied
    policies: ``[(from, bytes or None), ...]`` in time order."""
    state: dict[tuple[int, str], dict[str, str]] = defaultdict(dict)
    out: dict[tuple[int, str], list[tuple[datetime, Reservation]]] = defaultdict(list)
    rows = session.execute(
        select(_APPLIED.c.node_id, _APPLIED.c.applied_at, _APPLIED.c.writes)
        .where(_APPLIED.c.applied_at < until)
        .order_by(_APPLIED.c.applied_at, _APPLIED.c.id))
    for node_id, applied_at, writes in rows:
        touched = set()
        for w in writes:
            path = w.get("path", "")
            if w.get("file") in ("memory.min", "memory.low") and (
                    path == tenant or path.startswith(tenant + "/")):
                state[(node_id, path)][w["file"]] = w["value"]
                touched.add((node_id, path))
        for key in touched:
            value = _reservation_value(state[key])
            hist = out[key]
            if hist and hist[-1][0] == applied_at:
                hist[-1] = (applied_at, value)
            elif not hist or hist[-1][1] != value:
                hist.append((applied_at, value))
    return dict(out)


def _reservation_at(hist: list[tuple[datetime, Reservation]], when: datetime) -> Reservation:
    value: Reservation = 0
    for t, v in hist:
        if t <= when:
            value = v
        else:
            break
    return value


def reservations_at(res: Mapping[tuple[int, str], list[tuple[datetime, Reservation]]],
                    groups: Sequence[Any], pieces: Sequence[tuple[datetime, Any, Any, Any]]
                    ) -> dict[tuple[int, int, int], Reservation]:
    """``(node_id, group id, piece index) -> reservation`` in force at each piece's start,
    for every group row ``(id, path, node_id)`` with a reservation history in ``res``."""
    out: dict[tuple[int, int, int], Reservation] = {}
    if res:
        for i, (a, *_rest) in enumerate(pieces):
            for gid, path, node_id in groups:
                hist = res.get((node_id, path))
                if hist:
                    out[(node_id, gid, i)] = _reservation_at(hist, a)
    return out


def billed_rows(session: Executor, tenant: str
                ) -> tuple[Sequence[Any], Select[tuple[int]]]:
    """The ``(id, path, node_id)`` of the ``groups`` rows a bill of ``tenant`` counts
    (:func:`~governor.billing.totals.billed_groups`), and the select of their ids for the
    sums (:func:`invoice` and :func:`governor.billing.sliced.sliced_invoice`)."""
    rows = (select(_GROUPS.c.id, _GROUPS.c.path, _GROUPS.c.node_id)
            .join(_TENANTS, _TENANTS.c.id == _GROUPS.c.tenant_id)
            .where(_TENANTS.c.name == tenant, billed_groups()))
    return session.execute(rows).all(), rows.with_only_columns(_GROUPS.c.id)


def invoice(*, session: Executor, policy: PolicyLike, tenant: str, start: datetime,
            end: datetime, node: str | None = None) -> Invoice:
    """The invoice of ``tenant`` for ``[start, end)``, summed across nodes (rules above);
    ``node``: that node's share of it (:mod:`.nodes`: the node bills add up to it)."""
    _check_period(start, end)
    only = None if node is None else node_id_named(session=session, name=node)
    plan = plan_for(policy, tenant, known_tenants=known_tenants(session))
    got = invoice_quantities(session=session, plan=plan, tenant=tenant, start=start, end=end)
    return priced(session=session, plan=plan, tenant=tenant, start=start, end=end,
                  quantities=got, only=only)


def invoice_quantities(*, session: Executor, plan: PricePlanLike, tenant: str,
                       start: datetime, end: datetime) -> Quantities:
    """What :func:`invoice` prices: ``tenant``'s quantities in ``[start, end)`` on every
    node, per group path, resource and price version of ``plan``."""
    basis = plan.memory_basis
    segments = version_segments(plan, start, end)
    res = ({} if basis == "usage" else reservations(session=session, tenant=tenant, until=end))
    cuts = sorted({t for hist in res.values() for t, _ in hist if start < t < end})
    pieces: list[tuple[datetime, datetime, int, PriceVersionLike]] = []
    for a, b, idx, version in segments:
        points = [a, *(c for c in cuts if a < c < b), b]
        pieces.extend((p, q, idx, version) for p, q in itertools.pairwise(points))

    out = Quantities()
    groups, tenant_groups = billed_rows(session, tenant)
    path_of = {gid: path for gid, path, _ in groups}
    reserved_at = reservations_at(res, groups, pieces)
    reserved_ints = {k: r for k, r in reserved_at.items() if r}  # known and > 0
    totals = sum_pieces(session=session, pieces=[(a, b) for a, b, _, _ in pieces],
                        group_ids=tenant_groups,
                        reserved=reserved_ints if basis == "max" else None)
    for (node_id, gid, i), t in totals.items():
        path = path_of[gid]
        a, b, idx, _version = pieces[i]
        mem_bus, _usage_bus = memory_billed(t, basis, reserved_at.get((node_id, gid, i), 0))
        for resource, name in _QUANTITY.items():
            value: int = mem_bus if resource == "memory" else getattr(t, name)
            if resource == STORAGE:
                value *= _BUS
            out.add((path, resource, idx), node_id, value, a, b)
    for (node_id, gid, i), got in generic.value_pieces(
            session=session, pieces=[(a, b) for a, b, _, _ in pieces],
            group_ids=tenant_groups).items():
        a, b, idx, _version = pieces[i]
        for name, value in got.items():
            out.add((path_of[gid], generic.QUANTITIES[name].resource, idx), node_id, value,
                    a, b)
    return out


def priced(*, session: Executor, plan: PricePlanLike, tenant: str, start: datetime,
           end: datetime, quantities: Quantities, only: int | None) -> Invoice:
    """The invoice of ``quantities`` (:func:`invoice_quantities`) for ``[start, end)``;
    ``only``: that node id's share."""
    qty, span = quantities.qty, quantities.span
    lines: list[InvoiceLine] = []
    order = {resource: i for i, resource in enumerate(RESOURCES)}
    node_order = node_names(session) if only is not None else {}
    cur = plan.currency
    for key in sorted(qty, key=lambda k: (k[0], order[k[1]], k[2])):
        path, resource, idx = key
        before, units = share(qty[key], only, node_order)
        if units == 0:
            continue
        unit, divisor, attr = RESOURCES[resource]
        price = generic.unit_price(plan.versions[idx], attr)
        charge_start, charge_end = merged_span(span[key], only)
        quantity = _places(before + units, divisor)
        amount = _amount(before + units, divisor, price, cur)
        if before:   # the nodes before this one in a node's share (0: nothing to take)
            quantity -= _places(before, divisor)
            amount -= _amount(before, divisor, price, cur)
        lines.append(InvoiceLine(
            group=_group_label(path), path=path, resource=resource, quantity=quantity,
            unit=unit, unit_price=price, amount=amount, charge_start=charge_start,
            charge_end=charge_end, price_version=idx))
    total = sum((line.amount for line in lines), Decimal(0))
    total = total.quantize(Decimal(1).scaleb(-minor_exponent(plan.currency)))
    return Invoice(tenant=tenant, plan=plan.name, currency=plan.currency,
                   memory_basis=plan.memory_basis, start=start, end=end, lines=tuple(lines),
                   total=total)


@dataclasses.dataclass(frozen=True, slots=True)
class UsageRow:
    key: str
    tenant: str
    cpu_core_hours: Decimal
    memory_gib_hours: Decimal
    io_read_gib: Decimal
    io_write_gib: Decimal
    oom_kills: int
    #: the writable layers of containers launched from images (issue #19)
    storage_gib_hours: Decimal
    #: the registered controllers' quantities in their units, by usage column
    #: (governor.billing.generic.USAGE_COLUMNS: ``hugetlb_gib_hours``); 0 when none
    values: Mapping[str, Decimal] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class UsageReport:
    by: str
    start: datetime
    end: datetime
    rows: tuple[UsageRow, ...]


def _usage_row(key: str, tenant: str, t: Totals,
               values: Mapping[str, int] | None = None) -> UsageRow:
    def q(value: int, divisor: int) -> Decimal:
        return (Decimal(value) / Decimal(divisor)).quantize(QUANTITY_PLACES)

    got = values or {}

    return UsageRow(key=key, tenant=tenant, cpu_core_hours=q(t.cpu_usec, HOUR_US),
                    memory_gib_hours=q(t.memory_byte_seconds, GIB * 3600),
                    io_read_gib=q(t.io_rbytes, GIB), io_write_gib=q(t.io_wbytes, GIB),
                    oom_kills=t.oom_kills,
                    storage_gib_hours=q(t.storage_byte_seconds, GIB * 3600),
                    values={col: q(got.get(name, 0), generic.QUANTITIES[name].per_unit)
                            for name, col in generic.USAGE_COLUMNS.items()})


def usage_report(*, session: Executor, tenant: str | None = None, start: datetime,
                 end: datetime, by: By = "group", node: str | None = None) -> UsageReport:
    """Usage (no prices) over ``[start, end)`` per tenant and ``by`` (hour, day, group, node).

    Hours and days are UTC; when the period does not start or end on the hour, its first
    and last hour are read from the stored intervals in it (so a period ending now holds
    every interval stored so far), or their rollup's exact time share where the intervals
    were pruned (:mod:`.quantities`).
    ``node``: only that node's usage.
    """
    _check_period(start, end)
    where: list[ColumnElement[bool]] = [billed_groups()]
    if node is not None:
        where.append(_GROUPS.c.node_id == node_id_named(session=session, name=node))
    if tenant is not None:
        known = known_tenants(session)
        if tenant not in known:
            raise UnknownTenant(tenant, where="never metered in this database",
                                known=sorted(known))
        where.append(_TENANTS.c.name == tenant)
    keys: Sequence[KeyColumn]
    if by in ("hour", "day"):
        keys = [_TENANTS.c.name, _ROLLUPS.c.hour]
    elif by == "group":
        keys = [_TENANTS.c.name, _GROUPS.c.path]
    elif by == "node":
        keys = [_TENANTS.c.name, _ROLLUPS.c.node_id]
    else:
        raise InvalidPeriod(f"--by must be hour, day, group or node, not {by!r}")
    totals = sum_range(session=session, start=start, end=end, keys=keys, where=where)
    names: dict[int, str] = {}
    if by == "node":
        names = dict(session.execute(select(_NODES.c.id, _NODES.c.name)).tuples().all())
    def named(k: Any) -> Any:
        if by == "day":
            return date(k.year, k.month, k.day)
        return names.get(k, str(k)) if by == "node" else k

    merged: dict[tuple[str, Any], Totals] = {}
    for (tname, k), t in totals.items():
        merged.setdefault((tname, named(k)), Totals()).add(t)
    extra: dict[tuple[str, Any], dict[str, int]] = defaultdict(dict)
    for (tname, k), got in generic.value_range(session=session, start=start, end=end,
                                               where=where, by=by).items():
        merged.setdefault((tname, named(k)), Totals())
        acc = extra[(tname, named(k))]
        for name, v in got.items():
            acc[name] = acc.get(name, 0) + v
    rows = [_usage_row(k.isoformat() if isinstance(k, date | datetime) else str(k), tname, t,
                       extra.get((tname, k)))
            for (tname, k), t in sorted(merged.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))]
    return UsageReport(by=by, start=start, end=end, rows=tuple(rows))


def invoices(*, session: Executor, policy: PolicyLike, tenants: Sequence[str],
             start: datetime, end: datetime,
             progress: Callable[[str], None] | None = None,
             node: str | None = None) -> list[Invoice]:
    """:func:`invoice` for several tenants; ``progress`` is called after each one."""
    out = []
    for t in tenants:
        out.append(invoice(session=session, policy=policy, tenant=t, start=start, end=end,
                           node=node))
        if progress is not None:
            progress(t)
    return out
