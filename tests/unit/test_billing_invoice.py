"""Invoices from metered rollups: rounding, price versions, memory bases, nodes, errors."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner

from governor.billing.cli import bill_command, parse_period, run_bill, usage_command
from governor.billing.errors import InvalidPeriod, NoPricePlan, UnknownTenant
from governor.billing.focus import FOCUS_COLUMNS, render_focus
from governor.billing.formats import render_to_string
from governor.billing.report import invoice, usage_report
from governor.billing.sliced import sliced_invoice
from governor.metering.catchup import meter
from governor.policy.model import Limits, Policy, PricePlan, PriceVersion, Tenant
from governor.store.service import apply_retention, record_applied_policy, record_samples
from tests.helpers.db import db_url, engine, make_sample, session  # noqa: F401

T0 = datetime(2026, 11, 1, tzinfo=UTC)
T3 = T0 + timedelta(hours=3)
GIB = 1 << 30
CORE_HOUR = 3_600_000_000
D = Decimal


def _policy(*versions, basis="usage", currency="EUR", plan="std"):
    vs = versions or (PriceVersion(None, D("0.04"), D("0.005"), D("0.01"), D("0.02"), D("1")),)
    return Policy(tenants={"acme": Tenant(name="acme", plan=plan, limits=Limits(), groups={})},
                  plans={"std": PricePlan("std", currency, tuple(vs), basis)},
                  sources=("test",), digest="x")


def _meter(db, *, node="n1", group="web", hours=3, cores=1, mem=GIB, storage=None):
    ticks = [make_sample(node=node, group=group, wall=T0 + i * timedelta(minutes=10),
                         cpu=i * cores * CORE_HOUR // 6, mem=mem, rbytes=i * GIB // 6,
                         wbytes=i * GIB // 3, storage=storage)
             for i in range(hours * 6 + 1)]
    record_samples(session=db, node=node, samples=ticks)
    meter(session=db, node=node)
    db.commit()


def _line(inv, resource, group="web"):
    [line] = [x for x in inv.lines if x.resource == resource and x.group == group]
    return line


def test_plain_invoice(session):  # noqa: F811
    _meter(session)
    inv = invoice(session=session, policy=_policy(), tenant="acme", start=T0, end=T3)
    assert [(x.resource, x.quantity, x.unit) for x in inv.lines] == [
        ("cpu", D("3.000000000"), "core-hour"),
        ("memory", D("3.000000000"), "GiB-hour"),
        ("io_read", D("3.000000000"), "GiB"),
        ("io_write", D("6.000000000"), "GiB"),
    ]
    assert [x.amount for x in inv.lines] == [D("0.12"), D("0.02"), D("0.03"), D("0.12")]
    # memory: 3 GiB-h * 0.005 = 0.015 -> half-even to 0.02; total = sum of rounded lines
    assert inv.total == D("0.29") and inv.currency == "EUR"


def test_rounding_is_half_even_per_line(session):  # noqa: F811
    _meter(session, hours=1)
    policy = _policy(PriceVersion(None, D("0.025"), D("0.035"), D("0"), D("0"), D("0")))
    inv = invoice(session=session, policy=policy, tenant="acme", start=T0,
                  end=T0 + timedelta(hours=1))
    assert _line(inv, "cpu").amount == D("0.02")  # 0.025 -> 0.02 (half-even, not 0.03)
    assert _line(inv, "memory").amount == D("0.04")  # 0.035 -> 0.04
    assert inv.total == D("0.06")


def test_zero_decimal_currency(session):  # noqa: F811
    _meter(session)
    inv = invoice(session=session, policy=_policy(currency="JPY"), tenant="acme", start=T0,
                  end=T3)
    assert all(x.amount == x.amount.to_integral_value() for x in inv.lines)


def test_price_change_mid_hour_splits_lines_exactly(session):  # noqa: F811
    _meter(session)
    change = T0 + timedelta(hours=1, minutes=30)
    policy = _policy(PriceVersion(None, D("1"), D("0"), D("0"), D("0"), D("0")),
                     PriceVersion(change, D("2"), D("0"), D("0"), D("0"), D("0")))
    inv = invoice(session=session, policy=policy, tenant="acme", start=T0, end=T3)
    cpu = [x for x in inv.lines if x.resource == "cpu"]
    assert [(x.quantity, x.unit_price, x.amount) for x in cpu] == [
        (D("1.5"), D("1"), D("1.50")), (D("1.5"), D("2"), D("3.00"))]
    assert (cpu[0].charge_start, cpu[0].charge_end) == (T0, change)
    assert (cpu[1].charge_start, cpu[1].charge_end) == (change, T3)


def test_summed_across_nodes(session):  # noqa: F811
    _meter(session, node="n1")
    _meter(session, node="n2", cores=2)
    inv = invoice(session=session, policy=_policy(), tenant="acme", start=T0, end=T3)
    assert _line(inv, "cpu").quantity == D(9)


@pytest.mark.parametrize(("basis", "expected_gib_hours"), [
    ("usage", D(3)),        # 1 GiB used for 3 h
    ("reservation", D(5)),  # memory.low 1 GiB for 1 h, then memory.min 2 GiB for 2 h
    ("max", D(5)),          # per hour: max(1, 1) + max(1, 2) + max(1, 2)
])
def test_memory_basis(session, basis, expected_gib_hours):  # noqa: F811
    _meter(session)
    # hour 0: memory.low 1 GiB; from 01:00 memory.min 2 GiB (min wins over low)
    record_applied_policy(session=session, node="n1", applied_at=T0, policy_hash="a",
                          trigger="start", writes=[{"path": "acme/web", "file": "memory.low",
                                                    "value": str(GIB)}])
    record_applied_policy(session=session, node="n1", applied_at=T0 + timedelta(hours=1),
                          policy_hash="b", trigger="reload",
                          writes=[{"path": "acme/web", "file": "memory.min",
                                   "value": str(2 * GIB)}])
    session.commit()
    inv = invoice(session=session, policy=_policy(basis=basis), tenant="acme", start=T0,
                  end=T3)
    assert _line(inv, "memory").quantity == expected_gib_hours


def test_max_basis_takes_the_larger_per_hour(session):  # noqa: F811
    _meter(session, mem=2 * GIB)  # uses 2 GiB
    record_applied_policy(session=session, node="n1", applied_at=T0 + timedelta(hours=2),
                          policy_hash="a", trigger="reload",
                          writes=[{"path": "acme/web", "file": "memory.min",
                                   "value": str(3 * GIB)}])
    session.commit()
    inv = invoice(session=session, policy=_policy(basis="max"), tenant="acme", start=T0,
                  end=T3)
    assert _line(inv, "memory").quantity == D(2 + 2 + 3)


def test_period_without_data_is_an_explicit_empty_bill(session):  # noqa: F811
    _meter(session)
    inv = invoice(session=session, policy=_policy(), tenant="acme",
                  start=T0 + timedelta(days=5), end=T0 + timedelta(days=6))
    assert inv.lines == () and inv.total == D("0.00")
    assert "(no usage in this period)" in render_to_string([inv], "table")


def test_errors(session):  # noqa: F811
    _meter(session)
    with pytest.raises(UnknownTenant) as e:
        invoice(session=session, policy=_policy(), tenant="nobody", start=T0, end=T3)
    assert e.value.exit_code == 2
    with pytest.raises(InvalidPeriod, match="inverted"):
        invoice(session=session, policy=_policy(), tenant="acme", start=T3, end=T0)
    late = _policy(PriceVersion(T0 + timedelta(hours=1), D(1), D(1), D(1), D(1), D(1)))
    with pytest.raises(NoPricePlan) as e2:
        invoice(session=session, policy=late, tenant="acme", start=T0, end=T3)
    assert e2.value.exit_code == 1
    with pytest.raises(NoPricePlan, match="has no price plan"):
        invoice(session=session, policy=_policy(plan=None), tenant="acme", start=T0, end=T3)


def test_retention_never_changes_a_past_bill(session):  # noqa: F811
    _meter(session)
    policy = _policy(PriceVersion(None, D("0.0371"), D("0.0043"), D("0.011"), D("0.013"),
                                  D("0")))
    start, end = T0 + timedelta(minutes=25), T3 - timedelta(minutes=5)
    before = invoice(session=session, policy=policy, tenant="acme", start=start, end=end)
    apply_retention(session=session, before=T0 + timedelta(days=90))
    session.commit()
    after = invoice(session=session, policy=policy, tenant="acme", start=start, end=end)
    assert before == after and before.total > 0


def test_adjacent_periods_add_up_exactly(session):  # noqa: F811
    _meter(session)
    cut = T0 + timedelta(hours=1, minutes=17, seconds=3)
    rep = [usage_report(session=session, tenant="acme", start=a, end=b, by="group")
           for a, b in ((T0, cut), (cut, T3))]
    whole = usage_report(session=session, tenant="acme", start=T0, end=T3, by="group")
    assert rep[0].rows[0].cpu_core_hours + rep[1].rows[0].cpu_core_hours == \
        whole.rows[0].cpu_core_hours == D(3)


def test_usage_report_by_hour_day_node(session):  # noqa: F811
    _meter(session, node="n1")
    _meter(session, node="n2")
    by_hour = usage_report(session=session, start=T0, end=T3, by="hour")
    assert [r.cpu_core_hours for r in by_hour.rows] == [D(2)] * 3
    by_day = usage_report(session=session, start=T0, end=T3, by="day")
    assert [(r.key, r.cpu_core_hours) for r in by_day.rows] == [("2026-11-01", D(6))]
    by_node = usage_report(session=session, start=T0, end=T3, by="node")
    assert [r.key for r in by_node.rows] == ["n1", "n2"]


def test_focus_columns(session):  # noqa: F811
    _meter(session)
    inv = sliced_invoice(session=session, policy=_policy(), tenant="acme", start=T0, end=T3)
    out = io.StringIO()
    render_focus([inv], out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == FOCUS_COLUMNS
    cpu = rows[0]
    assert cpu["BilledCost"] == cpu["EffectiveCost"] == cpu["ListCost"] == "0.12"
    assert cpu["ConsumedQuantity"] == "3.000000000" and cpu["ConsumedUnit"] == "Core-Hours"
    assert cpu["ChargeCategory"] == "Usage" and cpu["BillingCurrency"] == "EUR"
    assert cpu["ChargePeriodStart"] == "2026-11-01T00:00:00Z"
    assert cpu["BillingPeriodEnd"] == "2026-11-01T03:00:00Z"
    assert json.loads(cpu["Tags"]) == {"governor/tenant": "acme", "governor/group": "web",
                                       "governor/node": "n1"}
    assert cpu["ResourceId"] == "governor://n1/acme/web"
    assert cpu["ServiceName"] == "governor compute"


def test_json_and_csv_formats(session):  # noqa: F811
    _meter(session)
    inv = invoice(session=session, policy=_policy(), tenant="acme", start=T0, end=T3)
    doc = json.loads(render_to_string([inv], "json"))
    assert doc[0]["total"] == "0.29" and len(doc[0]["lines"]) == 4
    rows = list(csv.DictReader(io.StringIO(render_to_string([inv], "csv"))))
    assert sum(D(r["amount"]) for r in rows) == D("0.29")


@pytest.fixture
def cli_policy(monkeypatch):
    """The commands load the policy of their configuration: here, :func:`_policy`."""
    monkeypatch.setattr("governor.policy.load_policy", lambda paths: _policy())
    monkeypatch.delenv("GOVERNOR_CONFIG", raising=False)


def test_cli_bill_and_usage(engine, db_url, session, cli_policy):  # noqa: F811
    _meter(session)
    runner = CliRunner()
    db = ["--database", db_url]
    res = runner.invoke(bill_command, [*db, "--tenant", "acme", "--from", "2026-11-01",
                                       "--to", "2026-11-01T03:00Z", "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert "acme,web,cpu,3.000000000,core-hour,0.04,0.12,EUR" in res.output
    res = runner.invoke(usage_command, [*db, "--period", "2026-11", "--by", "group",
                                        "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rows"][0]["cpu_core_hours"] == "3.000000000"


def test_cli_errors(engine, db_url, cli_policy):  # noqa: F811
    runner = CliRunner()
    db = ["--database", db_url]
    res = runner.invoke(bill_command, [*db, "--tenant", "nobody", "--period", "2026-11"])
    assert isinstance(res.exception, UnknownTenant)
    res = runner.invoke(bill_command, [*db, "--from", "2026-11-05", "--to", "2026-11-01"])
    assert isinstance(res.exception, InvalidPeriod)
    res = runner.invoke(usage_command, [*db, "--period", "2026-13"])
    assert isinstance(res.exception, InvalidPeriod)


def test_bill_refuses_an_unmigrated_database(tmp_path):
    from governor.store.errors import SchemaOutOfDate

    with pytest.raises(SchemaOutOfDate):
        run_bill(f"sqlite:///{tmp_path}/empty.db", _policy(), tenant="acme", start=T0, end=T3,
                 out=io.StringIO())


def test_parse_period():
    assert parse_period("2026-12", None, None) == (datetime(2026, 12, 1, tzinfo=UTC),
                                                   datetime(2027, 1, 1, tzinfo=UTC))
    with pytest.raises(InvalidPeriod, match="not both"):
        parse_period("2026-12", "2026-12-01", None)


@pytest.mark.parametrize(("basis", "expected_gib_hours"), [
    # memory.min 2 GiB from 01:30; usage 1 GiB throughout
    ("reservation", D("3")),  # 0 until 01:30, then 2 GiB for 1.5 h
    ("max", D("4.5")),        # 1 + 0.5 (01:00-01:30) + max(0.5, 1) + max(1, 2)
])
def test_reservation_change_inside_an_hour(session, basis, expected_gib_hours):  # noqa: F811
    _meter(session)
    record_applied_policy(session=session, node="n1",
                          applied_at=T0 + timedelta(hours=1, minutes=30), policy_hash="a",
                          trigger="reload", writes=[{"path": "acme/web", "file": "memory.min",
                                                     "value": str(2 * GIB)}])
    session.commit()
    inv = invoice(session=session, policy=_policy(basis=basis), tenant="acme", start=T0,
                  end=T3)
    assert _line(inv, "memory").quantity == expected_gib_hours


@pytest.mark.parametrize(("basis", "expected_gib_hours"), [
    ("usage", D(1 + 3) * 3),
    ("reservation", D(2) * 3),   # n1's reservation times the group's covered time on n1
    ("max", D(2 + 3) * 3),       # n1: max(1, 2) per hour; n2 has no reservation: usage
])
def test_one_group_with_rollups_of_two_nodes(session, basis, expected_gib_hours):  # noqa: F811
    """Metering never writes it, but a group whose rollups carry two nodes is summed per
    node: the reservation recorded on one node applies to that node's hours only."""
    from sqlalchemy import select

    from governor.metering.rollup import ROLLUP_QUANTITIES
    from governor.store.bulk import bulk_insert_ignore
    from governor.store.models import Group
    from governor.store.service import ensure_node

    _meter(session, node="n1")
    n2 = ensure_node(session=session, name="n2")
    gid = session.execute(select(Group.id).where(Group.path == "acme/web")).scalar_one()
    cols = ("node_id", "group_id", "hour", "covered_us", "intervals", *ROLLUP_QUANTITIES)
    q = dict.fromkeys(ROLLUP_QUANTITIES, 0) | {"memory_byte_seconds": 3 * GIB * 3600}
    rows = [(n2, gid, T0 + timedelta(hours=h), 3_600_000_000, 360,
             *(q[n] for n in ROLLUP_QUANTITIES)) for h in range(3)]
    bulk_insert_ignore(session, "rollups_hourly", cols, rows, ts_index=2)
    record_applied_policy(session=session, node="n1", applied_at=T0, policy_hash="a",
                          trigger="start", writes=[{"path": "acme/web", "file": "memory.min",
                                                    "value": str(2 * GIB)}])
    session.commit()
    inv = invoice(session=session, policy=_policy(basis=basis), tenant="acme", start=T0,
                  end=T3)
    assert _line(inv, "memory").quantity == expected_gib_hours


def test_integer_amount_is_the_fraction_rounding():
    import random
    from fractions import Fraction

    from governor.billing.report import _amount, round_money

    rnd = random.Random(5)
    prices = [D("0.04"), D("0.005"), D("0.5"), D("1"), D("0.0125"), D("3.333"), D("-0.01"),
              D("0")]
    divisors = [1, 2, 8, 1000, 1 << 30, CORE_HOUR, GIB * CORE_HOUR]
    cases = [(u, 200, D("1"), c) for u in range(-50, 50) for c in ("EUR", "JPY")]  # ties
    cases += [(rnd.choice([rnd.randrange(10**6), rnd.randrange(10**18), 25, 125,
                           rnd.randrange(-10**9, 10**9)]),
               rnd.choice(divisors), rnd.choice(prices), rnd.choice(["EUR", "JPY", "KWD"]))
              for _ in range(20_000)]
    for units, divisor, price, currency in cases:
        want = round_money(Fraction(units, divisor) * Fraction(price), currency)
        got = _amount(units, divisor, price, currency)
        assert (got, str(got)) == (want, str(want)), (units, divisor, price, currency)


# --- storage: the writable layers of containers launched from images (issue #19) ---

def _storage_policy(price, basis="usage"):
    return _policy(PriceVersion(None, D("0.04"), D("0.005"), D("0.01"), D("0.02"), D("1"),
                                storage_gib_hour=D(price)), basis=basis)


@pytest.mark.parametrize("basis", ["usage", "reservation", "max"])
def test_storage_line_is_exact_whatever_the_memory_basis(session, basis):  # noqa: F811
    """5 GiB of writable layers for 3 hours: 54,000 GiB-seconds = 15 GiB-hours, at
    0.001 a GiB-hour exactly 0.015, half-even to 0.02 (a float product lands either side
    of the tie)."""
    _meter(session, storage=5 * GIB)
    inv = invoice(session=session, policy=_storage_policy("0.001", basis), tenant="acme",
                  start=T0, end=T3)
    line = _line(inv, "storage")
    assert (line.quantity, line.unit, line.unit_price, line.amount) == (
        D("15.000000000"), "GiB-hour", D("0.001"), D("0.02"))
    # after memory (none under "reservation": no reservation was written), before io
    assert [x.resource for x in inv.lines] == [
        "cpu", *(["memory"] if basis != "reservation" else []), "storage", "io_read",
        "io_write"]
    assert inv.total == sum((x.amount for x in inv.lines), D(0))


def test_storage_amount_is_the_exact_fraction(session):  # noqa: F811
    """An odd byte count over a period cut inside an hour: the amount is the exact
    integer byte-seconds times the Decimal price, rounded once."""
    from fractions import Fraction

    from sqlalchemy import func, select

    from governor.store.models import HourlyRollup

    s = 7 * GIB + 123_457
    _meter(session, storage=s)
    stored = session.execute(select(func.sum(HourlyRollup.storage_byte_seconds))).scalar_one()
    assert stored == s * 3 * 3600
    end = T3 - timedelta(minutes=20)   # 2h40m: the last hour's exact share
    inv = invoice(session=session, policy=_storage_policy("0.0123"), tenant="acme",
                  start=T0, end=end)
    line = _line(inv, "storage")
    bs = s * 2 * 3600 + s * 3600 * 40 * 60 // 3600   # whole hours, then 40 of 60 minutes
    exact = Fraction(bs, GIB * 3600) * Fraction("0.0123")
    assert line.amount == D(round(exact * 100)) / 100 == D("0.23")   # 18.67 GiB-h
    assert line.quantity == (D(bs) / D(GIB * 3600)).quantize(D("1e-9"))


def test_no_storage_measured_is_no_storage_line(session):  # noqa: F811
    _meter(session)   # nothing measured: storage None throughout
    inv = invoice(session=session, policy=_storage_policy("5"), tenant="acme", start=T0,
                  end=T3)
    assert "storage" not in {x.resource for x in inv.lines}


def test_storage_in_every_bill_format(session):  # noqa: F811
    _meter(session, storage=5 * GIB)
    inv = invoice(session=session, policy=_storage_policy("0.001"), tenant="acme", start=T0,
                  end=T3)
    rows = list(csv.DictReader(io.StringIO(render_to_string([inv], "csv"))))
    [row] = [r for r in rows if r["resource"] == "storage"]
    assert (row["quantity"], row["unit"], row["unit_price"], row["amount"]) == (
        "15.000000000", "GiB-hour", "0.001", "0.02")
    doc = json.loads(render_to_string([inv], "json"))
    [line] = [x for x in doc[0]["lines"] if x["resource"] == "storage"]
    assert (line["quantity"], line["unit"], line["amount"]) == ("15.000000000", "GiB-hour",
                                                                "0.02")
    assert doc[0]["total"] == str(inv.total)
    out = io.StringIO()
    render_focus([sliced_invoice(session=session, policy=_storage_policy("0.001"),
                                 tenant="acme", start=T0, end=T3)], out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    [focus] = [r for r in rows if r["SkuPriceId"] == "std/storage/v0"]
    assert (focus["BilledCost"], focus["ListUnitPrice"], focus["ConsumedQuantity"],
            focus["ConsumedUnit"], focus["PricingUnit"]) == (
        "0.02", "0.001", "15.000000000", "GiB-Hours", "GiB-Hours")
    assert focus["ChargeDescription"] == "container writable layers of acme/web on n1 (plan std v0)"
    assert focus["ResourceId"] == "governor://n1/acme/web"
    assert focus["ServiceCategory"] == "Storage"
    table = render_to_string([inv], "table")
    [cells] = [[c.strip() for c in ln.split("│")[1:-1]] for ln in table.splitlines()
               if "storage" in ln]
    assert cells == ["web", "storage", "15", "GiB-hour", "0.001", "0.02"], table


def test_usage_report_has_storage_gib_hours_last(session):  # noqa: F811
    from governor.billing.formats import render_usage

    _meter(session, storage=5 * GIB)
    _meter(session, node="n2", group="db")   # its own node: metered in time order
    report = usage_report(session=session, start=T0, end=T3, by="group")
    assert {r.key: r.storage_gib_hours for r in report.rows} == {
        "acme/db": 0, "acme/web": D("15.000000000")}
    out = io.StringIO()
    render_usage(report, "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    # the columns before storage keep their places; the registered controllers' columns
    # (governor.billing.generic: hugetlb_gib_hours, issue #17) come after it
    assert list(rows[0])[:-1][-2:] == ["oom_kills", "storage_gib_hours"]
    assert list(rows[0])[-1] == "hugetlb_gib_hours"
    assert [D(r["storage_gib_hours"]) for r in rows] == [0, 15]
    assert rows[1]["storage_gib_hours"] == "15.000000000"
    out = io.StringIO()
    render_usage(report, "json", out)
    assert [D(r["storage_gib_hours"]) for r in json.loads(out.getvalue())["rows"]] == [0, 15]
    out = io.StringIO()
    render_usage(report, "table", out)
    assert "storage_gib_hours" in out.getvalue() and "15.000000000" in out.getvalue()
