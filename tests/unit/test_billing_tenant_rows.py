"""A tenant's own cgroup is metered (status and metrics show it), but its counters hold its
groups' usage too (cgroup v2 charges a child's usage to every ancestor): a bill counts the
tenant's own rows only on a node where the tenant has no group (the leaf its processes run
in), never on top of its groups.  Found by the fleet kernel test: the fleet invoice had an
``acme`` line beside ``acme/web`` and ``acme/adhoc`` holding their sum again.
SQLite and PostgreSQL, rollups written directly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy.orm import Session

from governor.billing.quantities import HOUR_US
from governor.billing.report import invoice, usage_report
from governor.billing.sliced import sliced_invoice
from governor.policy.model import Limits, Policy, PricePlan, PriceVersion, Tenant
from governor.store.bulk import bulk_insert_ignore
from governor.store.models import Group
from governor.store.service import ensure_node, ensure_tenant
from tests.helpers.db import db_url, engine, session  # noqa: F401

T0 = datetime(2026, 10, 1, tzinfo=UTC)
D = Decimal
COLS = ("node_id", "group_id", "hour", "covered_us", "intervals", "cpu_usec",
        "memory_byte_seconds", "io_rbytes", "io_wbytes", "oom_kills", "cpu_user_usec",
        "cpu_system_usec", "cpu_throttled_usec", "io_rios", "io_wios", "io_dbytes",
        "oom_events", "storage_byte_seconds")
#: node -> (tenant, group or None for the tenant's own cgroup, CPU usec per hour)
ROWS = {
    # acme has groups on node-a: its own row holds web + db (and a little more: a group
    # removed before its first sample), never billed
    "node-a": [("acme", None, 3_100_000), ("acme", "web", 1_000_000),
               ("acme", "db", 2_000_000)],
    # acme has no group on node-b: its own cgroup is the leaf, billed as "(tenant)"
    "node-b": [("acme", None, 500_000)],
}


def _policy() -> Policy:
    v = PriceVersion(None, D("3.6"), D("0"), D("0"), D("0"), D("0"))
    return Policy(tenants={"acme": Tenant(name="acme", plan="std", limits=Limits(), groups={})},
                  plans={"std": PricePlan("std", "EUR", (v,), "usage")},  # type: ignore[arg-type]
                  sources=("test",), digest="x")


def _history(db: Session, hours: int = 3) -> None:
    rows = []
    cid = 10
    for node, groups in ROWS.items():
        nid = ensure_node(session=db, name=node)
        for tenant, name, cpu in groups:
            cid += 1
            g = Group(node_id=nid, tenant_id=ensure_tenant(session=db, name=tenant), name=name,
                      path=tenant if name is None else f"{tenant}/{name}", cgroup_id=cid,
                      created_at=T0, first_seen=T0)
            db.add(g)
            db.flush()
            for i in range(hours):
                rows.append((nid, g.id, T0 + timedelta(hours=i), HOUR_US, 360, cpu, 0, 0, 0,
                             0, cpu, 0, 0, 0, 0, 0, 0, 0))
    bulk_insert_ignore(db, "rollups_hourly", COLS, rows, ts_index=2)
    db.commit()


def test_a_tenants_own_rows_are_billed_only_where_it_has_no_group(session: Session  # noqa: F811
                                                                   ) -> None:
    _history(session)
    end = T0 + timedelta(hours=3)
    inv = invoice(session=session, policy=_policy(), tenant="acme", start=T0, end=end)
    cpu = {ln.path: ln.quantity for ln in inv.lines if ln.resource == "cpu"}
    # 3 hours of 1 s, 2 s and 0.5 s of CPU an hour: no line for node-a's tenant row
    assert cpu == {p: (D(3 * us) / D(HOUR_US)).quantize(D("1e-9")) for p, us in
                   (("acme", 500_000), ("acme/db", 2_000_000), ("acme/web", 1_000_000))}
    # at 3.6 EUR a core-hour: 3 x (1 + 2 + 0.5) s = 10.5 s = 0.0105 EUR, not 0.0198
    assert inv.total == D("0.01")
    # the node's share: node-a's bill has no tenant line either
    a = invoice(session=session, policy=_policy(), tenant="acme", start=T0, end=end,
                node="node-a")
    assert {ln.path for ln in a.lines} == {"acme/db", "acme/web"}
    # sliced (FOCUS) rows, the usage report and node costs count the same rows
    sliced = sliced_invoice(session=session, policy=_policy(), tenant="acme", start=T0,
                            end=end, by="hour")
    assert {c.path for c in sliced.charges} == {"acme", "acme/db", "acme/web"}
    by_group = usage_report(session=session, tenant="acme", start=T0, end=end, by="group")
    assert {r.key: r.cpu_core_hours for r in by_group.rows} == cpu
    by_node = usage_report(session=session, tenant="acme", start=T0, end=end, by="node")
    assert sorted(r.cpu_core_hours for r in by_node.rows) == sorted(
        [cpu["acme"], cpu["acme/db"] + cpu["acme/web"]])
