"""Issue #18: bills per node.  Three nodes' rows in one database (SQLite and PostgreSQL):
each node's bill is its share of the fleet's, so the node bills add up exactly (Decimal) to
the fleet bill, line by line and in total, per tenant and for every period; ``--node``
names an unknown node with the known ones, exit 2, no traceback."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from governor.billing.quantities import HOUR_US
from governor.billing.report import invoice, invoices, usage_report
from governor.billing.sliced import sliced_invoice
from governor.cli import main
from governor.errors import UnknownNode
from governor.policy.model import Limits, Policy, PricePlan, PriceVersion, Tenant
from governor.store.bulk import bulk_insert_ignore
from governor.store.db import session_factory
from governor.store.models import Group
from governor.store.service import ensure_node, ensure_tenant, record_oom_event
from tests.helpers.db import db_url, engine, session  # noqa: F401

T0 = datetime(2026, 10, 1, tzinfo=UTC)
D = Decimal
NODES = ("node-b", "node-a", "node-c")  # made in this order: ids are not the name order
HOURS = 24 * 9
#: the second price version: in force from the middle of the data
CHANGE = T0 + timedelta(days=4, hours=7)
COLS = ("node_id", "group_id", "hour", "covered_us", "intervals", "cpu_usec",
        "memory_byte_seconds", "io_rbytes", "io_wbytes", "oom_kills", "cpu_user_usec",
        "cpu_system_usec", "cpu_throttled_usec", "io_rios", "io_wios", "io_dbytes",
        "oom_events", "storage_byte_seconds")
#: (tenant, group) per node: beta runs on two of the three nodes only
GROUPS = {"node-a": [("acme", "web"), ("acme", "db"), ("beta", "api")],
          "node-b": [("acme", "web"), ("beta", "api")],
          "node-c": [("acme", "web"), ("acme", "db")]}
PERIODS = [
    (T0, T0 + timedelta(hours=HOURS)),                                   # all of it
    (T0 + timedelta(hours=5, minutes=17), T0 + timedelta(days=6, minutes=41)),  # cut hours
    (CHANGE - timedelta(hours=3), CHANGE + timedelta(hours=2)),        # across the change
    (T0, T0 + timedelta(days=31)),                                       # the whole month
]


def _policy(basis: str = "usage") -> Policy:
    v1 = PriceVersion(None, D("0.0437"), D("0.00513"), D("0.0119"), D("0.0231"), D("0.37"),
                      storage_gib_hour=D("0.00023"))
    v2 = PriceVersion(CHANGE, D("0.0391"), D("0.00607"), D("0.0101"), D("0.0277"),
                      D("0.41"), storage_gib_hour=D("0.00031"))
    return Policy(
        tenants={t: Tenant(name=t, plan="std", limits=Limits(), groups={})
                 for t in ("acme", "beta")},
        plans={"std": PricePlan("std", "EUR", (v1, v2), basis)},  # type: ignore[arg-type]
        sources=("test",), digest="x")


def _fleet(db: Session) -> None:
    """Hourly rollups of :data:`GROUPS` with uneven quantities: a node's exact share of a
    line is seldom a whole cent."""
    rnd = random.Random(18)
    node_ids = {n: ensure_node(session=db, name=n) for n in NODES}
    rows = []
    cid = 100
    for node in NODES:
        for tenant, name in GROUPS[node]:
            cid += 1
            g = Group(node_id=node_ids[node], tenant_id=ensure_tenant(session=db, name=tenant),
                      name=name, path=f"{tenant}/{name}", cgroup_id=cid, created_at=T0,
                      first_seen=T0)
            db.add(g)
            db.flush()
            for i in range(HOURS):
                rows.append((node_ids[node], g.id, T0 + timedelta(hours=i), HOUR_US, 360,
                             rnd.randrange(HOUR_US // 7), rnd.randrange(1 << 40),
                             rnd.randrange(1 << 31), rnd.randrange(1 << 31),
                             int(rnd.random() < 0.02), 0, 0, 0, 0, 0, 0, 0,
                             rnd.randrange(1 << 41)))
    bulk_insert_ignore(db, "rollups_hourly", COLS, rows, ts_index=2)
    db.commit()


@pytest.mark.parametrize("period", PERIODS, ids=["data", "cut", "change", "month"])
def test_node_bills_add_up_exactly_to_the_fleet_bill(session: Session,  # noqa: F811
                                                     period: tuple[datetime, datetime]
                                                     ) -> None:
    _fleet(session)
    pol = _policy()
    start, end = period
    naive_differs = False
    for tenant in ("acme", "beta"):
        fleet = invoice(session=session, policy=pol, tenant=tenant, start=start, end=end)
        assert fleet.total > 0
        per_node = {n: invoice(session=session, policy=pol, tenant=tenant, start=start,
                               end=end, node=n) for n in NODES}
        assert sum((b.total for b in per_node.values()), D(0)) == fleet.total
        # line by line: amounts and quantities
        for line in fleet.lines:
            key = (line.path, line.resource, line.price_version)
            mine = [x for b in per_node.values() for x in b.lines
                    if (x.path, x.resource, x.price_version) == key]
            assert sum((x.amount for x in mine), D(0)) == line.amount, key
            assert sum((x.quantity for x in mine), D(0)) == line.quantity, key
            assert all(x.unit_price == line.unit_price for x in mine)
            assert all(line.charge_start <= x.charge_start < x.charge_end <= line.charge_end
                       for x in mine)
            # each node's amount is within one minor unit of its exact share
            assert all(abs(x.amount - x.quantity * x.unit_price) < D("0.0100001")
                       for x in mine)
            naive = sum(((x.quantity * x.unit_price).quantize(D("0.01"), ROUND_HALF_EVEN)
                         for x in mine), D(0))
            naive_differs |= naive != line.amount
        # beta has no group on node-c: an empty bill, total 0
        if tenant == "beta":
            assert per_node["node-c"].lines == () and per_node["node-c"].total == 0
    if period == PERIODS[0]:
        # rounding each node on its own would not add up: the shares are what make it
        assert naive_differs


def test_a_node_bill_is_that_node_usage_priced(session: Session) -> None:  # noqa: F811
    """A node's quantities are its own usage (``usage --node``, ``usage --by node``)."""
    _fleet(session)
    start, end = PERIODS[0]
    by_node = {r.key: r for r in usage_report(session=session, tenant="acme", start=start,
                                              end=end, by="node").rows}
    for n in NODES:
        [row] = usage_report(session=session, tenant="acme", start=start, end=end,
                             by="node", node=n).rows
        assert row == by_node[n]
        bill = invoice(session=session, policy=_policy(), tenant="acme", start=start,
                       end=end, node=n)
        cpu = sum((x.quantity for x in bill.lines if x.resource == "cpu"), D(0))
        # 9-decimal shares: within a nano core-hour per line of the node's own usage
        assert abs(cpu - row.cpu_core_hours) <= D("1e-9") * len(bill.lines)
        group_rows = usage_report(session=session, tenant="acme", start=start, end=end,
                                  by="group", node=n).rows
        assert {r.key for r in group_rows} == {f"acme/{g}" for t, g in GROUPS[n]
                                               if t == "acme"}


def test_invoices_and_sliced_invoices_take_the_node(session: Session) -> None:  # noqa: F811
    _fleet(session)
    pol = _policy()
    start, end = PERIODS[1]
    fleet = invoices(session=session, policy=pol, tenants=["acme", "beta"], start=start,
                     end=end)
    nodes = [invoices(session=session, policy=pol, tenants=["acme", "beta"], start=start,
                      end=end, node=n) for n in NODES]
    for i, f in enumerate(fleet):
        assert sum((b[i].total for b in nodes), D(0)) == f.total
    for by in ("day", "month"):
        whole = sliced_invoice(session=session, policy=pol, tenant="acme", start=start,
                               end=end, by=by)  # type: ignore[arg-type]
        assert whole.total == fleet[0].total
        parts = [sliced_invoice(session=session, policy=pol, tenant="acme", start=start,
                                end=end, by=by, node=n) for n in NODES]  # type: ignore[arg-type]
        assert sum((p.total for p in parts), D(0)) == whole.total
        for n, p in zip(NODES, parts, strict=True):
            assert p.charges and {c.node for c in p.charges} == {n}


def test_the_max_basis_per_node_adds_up(session: Session) -> None:  # noqa: F811
    """Reservations are per node: a node's bill takes its own reservation's share."""
    from governor.store.service import record_applied_policy

    _fleet(session)
    for i, n in enumerate(NODES):
        record_applied_policy(session=session, node=n, applied_at=T0 + timedelta(hours=30 + i),
                              policy_hash="h", trigger="start",
                              writes=[{"path": "acme/web", "file": "memory.min",
                                       "value": str((1 << 30) * (i + 1) + 12345)}])
    session.commit()
    for basis in ("max", "reservation"):
        pol = _policy(basis)
        start, end = PERIODS[1]
        fleet = invoice(session=session, policy=pol, tenant="acme", start=start, end=end)
        parts = [invoice(session=session, policy=pol, tenant="acme", start=start, end=end,
                         node=n) for n in NODES]
        assert sum((p.total for p in parts), D(0)) == fleet.total, basis


def test_an_unknown_node_names_the_known_ones(session: Session) -> None:  # noqa: F811
    _fleet(session)
    for call in (
            lambda: invoice(session=session, policy=_policy(), tenant="acme",
                            start=PERIODS[0][0], end=PERIODS[0][1], node="node-x"),
            lambda: usage_report(session=session, start=PERIODS[0][0], end=PERIODS[0][1],
                                 node="node-x"),
            lambda: sliced_invoice(session=session, policy=_policy(), tenant="acme",
                                   start=PERIODS[0][0], end=PERIODS[0][1], node="node-x")):
        with pytest.raises(UnknownNode) as info:
            call()
        assert str(info.value) == ("unknown node 'node-x': never metered in this database "
                                   "(nodes: node-a, node-b, node-c)")
        assert info.value.exit_code == 2


COMMANDS = {
    "usage": ["usage", "--period", "2026-10", "--node", "node-x"],
    "bill": ["bill", "--period", "2026-10", "--node", "node-x"],
    "bill focus": ["bill", "--period", "2026-10", "--format", "focus", "--node", "node-x"],
    "events": ["events", "--node", "node-x"],
}


@pytest.mark.parametrize("argv", COMMANDS.values(), ids=COMMANDS.keys())
def test_node_option_of_the_commands(argv: list[str], engine: Engine,  # noqa: F811
                                     capsys: pytest.CaptureFixture[str]) -> None:
    policy = Path(__file__).resolve().parents[2] / "examples" / "policy.d"
    with session_factory(engine)() as s:
        _fleet(s)
    url = engine.url.render_as_string(hide_password=False)
    rc = main([*argv[:1], "--database", url, "--policy", str(policy), *argv[1:]])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "unknown node 'node-x'" in err and "(nodes: node-a, node-b, node-c)" in err, err
    assert "Traceback" not in err
    # the known name: exit 0, only that node's rows
    extra = {"usage": ["--format", "json", "--by", "node"], "bill": ["--tenant", "acme"],
             "events": []}[argv[0]]
    rc = main([*argv[:1], "--database", url, "--policy", str(policy), *argv[1:-1], "node-a",
               *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    if argv[0] == "usage":
        assert '"node-a"' in out and "node-b" not in out and "node-c" not in out


def test_events_of_one_node(engine: Engine, capsys: pytest.CaptureFixture[str]  # noqa: F811
                            ) -> None:
    with session_factory(engine)() as s:
        for i, n in enumerate(NODES):
            record_oom_event(session=s, node=n, tenant="acme", group="web", cgroup_id=None,
                             ts=T0 + timedelta(minutes=i), kind="oom_kill", count=i + 1)
        s.commit()
    url = engine.url.render_as_string(hide_password=False)
    rc = main(["events", "--database", url, "--node", "node-c", "--format", "json"])
    out = capsys.readouterr().out
    assert rc == 0
    import json

    events = json.loads(out)["events"]
    assert [(e["node"], e["count"]) for e in events] == [("node-c", 3)]


def test_the_cost_gauge_is_the_node_share(engine: Engine,  # noqa: F811
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``governor_billed_cost{node=X}`` (the daemon's cost job) is node X's share of the
    month's bill: the gauges of the nodes add up to the fleet's bill."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from governor.billing.running import RunningBills
    from governor.daemon import jobs

    now = T0 + timedelta(days=7, hours=3, minutes=12)

    class Clock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> Clock:  # type: ignore[override]
            return now  # type: ignore[return-value]

    monkeypatch.setattr(jobs, "datetime", Clock)
    with session_factory(engine)() as s:
        _fleet(s)

    @contextmanager
    def scope():  # type: ignore[no-untyped-def]
        with engine.begin() as conn:
            yield conn

    pol = _policy()
    job = jobs.Jobs()
    job.db = SimpleNamespace(up=True)  # type: ignore[assignment]
    job.enforcer = SimpleNamespace(policy=pol)  # type: ignore[assignment]
    job.scope = scope
    gauges = {}
    for n in (*NODES, "node-never-metered"):
        job.cfg = SimpleNamespace(node=n)  # type: ignore[assignment]
        job.costs = {}
        job.running_bills = RunningBills()  # each node's daemon has its own
        job._update_costs()
        gauges[n] = job.costs
    assert gauges["node-never-metered"] == {}   # no rows: no series (not the fleet's)
    with session_factory(engine)() as s:
        for tenant in ("acme", "beta"):
            fleet = invoice(session=s, policy=pol, tenant=tenant, start=T0, end=now)
            mine = [gauges[n].get((tenant, "EUR"), D(0)) for n in NODES]
            assert sum(mine, D(0)) == fleet.total > 0
            assert all(m < fleet.total for m in mine)  # no node shows the fleet's total
            for n in NODES:
                if (tenant, "EUR") in gauges[n]:
                    assert gauges[n][(tenant, "EUR")] == invoice(
                        session=s, policy=pol, tenant=tenant, start=T0, end=now,
                        node=n).total
