"""``governor bill --format focus [--by hour|day|month]`` (issue #18): FinOps FOCUS 1.0 rows
that focus-validator accepts, one per group, resource, price version, node and slice, whose
costs add up to the invoice exactly (governor/billing/focus.py, report.sliced_invoice)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import itertools
import json
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from governor.billing.cli import bill_command
from governor.billing.errors import InvalidPeriod
from governor.billing.focus import (
    FOCUS_COLUMNS,
    FOCUS_VALIDATOR,
    FOCUS_VERSION,
    LEGACY_COLUMNS,
    SERVICE_CATEGORIES,
    SERVICES,
    focus_unit,
    render_focus,
)
from governor.billing.report import RESOURCES, invoice
from governor.billing.sliced import charge_slices, sliced_invoice
from governor.metering.catchup import meter
from governor.policy.model import Limits, Policy, PricePlan, PriceVersion, Tenant
from governor.store.service import record_applied_policy, record_samples
from tests.helpers.db import db_url, engine, make_sample, session  # noqa: F401

D = Decimal
GIB = 1 << 30
#: a window across a month's end, cut inside hours at both edges
START = datetime(2026, 11, 30, 20, 17, 13, tzinfo=UTC)
END = datetime(2026, 12, 1, 5, 43, 50, tzinfo=UTC)
#: a price change inside an hour
CHANGE = datetime(2026, 11, 30, 23, 20, tzinfo=UTC)
H = timedelta(hours=1)


def _policy(basis: str = "usage", currency: str = "EUR") -> Policy:
    if currency == "JPY":  # whole prices, whole amounts
        whole = [PriceVersion(e, D("5"), D("1"), D("2"), D("3"), D("100"),
                              storage_gib_hour=D("1"),
                              quantity_prices={"hugetlb_gib_hour": D("2")})
                 for e in (None, CHANGE)]
        return Policy(tenants={"acme": Tenant(name="acme", plan="std", limits=Limits(),
                                              groups={})},
                      plans={"std": PricePlan("std", currency, tuple(whole), basis)},
                      sources=("test",), digest="x")
    v0 = PriceVersion(None, D("0.0437"), D("0.00513"), D("0.0119"), D("0.0231"), D("0.5"),
                      storage_gib_hour=D("0.00071"),
                      quantity_prices={"hugetlb_gib_hour": D("0.0123")})
    v1 = PriceVersion(CHANGE, D("0.0511"), D("0.00377"), D("0.0097"), D("0.0313"), D("0.75"),
                      storage_gib_hour=D("0.00093"),
                      quantity_prices={"hugetlb_gib_hour": D("0.0171")})
    return Policy(tenants={"acme": Tenant(name="acme", plan="std", limits=Limits(),
                                          groups={})},
                  plans={"std": PricePlan("std", currency, (v0, v1), basis)},
                  sources=("test",), digest="x")


def _fleet(db) -> None:
    """Two nodes with groups web and db (and the tenant's own cgroup, whose rows a bill does
    not count beside its groups'), a third with the tenant's own cgroup only (billed: the
    leaf its processes run in), irregular counters every
    7 minutes from before the window to after it, huge pages on web, OOM kills on db, and
    reservations that change inside hours."""
    rng = random.Random(18)
    t0 = START - timedelta(hours=1, minutes=3)
    for node in ("n1", "n2", "n3"):
        ticks = []
        for gi, group in enumerate(("web", "db", None) if node != "n3" else (None,)):
            cpu = rb = wb = kills = 0
            for i in range(100):
                cpu += rng.randrange(0, 900_000_000)
                rb += rng.randrange(0, GIB // 3)
                wb += rng.randrange(0, GIB // 5)
                kills += rng.random() < 0.05 and group == "db"
                s = make_sample(node=node, group=group, cgroup_id=100 + gi,
                                wall=t0 + i * timedelta(minutes=7), cpu=cpu,
                                mem=rng.randrange(GIB // 4, 3 * GIB), rbytes=rb, wbytes=wb,
                                oom_kill=kills, storage=rng.randrange(0, 5 * GIB))
                if group == "web":
                    s = dataclasses.replace(s, values={
                        "hugetlb.2MB.current": rng.randrange(0, 512) << 21,
                        "hugetlb.2MB.events_max": 0})
                ticks.append(s)
        record_samples(session=db, node=node, samples=ticks)
        meter(session=db, node=node)
    record_applied_policy(session=db, node="n1", applied_at=START - H, policy_hash="a",
                          trigger="start", writes=[
                              {"path": "acme/web", "file": "memory.min", "value": str(GIB)},
                              {"path": "acme/db", "file": "memory.low",
                               "value": str(2 * GIB)}])
    record_applied_policy(session=db, node="n1", applied_at=START + timedelta(minutes=211),
                          policy_hash="b", trigger="reload", writes=[
                              {"path": "acme/web", "file": "memory.min",
                               "value": str(3 * GIB)}])
    record_applied_policy(session=db, node="n2", applied_at=START + timedelta(minutes=95),
                          policy_hash="c", trigger="reload", writes=[
                              {"path": "acme/db", "file": "memory.min", "value": "max"}])
    db.commit()


def test_slices_are_utc_hours_days_and_months_clipped_to_the_window():
    assert charge_slices(START, END, "month") == [
        (START, datetime(2026, 12, 1, tzinfo=UTC)), (datetime(2026, 12, 1, tzinfo=UTC), END)]
    days = charge_slices(START, END, "day")
    assert days == charge_slices(START, END, "month")
    hours = charge_slices(START, END, "hour")
    assert hours[0] == (START, datetime(2026, 11, 30, 21, tzinfo=UTC))
    assert hours[-1] == (datetime(2026, 12, 1, 5, tzinfo=UTC), END)
    assert len(hours) == 10
    assert all(a < b and b - a <= H for a, b in hours)
    assert all(p[1] == q[0] for p, q in itertools.pairwise(hours))
    year = charge_slices(datetime(2026, 1, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC),
                         "month")
    assert [a.month for a, _ in year] == list(range(1, 13))
    with pytest.raises(InvalidPeriod, match="hour, day or month"):
        charge_slices(START, END, "week")  # type: ignore[arg-type]


@pytest.mark.parametrize("basis", ["usage", "reservation", "max"])
@pytest.mark.parametrize("by", ["hour", "day", "month"])
def test_the_rows_add_up_to_the_invoice_exactly(session, basis, by):  # noqa: F811
    _fleet(session)
    policy = _policy(basis)
    inv = invoice(session=session, policy=policy, tenant="acme", start=START, end=END)
    sliced = sliced_invoice(session=session, policy=policy, tenant="acme", start=START,
                            end=END, by=by)
    assert inv.total > 0 and sliced.total == inv.total
    assert sum((c.amount for c in sliced.charges), D(0)) == inv.total
    slices = charge_slices(START, END, by)
    keys = set()
    for line in inv.lines:
        key = (line.path, line.resource, line.price_version)
        keys.add(key)
        rows = [c for c in sliced.charges
                if (c.path, c.resource, c.price_version) == key]
        # each line's amount and quantity, shared out to the unit
        assert sum((c.amount for c in rows), D(0)) == line.amount, key
        assert sum((c.quantity for c in rows), D(0)) == line.quantity, key
        assert {c.unit_price for c in rows} == {line.unit_price}
        for c in rows:
            # within its slice, within the version's part of the window
            assert any(a <= c.charge_start < c.charge_end <= b for a, b in slices), c
            assert line.charge_start <= c.charge_start < c.charge_end <= line.charge_end
            # within one minor unit of its exact share (and the quantity's rounding)
            assert c.amount >= 0 and c.quantity >= 0
            assert abs(c.amount - c.quantity * c.unit_price) <= (
                D("0.01") + 2 * c.unit_price * D("1e-9")), c
        if by == "month":
            assert {c.node for c in rows} <= {"n1", "n2", "n3"}
    assert {(c.path, c.resource, c.price_version) for c in sliced.charges} == keys
    # the CSV too
    out = io.StringIO()
    render_focus([sliced], out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == len(sliced.charges)
    for col in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost"):
        assert sum(D(r[col]) for r in rows) == inv.total, col


def test_hourly_rows_are_one_hour_and_one_node_each(session):  # noqa: F811
    _fleet(session)
    sliced = sliced_invoice(session=session, policy=_policy(), tenant="acme", start=START,
                            end=END, by="hour")
    seen = set()
    for c in sliced.charges:
        assert c.charge_end - c.charge_start <= H
        hour = c.charge_start.replace(minute=0, second=0)
        assert c.charge_end <= hour + H
        key = (c.charge_start, c.node, c.path, c.resource, c.price_version)
        assert key not in seen
        seen.add(key)
    # the price change at 23:20 cuts its hour in two rows per node, group and resource
    cut = [c for c in sliced.charges if c.resource == "cpu" and c.path == "acme/web"
           and c.node == "n1" and c.charge_start.hour == 23]
    assert [(c.charge_start, c.charge_end, c.price_version) for c in cut] == [
        (datetime(2026, 11, 30, 23, tzinfo=UTC), CHANGE, 0),
        (CHANGE, datetime(2026, 12, 1, tzinfo=UTC), 1)]


def test_consumed_is_the_usage_and_priced_the_basis(session):  # noqa: F811
    _fleet(session)
    usage = sliced_invoice(session=session, policy=_policy("usage"), tenant="acme",
                           start=START, end=END)
    reserved = sliced_invoice(session=session, policy=_policy("reservation"), tenant="acme",
                              start=START, end=END)

    def mem(inv, attr):
        return {(c.node, c.path, c.price_version): getattr(c, attr) for c in inv.charges
                if c.resource == "memory"}

    assert all(c.consumed == c.quantity for c in usage.charges)
    # memory billed by reservation: the usage integral is still what was consumed
    got = mem(reserved, "consumed")
    assert got == {k: v for k, v in mem(usage, "consumed").items() if k in got}
    assert mem(reserved, "quantity") != got


def test_focus_columns_units_and_semantics(session):  # noqa: F811
    _fleet(session)
    sliced = sliced_invoice(session=session, policy=_policy("max"), tenant="acme",
                            start=START, end=END, by="day")
    out = io.StringIO()
    render_focus([sliced], out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == FOCUS_COLUMNS and len(FOCUS_COLUMNS) == 43
    [cpu] = [r for r in rows if r["SkuPriceId"] == "std/cpu/v0" and r["ResourceId"]
             == "governor://n1/acme/web"]
    assert cpu["PricingUnit"] == cpu["ConsumedUnit"] == "Core-Hours"
    assert cpu["BilledCost"] == cpu["EffectiveCost"] == cpu["ListCost"] == cpu["ContractedCost"]
    assert cpu["ListUnitPrice"] == cpu["ContractedUnitPrice"] == "0.0437"
    assert (cpu["ChargeCategory"], cpu["ChargeFrequency"], cpu["ChargeClass"],
            cpu["PricingCategory"]) == ("Usage", "Usage-Based", "", "Standard")
    assert (cpu["ChargePeriodStart"], cpu["ChargePeriodEnd"]) == (
        "2026-11-30T20:17:13Z", "2026-11-30T23:20:00Z")
    assert (cpu["BillingPeriodStart"], cpu["BillingPeriodEnd"]) == (
        "2026-11-30T20:17:13Z", "2026-12-01T05:43:50Z")
    assert (cpu["BillingAccountId"], cpu["BillingAccountName"], cpu["SubAccountId"],
            cpu["SubAccountName"]) == ("acme", "acme", "acme/web", "web")
    assert (cpu["ResourceName"], cpu["ResourceType"], cpu["SkuId"]) == (
        "acme/web on n1", "cgroup", "std/cpu")
    assert (cpu["ServiceCategory"], cpu["ServiceName"]) == ("Compute", "governor compute")
    assert (cpu["ProviderName"], cpu["PublisherName"], cpu["InvoiceIssuerName"]) == (
        "governor",) * 3
    assert cpu["RegionId"] == cpu["RegionName"] == cpu["AvailabilityZone"] == ""
    assert json.loads(cpu["Tags"]) == {"governor/tenant": "acme", "governor/group": "web",
                                       "governor/node": "n1"}
    assert cpu["ChargeDescription"] == "CPU time of acme/web on n1 (plan std v0)"
    units = {r["SkuId"]: r["PricingUnit"] for r in rows}
    assert units == {"std/cpu": "Core-Hours", "std/memory": "GiB-Hours",
                     "std/storage": "GiB-Hours", "std/hugetlb": "GiB-Hours",
                     "std/io_read": "GiB", "std/io_write": "GiB", "std/oom_kill": "Kills"}
    assert {r["ServiceCategory"] for r in rows if r["SkuId"] == "std/io_read"} == {"Storage"}
    # the tenant's own cgroup is no sub account; billed on n3 only (no group there)
    own = [r for r in rows if r["ResourceId"] == "governor://n3/acme"]
    assert own and all(r["SubAccountId"] == r["SubAccountName"] == "" for r in own)
    assert json.loads(own[0]["Tags"]) == {"governor/tenant": "acme", "governor/node": "n3"}
    assert not [r for r in rows if r["ResourceId"] in ("governor://n1/acme",
                                                        "governor://n2/acme")]
    # numbers never in E notation (1E-7 is Decimal's str of 0.0000001)
    assert not any("E" in r[c] for r in rows for c in ("PricingQuantity", "ConsumedQuantity"))


def test_every_resource_has_a_focus_unit_and_category():
    for resource, (unit, _, _) in RESOURCES.items():
        assert resource in SERVICES, resource
        assert SERVICES[resource][0] in SERVICE_CATEGORIES
        assert focus_unit(unit) in {"Core-Hours", "GiB-Hours", "GiB", "Kills"}, unit
    assert focus_unit("MB-second") == "MB-Seconds"
    assert focus_unit("request") == "Requests"


# -- focus-validator --------------------------------------------------------------------

#: the column IDs FOCUS 1.0 renamed (specification/columns/provider.md: "Column ID:
#: ProviderName", ...) that focus-validator 1.0.0's rules for version 1.0 still name by
#: their earlier IDs: its "Required" checks of these four cannot pass on a FOCUS 1.0 file
STALE_IDS = {"Provider": "ProviderName", "Publisher": "PublisherName",
             "InvoiceIssuer": "InvoiceIssuerName", "ResourceID": "ResourceId"}
#: and its SkuPriceId_Nullable query reads ChargeType, FOCUS 0.5's column that 1.0-preview
#: replaced by ChargeCategory (specification/columns/skupriceid.md of 1.0: "MUST NOT be
#: null when ... ChargeCategory is "Usage" or "Purchase""): on a FOCUS 1.0 file it fails
#: for want of the column
STALE_QUERY = ("SkuPriceId_Nullable.yaml", "WHEN ChargeType IN", "WHEN ChargeCategory IN")
STALE_CHECKS = {*(f"{old}_Required" for old in STALE_IDS), "SkuPriceId_Nullable"}


def _validator_site() -> Path:
    spec = importlib.util.find_spec("focus_validator")
    assert spec is not None and spec.origin is not None, (
        "focus-validator is a test dependency (pyproject.toml [dev]): pip install -e '.[dev]'")
    return Path(spec.origin).parent.parent


def _validate(data: Path, tmp: Path, rules: Path | None = None) -> tuple[int, dict[str, str]]:
    """Run focus-validator (its command line) on ``data`` for FOCUS 1.0: (checks run,
    {check: failure or error message}).  Run from its site-packages directory: it reads its
    currency list at a path relative to the working directory."""
    report = tmp / "validation.xml"
    cmd = [sys.executable, "-m", "focus_validator.main", "--data-file", str(data),
           "--validate-version", FOCUS_VERSION, "--output-type", "unittest",
           "--output-destination", str(report)]
    if rules is not None:
        cmd += ["--rule-set-path", str(rules)]
    done = subprocess.run(cmd, cwd=_validator_site(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    root = ET.parse(report).getroot()
    bad = {}
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                bad[case.get("name", "").split(" :: ")[0]] = child.get("message", "")
    assert int(root.get("errors", "0")) == 0, bad
    return int(root.get("tests", "0")), bad


def _fixed_rules(tmp: Path) -> Path:
    """focus-validator's own FOCUS 1.0 rules with the four stale column IDs (STALE_IDS) and
    the stale column of one query (STALE_QUERY) replaced by FOCUS 1.0's; every other rule
    as shipped."""
    src = _validator_site() / "focus_validator" / "rules" / "version_sets" / FOCUS_VERSION
    dst = tmp / "rules" / FOCUS_VERSION
    dst.mkdir(parents=True)
    renamed = set()
    for f in src.glob("*.yaml"):
        text = f.read_text()
        for old, new in STALE_IDS.items():
            if f"column_id: {old}\n" in text + "\n":
                text = (text + "\n").replace(f"column_id: {old}\n", f"column_id: {new}\n")
                renamed.add(old)
        if f.name == STALE_QUERY[0]:
            assert STALE_QUERY[1] in text
            text = text.replace(STALE_QUERY[1], STALE_QUERY[2])
            renamed.add(f.name)
        (dst / f.name).write_text(text)
    assert renamed == {*STALE_IDS, STALE_QUERY[0]}
    return dst.parent


@pytest.mark.parametrize(("by", "currency"), [("hour", "EUR"), ("month", "EUR"),
                                               ("day", "JPY")])
def test_focus_validator_accepts_the_output(session, tmp_path, by, currency):  # noqa: F811
    from importlib.metadata import version

    assert version("focus-validator") == FOCUS_VALIDATOR
    _fleet(session)
    sliced = sliced_invoice(session=session, policy=_policy("max", currency), tenant="acme",
                            start=START, end=END, by=by)
    data = tmp_path / "focus.csv"
    with data.open("w", newline="") as f:
        render_focus([sliced], f)
    # focus-validator 1.0.0 as shipped: everything passes but its five checks of columns
    # under their pre-1.0 IDs (the file has them under their FOCUS 1.0 IDs)
    n, bad = _validate(data, tmp_path)
    assert n == len(list((_validator_site() / "focus_validator" / "rules" / "version_sets"
                          / FOCUS_VERSION).glob("*.yaml")))
    assert bad.keys() == STALE_CHECKS, bad
    # with those columns as FOCUS 1.0 names them: zero failures, zero errors
    n_fixed, bad = _validate(data, tmp_path, _fixed_rules(tmp_path))
    assert n_fixed == n and bad == {}
    # and the validator as released, on the file with the legacy columns too (governor
    # bill --format focus --legacy-columns): every check passes, zero failures, zero errors
    legacy = tmp_path / "focus-legacy.csv"
    with legacy.open("w", newline="") as f:
        render_focus([sliced], f, legacy=True)
    n_legacy, bad = _validate(legacy, tmp_path)
    assert n_legacy == n and bad == {}
    rows = list(csv.DictReader(legacy.open()))
    assert list(rows[0])[:len(FOCUS_COLUMNS)] == list(FOCUS_COLUMNS)
    assert all(r[old] == r[new] for r in rows for old, new in LEGACY_COLUMNS.items())


def test_cli_bill_focus_by_day(engine, db_url, session, monkeypatch):  # noqa: F811
    monkeypatch.setattr("governor.policy.load_policy", lambda paths: _policy())
    monkeypatch.delenv("GOVERNOR_CONFIG", raising=False)
    _fleet(session)
    runner = CliRunner()
    db = ["--database", db_url, "--tenant", "acme", "--from", START.isoformat(),
          "--to", END.isoformat()]
    res = runner.invoke(bill_command, [*db, "--format", "focus", "--by", "day"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert "ChargePeriodStart" in rows[0], res.output[:300]
    assert {r["ChargePeriodStart"][:10] for r in rows} == {"2026-11-30", "2026-12-01"}
    inv = invoice(session=session, policy=_policy(), tenant="acme", start=START, end=END)
    assert sum(D(r["BilledCost"]) for r in rows) == inv.total
    # month is the default
    res = runner.invoke(bill_command, [*db, "--format", "focus"])
    assert res.exit_code == 0, res.output
    assert sum(D(r["BilledCost"]) for r in csv.DictReader(io.StringIO(res.stdout))) == inv.total
    # --legacy-columns: the five columns after the 43, for focus only
    res = runner.invoke(bill_command, [*db, "--format", "focus", "--legacy-columns"])
    assert res.exit_code == 0, res.output
    header = res.stdout.splitlines()[0].split(",")
    assert header == [*FOCUS_COLUMNS, *LEGACY_COLUMNS]
    res = runner.invoke(bill_command, [*db, "--format", "csv", "--legacy-columns"])
    assert res.exit_code == 2 and "--format focus only" in res.output
    # --by is for focus only
    res = runner.invoke(bill_command, [*db, "--format", "csv", "--by", "hour"])
    assert isinstance(res.exception, InvalidPeriod)
    assert "--by hour slices the rows of --format focus only" in str(res.exception)
    res = runner.invoke(bill_command, [*db, "--format", "focus", "--by", "week"])
    assert res.exit_code == 2 and "'week' is not one of 'hour', 'day', 'month'" in res.output
