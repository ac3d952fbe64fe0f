"""Validating price plans and their dated versions (part of
:mod:`governor.policy.loader`)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import cast

from governor.policy.context import (
    MEMORY_BASES,
    OPTIONAL_PRICES,
    PLAN_KEYS,
    PRICE_FIELDS,
    QUANTITY_PRICES,
    BadValue,
    Ctx,
    KeyPath,
    check_money,
    report_unknown,
)
from governor.policy.model import (
    MemoryBasis,
    PricePlan,
    PriceVersion,
)
from governor.policy.tenants import valid_name
from governor.policy.units import show


def _effective(value: object) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise BadValue(f"{value.isoformat()} has no UTC offset; write e.g. "
                       "2026-12-01T00:00:00Z")
        return value.astimezone(UTC)
    if isinstance(value, date):
        raise BadValue(f"{value.isoformat()} is a date; write a time with offset, e.g. "
                   f"{value.isoformat()}T00:00:00Z")
    raise BadValue(f"{show(value)} is not a TOML date-time with offset, e.g. "
               "2026-12-01T00:00:00Z (unquoted)")


def _version(when: datetime | None, prices: dict[str, Decimal]) -> PriceVersion:
    """A version of the prices: the plan's own fields, and the registered controllers'
    prices (QUANTITY_PRICES) in ``quantity_prices``."""
    return PriceVersion(effective=when, **{k: prices[k] for k in PRICE_FIELDS},
                        quantity_prices={k: prices[k] for k in QUANTITY_PRICES})


def parse_plan(ctx: Ctx, name: str, raw: object) -> PricePlan | None:
    base: KeyPath = ("plans", name)
    ok = valid_name(ctx, base, name, "plan")
    if not isinstance(raw, dict):
        ctx.add(base, raw, "a plan is a table: [plans.<name>]")
        return None
    for key, value in raw.items():
        if key not in PLAN_KEYS:
            report_unknown(ctx, base, key, value, PLAN_KEYS)
            ok = False
    currency = raw.get("currency")
    if currency is None:
        ctx.add(base, None, "currency is missing (an ISO 4217 code such as \"EUR\")")
        ok = False
    elif not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        ctx.add((*base, "currency"), currency,
                f"{show(currency)} is not an ISO 4217 code such as \"EUR\"")
        ok = False
    basis = raw.get("memory_basis", "usage")
    if basis not in MEMORY_BASES:
        ctx.add((*base, "memory_basis"), basis,
                f"{show(basis)} is not a memory basis (usage, reservation, max)")
        ok = False
    prices: dict[str, Decimal] = {}
    for key in (*PRICE_FIELDS, *QUANTITY_PRICES):
        if key not in raw:
            if key in OPTIONAL_PRICES or key in QUANTITY_PRICES:
                prices[key] = Decimal(0)
            else:
                ctx.add(base, None, f"{key} is missing (a decimal string like \"0.040\")")
                ok = False
            continue
        try:
            prices[key] = check_money(raw[key])
        except BadValue as exc:
            ctx.add((*base, key), raw[key], str(exc))
            ok = False
    later: list[tuple[datetime, KeyPath, dict[str, Decimal]]] = []
    raw_prices = raw.get("prices", [])
    if not isinstance(raw_prices, list):
        ctx.add((*base, "prices"), raw_prices,
                "prices is an array of tables: [[plans.<name>.prices]]")
        raw_prices = []
        ok = False
    for i, item in enumerate(raw_prices):
        ipath: KeyPath = (*base, "prices", i)
        if not isinstance(item, dict):
            ctx.add(ipath, item, "a price version is a table with effective and prices")
            ok = False
            continue
        override: dict[str, Decimal] = {}
        when: datetime | None = None
        for key, value in item.items():
            try:
                if key == "effective":
                    when = _effective(value)
                elif key in PRICE_FIELDS or key in QUANTITY_PRICES:
                    override[key] = check_money(value)
                else:
                    report_unknown(ctx, ipath, key, value,
                                   ("effective", *PRICE_FIELDS, *QUANTITY_PRICES))
                    ok = False
            except BadValue as exc:
                ctx.add((*ipath, key), value, str(exc))
                ok = False
        if "effective" not in item:
            ctx.add(ipath, None, "effective is missing (e.g. 2026-12-01T00:00:00Z)")
            ok = False
        if when is not None:
            if any(when == w for w, _, _ in later):
                ctx.add((*ipath, "effective"), item.get("effective"),
                        "another price version of this plan has the same effective time")
                ok = False
            later.append((when, ipath, override))
    if not ok:
        return None
    versions = [_version(None, prices)]
    current = dict(prices)
    for when, _, override in sorted(later, key=lambda t: t[0]):
        current.update(override)
        versions.append(_version(when, current))
    assert isinstance(currency, str)
    return PricePlan(name=name, currency=currency, versions=tuple(versions),
                     memory_basis=cast(MemoryBasis, basis))
