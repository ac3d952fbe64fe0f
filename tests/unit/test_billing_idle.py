"""Node costs shared by usage and idle capacity (governor/billing/idle.py, ``governor bill
--node-costs``), on SQLite and PostgreSQL: two tenants at 25% and 50% in both idle modes,
a node without cost, usage above capacity, hours nobody used, the exact sums on random
histories, the formats and FOCUS (focus-validator)."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from click.testing import CliRunner
from sqlalchemy import insert

from governor.billing.cli import bill_command, run_bill
from governor.billing.focus import FOCUS_COLUMNS, render_focus
from governor.billing.idle import (
    IDLE,
    UNITS,
    NodeShape,
    NoNodeCosts,
    allocate_hour,
    billed_hours,
    cpu_part,
    largest_remainder,
    node_costs,
    node_shape,
)
from governor.billing.idle_formats import render_focus_node_costs
from governor.billing.quantities import HOUR_US
from governor.billing.report import round_money
from governor.billing.sliced import sliced_invoice
from governor.metering.catchup import meter
from governor.policy.model import (
    OPENCOST_CPU_CORE_HOUR,
    OPENCOST_RAM_GIB_HOUR,
    Limits,
    NodeCost,
    NodeCosts,
    Policy,
    PricePlan,
    PriceVersion,
    Tenant,
)
from governor.store.service import record_samples
from governor.store.tables import groups, nodes, rollups_hourly, tenants
from tests.helpers.db import db_url, engine, make_sample, session  # noqa: F401

D = Decimal
GIB = 1 << 30
H = timedelta(hours=1)
T0 = datetime(2026, 11, 2, 10, tzinfo=UTC)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
#: 4 CPUs, 16 GiB, 1.00 EUR an hour
BIG = NodeCost(D("1.00"), "EUR", D(4), 16 * GIB, node_class="big")


def _costs(idle: str = "unassigned", **extra: NodeCost) -> NodeCosts:
    return NodeCosts(nodes={"n1": BIG, **extra}, idle=idle)  # type: ignore[arg-type]


def _db(s, rows: list[tuple[str, str, datetime, int, int]],
        first_seen: datetime = T0) -> None:
    """Rollups ``(node, tenant, hour, cpu usec, memory byte-seconds)``, one group each."""
    node_ids: dict[str, int] = {}
    tenant_ids: dict[str, int] = {}
    group_ids: dict[tuple[str, str], int] = {}
    for node, tenant, hour, cpu, mem in rows:
        if node not in node_ids:
            node_ids[node] = len(node_ids) + 1
            s.execute(insert(nodes).values(id=node_ids[node], name=node,
                                           first_seen=first_seen))
        if tenant not in tenant_ids:
            tenant_ids[tenant] = len(tenant_ids) + 1
            s.execute(insert(tenants).values(id=tenant_ids[tenant], name=tenant))
        if (node, tenant) not in group_ids:
            gid = group_ids[(node, tenant)] = len(group_ids) + 1
            s.execute(insert(groups).values(
                id=gid, node_id=node_ids[node], tenant_id=tenant_ids[tenant], name="web",
                path=f"{tenant}/web", cgroup_id=100 + gid, first_seen=first_seen))
        s.execute(insert(rollups_hourly).values(
            node_id=node_ids[node], group_id=group_ids[(node, tenant)], hour=hour,
            covered_us=HOUR_US, intervals=60, cpu_usec=cpu, memory_byte_seconds=mem))
    s.commit()


def _use(frac_cpu: Fraction | float, frac_mem: Fraction | float,
         cost: NodeCost = BIG) -> tuple[int, int]:
    return (int(Fraction(frac_cpu) * Fraction(cost.cpus) * HOUR_US),
            int(Fraction(frac_mem) * cost.memory * 3600))


def _lines(report) -> dict[tuple[str, str, str], Decimal]:
    return {(ln.node, ln.tenant, ln.kind): ln.amount for ln in report.lines}


def test_25_and_50_percent_unassigned(session):  # noqa: F811
    _db(session, [("n1", "a", T0, *_use(0.25, 0.25)), ("n1", "b", T0, *_use(0.5, 0.5))])
    r = node_costs(session=session, costs=_costs(), start=T0, end=T0 + H, now=NOW)
    assert _lines(r) == {("n1", "a", "share"): D("0.25"), ("n1", "b", "share"): D("0.50"),
                         ("n1", IDLE, "idle"): D("0.25")}
    assert r.totals == {"EUR": D("1.00")} and r.warnings == ()
    a = next(ln for ln in r.lines if ln.tenant == "a")
    assert a.cpu_core_hours == D(1) and a.memory_gib_hours == D(4)
    assert a.node_hours == D("0.25") and a.charge_start == T0 and a.charge_end == T0 + H


def test_25_and_50_percent_split(session):  # noqa: F811
    _db(session, [("n1", "a", T0, *_use(0.25, 0.25)), ("n1", "b", T0, *_use(0.5, 0.5))])
    r = node_costs(session=session, costs=_costs("split"), start=T0, end=T0 + H, now=NOW)
    # idle 0.25 shared 1:2 -> 0.0833.. and 0.1666..: the cent left over by rounding down
    # goes to the larger remainder (b's)
    assert _lines(r) == {("n1", "a", "share"): D("0.25"), ("n1", "b", "share"): D("0.50"),
                         ("n1", "a", "idle"): D("0.08"), ("n1", "b", "idle"): D("0.17")}
    assert sum(_lines(r).values()) == D("1.00")
    # tenants by name, each one's share before its idle
    assert [(ln.tenant, ln.kind) for ln in r.lines] == [
        ("a", "share"), ("a", "idle"), ("b", "share"), ("b", "idle")]
    # --tenant: its lines only, with the amounts of the whole report
    only = node_costs(session=session, costs=_costs("split"), start=T0, end=T0 + H,
                      now=NOW, tenant="a")
    assert _lines(only) == {("n1", "a", "share"): D("0.25"), ("n1", "a", "idle"): D("0.08")}


def _shape(cost: NodeCost = BIG, cpu_w: Decimal = OPENCOST_CPU_CORE_HOUR,
           ram_w: Decimal = OPENCOST_RAM_GIB_HOUR) -> NodeShape:
    return node_shape(cost, cpu_w, ram_w)


def test_cpu_and_ram_are_weighted_as_opencost_does():
    # OpenCost (costmodel.go): ramPrice = cost / (cpus * ratio + GiB), cpuPrice = ramPrice
    # * ratio, ratio = default CPU / default RAM price
    ratio = Fraction(OPENCOST_CPU_CORE_HOUR) / Fraction(OPENCOST_RAM_GIB_HOUR)
    ram_price = Fraction(BIG.cost_per_hour) / (4 * ratio + 16)
    c = cpu_part(BIG, OPENCOST_CPU_CORE_HOUR, OPENCOST_RAM_GIB_HOUR)
    assert c == 4 * ratio * ram_price / Fraction(BIG.cost_per_hour)
    all_cpu = allocate_hour(_shape(), {"a": _use(1, 0)}, idle="unassigned")
    assert all_cpu.shares["a"] == round(4 * ratio * ram_price * UNITS)
    assert all_cpu.unassigned == UNITS - all_cpu.shares["a"]
    # other weights: half and half
    even = allocate_hour(_shape(BIG, D(4), D(1)), {"a": _use(1, 0)}, idle="unassigned")
    assert even.shares["a"] == UNITS // 2


def test_a_node_without_cost_has_no_lines(session):  # noqa: F811
    _db(session, [("n1", "a", T0, *_use(0.25, 0.25)), ("n2", "a", T0, *_use(1, 1))])
    r = node_costs(session=session, costs=_costs(), start=T0, end=T0 + H, now=NOW)
    assert {ln.node for ln in r.lines} == {"n1"}
    # a node of the policy the database never saw: none either
    r = node_costs(session=session, costs=_costs(n9=BIG), start=T0, end=T0 + H, now=NOW)
    assert {ln.node for ln in r.lines} == {"n1"}
    with pytest.raises(NoNodeCosts, match="no node costs in the policy"):
        node_costs(session=session, costs=NodeCosts(), start=T0, end=T0 + H, now=NOW)


@pytest.mark.parametrize("idle", ["unassigned", "split"])
def test_usage_above_capacity_is_scaled_with_a_warning(session, idle):  # noqa: F811
    # CPU: 150% + 50% of the declared 4 CPUs; memory 10%
    _db(session, [("n1", "a", T0, *_use(1.5, 0.1)), ("n1", "b", T0, *_use(0.5, 0))])
    r = node_costs(session=session, costs=_costs(idle), start=T0, end=T0 + H, now=NOW)
    got = _lines(r)
    assert sum(got.values()) == D("1.00") and all(v >= 0 for v in got.values())
    c = cpu_part(BIG, OPENCOST_CPU_CORE_HOUR, OPENCOST_RAM_GIB_HOUR)
    a_use = _use(1.5, 0.1)
    shares = allocate_hour(_shape(), {"a": a_use, "b": _use(0.5, 0)}, idle="unassigned")
    exact = {"a": c * Fraction(3, 4) + (1 - c) * Fraction(a_use[1], BIG.memory * 3600),
             "b": c / 4}
    assert shares.shares.keys() == exact.keys()
    # within two units (10^-24 of a node-hour): the CPU part and each share rounded
    assert all(abs(shares.shares[t] - exact[t] * UNITS) <= 2 for t in exact)
    assert shares.cpu_over == 2 and shares.memory_over is None
    assert len(r.warnings) == 1
    assert r.warnings[0].startswith("node n1: CPU use above its declared capacity (4 cpus) "
                                    "in 1 hour(s), up to 200% at 2026-11-02T10:00:00Z")


@pytest.mark.parametrize("idle", ["unassigned", "split"])
def test_hours_nobody_used_are_all_idle(session, idle):  # noqa: F811
    # usage in the second of four hours only; the window cut inside hours at both ends
    _db(session, [("n1", "a", T0 + H, *_use(0.25, 0.25))])
    r = node_costs(session=session, costs=_costs(idle), start=T0 - timedelta(minutes=30),
                   end=T0 + 4 * H + timedelta(minutes=1), now=NOW)
    got = _lines(r)
    idle_a = D("0.75") if idle == "split" else D(0)
    assert got[("n1", IDLE, "idle")] == D("3.00") + (D(0) if idle == "split" else D("0.75"))
    assert got[("n1", "a", "share")] == D("0.25")
    assert got.get(("n1", "a", "idle"), D(0)) == idle_a
    assert r.totals == {"EUR": D("4.00")}
    assert {(ln.charge_start, ln.charge_end) for ln in r.lines} == {(T0, T0 + 4 * H)}
    # by hour: the idle line of each hour, the share in the second
    r = node_costs(session=session, costs=_costs(idle), start=T0, end=T0 + 4 * H,
                   by="hour", now=NOW)
    assert [(ln.charge_start, ln.tenant) for ln in r.lines if ln.tenant == IDLE] == [
        (T0 + i * H, IDLE) for i in range(4) if idle == "unassigned" or i != 1]


def test_billed_hours_whole_from_first_seen_until_now():
    seen = T0 + timedelta(minutes=20)
    assert billed_hours(T0 - 2 * H, T0 + 3 * H, seen, NOW) == [T0, T0 + H, T0 + 2 * H]
    # the hour still running is left out
    assert billed_hours(T0, T0 + 3 * H, seen, T0 + H + timedelta(minutes=5)) == [T0]
    assert billed_hours(T0 + timedelta(minutes=1), T0 + H, seen, NOW) == []


def test_largest_remainder_adds_up_and_stays_within_a_minor_unit():
    # thirds of a euro: 1/3 each
    assert largest_remainder({"a": 1, "b": 1, "c": 1}, 3, "EUR") == {
        "a": D("0.34"), "b": D("0.33"), "c": D("0.33")}
    # 3.5 yen rounds half-even to 4; 0.0005 + 0.0005 dinar to 0.001, to the first
    assert largest_remainder({"a": 7}, 2, "JPY") == {"a": D(4)}
    assert largest_remainder({"a": 1, "b": 1}, 2000, "KWD") == {"a": D("0.001"),
                                                                "b": D("0.000")}
    # the larger remainder first: 0.104 + 0.106 = 0.21
    assert largest_remainder({"a": 104, "b": 106}, 1000, "EUR") == {"a": D("0.10"),
                                                                    "b": D("0.11")}


@pytest.mark.parametrize("seed", range(6))
def test_exact_sums_on_random_histories(session, seed):  # noqa: F811
    rng = random.Random(seed)
    small = NodeCost(D(rng.choice(["0.0437", "1.999", "0.10", "3"])),
                     rng.choice(["EUR", "JPY", "KWD"]), D(rng.choice(["2", "2.5", "16"])),
                     rng.choice([3, 8, 64]) * GIB)
    costs = NodeCosts(nodes={"n1": BIG, "n2": small},
                      idle=rng.choice(["split", "unassigned"]),  # type: ignore[arg-type]
                      cpu_core_hour_weight=D(rng.choice(["0.031611", "1", "0"])),
                      memory_gib_hour_weight=D(rng.choice(["0.004237", "1"])))
    rows = []
    for i in range(60):
        for node, cost in (("n1", BIG), ("n2", small)):
            for t in ("a", "b", "c"):
                if rng.random() < 0.6:
                    rows.append((node, t, T0 + i * H, *_use(rng.random() * 0.7,
                                                             rng.random() * 0.7, cost)))
    _db(session, rows)
    start, end = T0 + timedelta(minutes=rng.randrange(60)), T0 + 61 * H
    for by in (None, "hour", "day", "month"):
        r = node_costs(session=session, costs=costs, start=start, end=end, by=by, now=NOW)
        per: dict[tuple[str, datetime], list[Decimal]] = {}
        for ln in r.lines:
            per.setdefault((ln.node, ln.charge_start), []).append(ln.amount)
            assert ln.amount >= 0
        for (node, a), amounts in per.items():
            span = next(ln for ln in r.lines if (ln.node, ln.charge_start) == (node, a))
            hours = (span.charge_end - span.charge_start) // H
            cost = costs.nodes[node]
            assert sum(amounts) == round_money(Fraction(cost.cost_per_hour) * hours,
                                               cost.currency)
    # each node-hour: the shares and idle add up to the node-hour exactly
    for _ in range(200):
        usage = {t: _use(rng.random() * 1.5, rng.random() * 1.5, small) for t in "abc"
                 if rng.random() < 0.7}
        shape = _shape(small, costs.cpu_core_hour_weight, costs.memory_gib_hour_weight)
        hs = allocate_hour(shape, usage, idle=costs.idle)
        total = sum(hs.shares.values()) + sum(hs.idle_split.values()) + hs.unassigned
        assert total == UNITS and hs.unassigned >= 0
        assert all(v > 0 for v in hs.shares.values())


def _policy(costs: NodeCosts) -> Policy:
    plan = PricePlan("std", "EUR", (PriceVersion(None, D("0.04"), D("0.005"), D("0.01"),
                                                 D("0.02")),))
    return Policy(tenants={t: Tenant(name=t, plan="std", limits=Limits(), groups={})
                           for t in ("acme", "beta")},
                  plans={"std": plan}, sources=("test",), digest="x", node_costs=costs)


def _metered(db) -> None:
    """acme and beta on n1 and n2 for three hours, through record_samples and meter."""
    rng = random.Random(5)
    for node in ("n1", "n2"):
        ticks = []
        for ti, tenant in enumerate(("acme", "beta")):
            cpu = 0
            for i in range(40):
                cpu += rng.randrange(0, 600_000_000)
                ticks.append(make_sample(node=node, tenant=tenant, group="web",
                                         cgroup_id=200 + ti, wall=T0 + i * timedelta(minutes=5),
                                         cpu=cpu, mem=rng.randrange(GIB, 6 * GIB)))
        record_samples(session=db, node=node, samples=ticks)
        meter(session=db, node=node)
    db.execute(nodes.update().values(first_seen=T0))
    db.commit()


def test_cli_formats(engine, db_url, session, monkeypatch):  # noqa: F811
    costs = NodeCosts(nodes={"n1": BIG}, idle="split")
    monkeypatch.setattr("governor.policy.load_policy", lambda paths: _policy(costs))
    monkeypatch.delenv("GOVERNOR_CONFIG", raising=False)
    _metered(session)
    runner = CliRunner()
    args = ["--database", db_url, "--from", T0.isoformat(), "--to", (T0 + 3 * H).isoformat(),
            "--node-costs"]
    res = runner.invoke(bill_command, [*args, "--format", "csv"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    node_rows = [r for r in rows if r["node"]]
    assert {r["resource"] for r in node_rows} == {"node_share", "node_idle"}
    assert {r["node"] for r in node_rows} == {"n1"}
    assert sum(D(r["amount"]) for r in node_rows) == D("3.00")
    assert any(r["resource"] == "cpu" and r["node"] == "" for r in rows)
    res = runner.invoke(bill_command, [*args, "--format", "json"])
    doc = json.loads(res.stdout)
    assert [inv["tenant"] for inv in doc["invoices"]] == ["acme", "beta"]
    assert doc["node_costs"]["totals"] == {"EUR": "3.00"}
    assert doc["node_costs"]["idle"] == "split"
    res = runner.invoke(bill_command, [*args, "--format", "table"])
    assert res.exit_code == 0 and "node costs:" in res.stdout and "3.00 EUR" in res.stdout
    # without the flag, the bill is as before
    res = runner.invoke(bill_command, [*args[:-1], "--format", "json"])
    assert isinstance(json.loads(res.stdout), list)
    # asked for, but none declared
    monkeypatch.setattr("governor.policy.load_policy", lambda paths: _policy(NodeCosts()))
    res = runner.invoke(bill_command, [*args, "--format", "csv"])
    assert isinstance(res.exception, NoNodeCosts)


def test_focus_rows_mark_idle_and_add_up(session, tmp_path):  # noqa: F811
    _metered(session)
    url = session.get_bind().url.render_as_string(hide_password=False)
    for idle in ("unassigned", "split"):
        out = io.StringIO()
        costs = NodeCosts(nodes={"n1": BIG, "n2": BIG}, idle=idle)  # type: ignore[arg-type]
        run_bill(url, _policy(costs), tenant=None, start=T0, end=T0 + 3 * H, fmt="focus",
                 by="hour", out=out, node_costs=costs)
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        assert list(rows[0]) == list(FOCUS_COLUMNS)
        node_rows = [r for r in rows if r["ResourceType"] == "node"]
        assert sum(D(r["BilledCost"]) for r in node_rows) == D("6.00")
        for r in node_rows:
            tags = json.loads(r["Tags"])
            is_idle = r["SubAccountId"] == IDLE
            assert tags["governor/idle"] == str(is_idle).lower()
            assert tags["governor/idle_mode"] == idle
            assert r["ChargeCategory"] == "Usage" and r["PricingUnit"] == "Hours"
            assert (r["BillingAccountId"] == IDLE) <= is_idle
        kinds = {(r["BillingAccountId"] == IDLE, r["SubAccountId"] == IDLE)
                 for r in node_rows}
        assert (True, True) in kinds if idle == "unassigned" else (False, True) in kinds


def test_focus_validator_accepts_node_cost_rows(session, tmp_path):  # noqa: F811
    from tests.unit.test_billing_focus import (
        STALE_CHECKS,
        _fixed_rules,
        _validate,
    )

    _metered(session)
    sliced = sliced_invoice(session=session, policy=_policy(NodeCosts()), tenant="acme",
                            start=T0, end=T0 + 3 * H, by="hour")
    report = node_costs(session=session, costs=NodeCosts(nodes={"n1": BIG}),
                        start=T0, end=T0 + 3 * H, by="hour", now=NOW)
    assert any(ln.tenant == IDLE for ln in report.lines)
    data = tmp_path / "focus.csv"
    with data.open("w", newline="") as f:
        render_focus([sliced], f)
        render_focus_node_costs(report, f)
    # as for the invoices' rows: only the checks of the stale column IDs fail as shipped,
    # none with the corrected rules
    _n, bad = _validate(data, tmp_path)
    assert bad.keys() == STALE_CHECKS, bad
    _n, bad = _validate(data, tmp_path, _fixed_rules(tmp_path))
    assert bad == {}
