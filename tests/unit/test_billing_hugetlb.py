"""hugetlb in price plans, bills and usage (governor/billing/generic.py): the plan key
hugetlb_gib_hour (optional, Decimal, versioned, recorded), the bill's "hugetlb" lines in
GiB-hours from rollup_values in every format, governor usage's hugetlb_gib_hours."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from governor.billing.focus import render_focus
from governor.billing.formats import render_to_string, render_usage
from governor.billing.history import record_price_plans, with_recorded_prices
from governor.billing.report import invoice, usage_report
from governor.billing.sliced import sliced_invoice
from governor.metering.catchup import meter
from governor.policy import PolicyInvalid, parse_policy
from governor.policy.model import Limits, Policy, PricePlan, PriceVersion, Tenant
from governor.store.service import record_samples
from governor.store.tables import price_plans
from tests.helpers.db import db_url, engine, make_sample, session  # noqa: F401
from tests.unit.test_policy_validation import (
    DIGEST_BEFORE_STORAGE,
    PLANS,
    _resolver,
    group_doc,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
D = Decimal
GIB = 1 << 30
MB2 = 2 << 20


def _version(hugetlb: str | None = None, effective: datetime | None = None) -> PriceVersion:
    q = {} if hugetlb is None else {"hugetlb_gib_hour": D(hugetlb)}
    return PriceVersion(effective, D("0"), D("0"), D("0"), D("0"), D("0"),
                        quantity_prices=q)


def _policy(*versions: PriceVersion) -> Policy:
    return Policy(tenants={"acme": Tenant(name="acme", plan="std", limits=Limits(),
                                          groups={})},
                  plans={"std": PricePlan("std", "EUR", tuple(versions), "usage")},
                  sources=("test",), digest="x")


def _meter(db, *, hours: int = 3, used: int = 2 * GIB, start: datetime = T0) -> None:
    """Samples every 10 minutes with ``used`` bytes of huge pages (none in the first
    sample's first interval: it is the anchor)."""
    ticks = [dataclasses.replace(
        make_sample(wall=start + i * timedelta(minutes=10), mem=GIB),
        values={"hugetlb.2MB.current": used, "hugetlb.2MB.events_max": 0})
        for i in range(hours * 6 + 1)]
    record_samples(session=db, node="n1", samples=ticks)
    meter(session=db, node="n1")
    db.commit()


def test_plan_key_is_optional_versioned_and_checked() -> None:
    def versions(text: str) -> list[Decimal]:
        plan = parse_policy([("p.toml", text)], device_resolver=_resolver).plans["standard"]
        return [v.quantity_prices["hugetlb_gib_hour"] for v in plan.versions]

    assert versions(PLANS) == [D(0)]
    priced = PLANS + 'hugetlb_gib_hour = "0.012"\n'
    later = priced + "[[plans.standard.prices]]\neffective = 2026-12-01T00:00:00Z\n" \
        'hugetlb_gib_hour = "0.02"\n[[plans.standard.prices]]\n' \
        'effective = 2027-01-01T00:00:00Z\ncpu_core_hour = "1"\n'
    assert versions(later) == [D("0.012"), D("0.02"), D("0.02")]
    with pytest.raises(PolicyInvalid) as info:
        parse_policy([("p.toml", PLANS + 'hugetlb_gib_hour = "lots"\n')],
                     device_resolver=_resolver)
    assert "plans.standard.hugetlb_gib_hour" in str(info.value)


def test_digest_without_the_key_is_unchanged_and_with_it_differs() -> None:
    doc = group_doc('memory.max = "1G"')
    assert parse_policy([("p.toml", doc)], device_resolver=_resolver).digest == \
        DIGEST_BEFORE_STORAGE
    zero = doc.replace('io_write_gib = "0.02"\n', 'io_write_gib = "0.02"\nhugetlb_gib_hour = "0"\n')
    assert parse_policy([("p.toml", zero)], device_resolver=_resolver).digest == \
        DIGEST_BEFORE_STORAGE
    priced = zero.replace('hugetlb_gib_hour = "0"', 'hugetlb_gib_hour = "0.01"')
    assert parse_policy([("p.toml", priced)], device_resolver=_resolver).digest != \
        DIGEST_BEFORE_STORAGE


def test_the_bill_prices_hugetlb_per_gib_hour_in_every_format(session) -> None:  # noqa: F811
    _meter(session)
    inv = invoice(session=session, policy=_policy(_version("0.125")), tenant="acme",
                  start=T0, end=T0 + timedelta(hours=3))
    [line] = [x for x in inv.lines if x.resource == "hugetlb"]
    # 2 GiB for 3 hours: 6 GiB-hours at 0.125
    assert (line.quantity, line.unit, line.unit_price, line.amount) == (
        D("6.000000000"), "GiB-hour", D("0.125"), D("0.75"))
    assert inv.total == D("0.75")
    for fmt in ("csv", "json", "table"):
        assert "hugetlb" in render_to_string([inv], fmt), fmt
    [row] = [r for r in json.loads(render_to_string([inv], "json"))[0]["lines"]
             if r["resource"] == "hugetlb"]
    assert (row["resource"], row["quantity"], row["unit"], row["amount"]) == (
        "hugetlb", "6.000000000", "GiB-hour", "0.75")
    out = io.StringIO()
    render_focus([sliced_invoice(session=session, policy=_policy(_version("0.125")),
                                 tenant="acme", start=T0, end=T0 + timedelta(hours=3))], out)
    focus = list(csv.DictReader(io.StringIO(out.getvalue())))
    [row] = [r for r in focus if r["SkuPriceId"] == "std/hugetlb/v0"]
    assert row["PricingUnit"] == "GiB-Hours" and row["BilledCost"] == "0.75"


def test_a_plan_without_the_key_bills_it_at_zero(session) -> None:  # noqa: F811
    _meter(session, hours=1)
    inv = invoice(session=session, policy=_policy(_version()), tenant="acme", start=T0,
                  end=T0 + timedelta(hours=1))
    [line] = [x for x in inv.lines if x.resource == "hugetlb"]
    assert line.quantity == D("2.000000000") and line.amount == 0 and inv.total == 0


def test_price_versions_and_exact_shares_of_cut_hours(session) -> None:  # noqa: F811
    _meter(session)
    change = T0 + timedelta(hours=1, minutes=30)
    policy = _policy(_version("1"), _version("2", change))
    inv = invoice(session=session, policy=policy, tenant="acme", start=T0,
                  end=T0 + timedelta(hours=3))
    lines = [(x.quantity, x.unit_price, x.amount) for x in inv.lines if x.resource == "hugetlb"]
    assert lines == [(D("3.000000000"), D("1"), D("3.00")),
                     (D("3.000000000"), D("2"), D("6.00"))]
    # adjacent periods cut inside an hour neither lose nor double a unit
    cut = T0 + timedelta(minutes=97, seconds=13)
    parts = [usage_report(session=session, start=a, end=b, by="group").rows[0]
             .values["hugetlb_gib_hours"]
             for a, b in ((T0, cut), (cut, T0 + timedelta(hours=3)))]
    whole = usage_report(session=session, start=T0, end=T0 + timedelta(hours=3),
                         by="group").rows[0].values["hugetlb_gib_hours"]
    assert whole == D("6.000000000")
    assert abs(sum(parts) - whole) <= D("2e-9")


@pytest.mark.parametrize("by", ["group", "hour", "day", "node"])
def test_usage_has_a_hugetlb_gib_hours_column(session, by: str) -> None:  # noqa: F811
    _meter(session, hours=2, used=MB2 * 512)
    report = usage_report(session=session, start=T0, end=T0 + timedelta(hours=2), by=by)
    assert sum(r.values["hugetlb_gib_hours"] for r in report.rows) == D("2.000000000")
    out = io.StringIO()
    render_usage(report, "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0])[-1] == "hugetlb_gib_hours"
    out = io.StringIO()
    render_usage(report, "json", out)
    assert "hugetlb_gib_hours" in json.loads(out.getvalue())["rows"][0]
    out = io.StringIO()
    render_usage(report, "table", out)
    assert "hugetlb_gib_hours" in out.getvalue()


def test_recorded_prices_are_kept_and_filled_in(session) -> None:  # noqa: F811
    now = T0 + timedelta(days=10)
    assert record_price_plans(session=session, plans=_policy(_version("0.5")).plans,
                              now=now) == []
    assert session.execute(select(price_plans.c.quantity_prices)).scalar_one() == {
        "hugetlb_gib_hour": "0.5"}
    # the policy retypes the price of the version in force: refused, the bill keeps 0.5
    edited = _policy(_version("0.9"))
    [conflict] = record_price_plans(session=session, plans=edited.plans, now=now)
    assert conflict.field == "hugetlb_gib_hour"
    _meter(session, hours=1)
    inv = invoice(session=session, policy=with_recorded_prices(edited, session),
                  tenant="acme", start=T0, end=T0 + timedelta(hours=1))
    assert [x.unit_price for x in inv.lines if x.resource == "hugetlb"] == [D("0.5")]
    # a version recorded before governor priced hugetlb (migration 0003: NULL): the
    # policy's price, and the next recording fills it in without a conflict
    session.execute(price_plans.update().values(quantity_prices=None))
    inv = invoice(session=session, policy=with_recorded_prices(edited, session),
                  tenant="acme", start=T0, end=T0 + timedelta(hours=1))
    assert [x.unit_price for x in inv.lines if x.resource == "hugetlb"] == [D("0.9")]
    assert record_price_plans(session=session, plans=edited.plans, now=now) == []
    assert session.execute(select(price_plans.c.quantity_prices)).scalar_one() == {
        "hugetlb_gib_hour": "0.9"}
