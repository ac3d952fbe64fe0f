"""Issue #15 item 9: bills and usage reports are exact past 2**63.

SQLite's SUM() of integers stops with "integer overflow" beyond 2**63 - 1; a year of a big
group's rollups gets there (10 TiB resident is 3.6e16 byte-seconds an hour: 2**63 in 29
years... and counters near 2**62 an hour in two).  Every total must stay an exact integer on
both dialects, for any period up to ten years.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from governor.billing.quantities import HOUR_US, sum_pieces
from governor.billing.report import GIB, _amount, invoice, usage_report
from governor.policy.model import Limits, Policy, PricePlan, PriceVersion, Tenant
from governor.store.bulk import bulk_insert_ignore
from governor.store.models import Group
from governor.store.service import ensure_node, ensure_tenant
from tests.helpers.db import db_url, engine, session  # noqa: F401

T0 = datetime(2020, 1, 1, tzinfo=UTC)
D = Decimal
BIG = 1 << 62
TIB10 = 10 << 40


def _policy() -> Policy:
    v = PriceVersion(None, D("0.04"), D("0.005"), D("0.01"), D("0.02"), D("1"),
                     storage_gib_hour=D("0.0002"))
    return Policy(tenants={"acme": Tenant(name="acme", plan="std", limits=Limits(), groups={})},
                  plans={"std": PricePlan("std", "EUR", (v,), "usage")},
                  sources=("test",), digest="x")


def _rollups(db: Session, hours: int) -> dict[str, int]:
    """``hours`` hourly rollups of one group with counters near 2**62 an hour; returns the
    exact totals (Python integers)."""
    node_id = ensure_node(session=db, name="n1")
    tenant_id = ensure_tenant(session=db, name="acme")
    g = Group(node_id=node_id, tenant_id=tenant_id, name="web", path="acme/web",
              cgroup_id=7, created_at=T0, first_seen=T0)
    db.add(g)
    db.flush()
    cols = ("node_id", "group_id", "hour", "covered_us", "intervals", "cpu_usec",
            "memory_byte_seconds", "io_rbytes", "io_wbytes", "oom_kills", "cpu_user_usec",
            "cpu_system_usec", "cpu_throttled_usec", "io_rios", "io_wios", "io_dbytes",
            "oom_events", "storage_byte_seconds")
    rows = []
    for i in range(hours):
        rows.append((node_id, g.id, T0 + timedelta(hours=i), HOUR_US, 360,
                     BIG + 977 * i, TIB10 * 3600 + i, BIG + 3 * i, BIG - 5 * i, 1,
                     0, 0, 0, 0, 0, 0, 1, BIG + 11 * i))
    bulk_insert_ignore(db, "rollups_hourly", cols, rows, ts_index=2)
    db.commit()
    return {"cpu_usec": sum(r[5] for r in rows), "memory_byte_seconds": sum(r[6] for r in rows),
            "io_rbytes": sum(r[7] for r in rows), "io_wbytes": sum(r[8] for r in rows),
            "oom_kills": hours, "storage_byte_seconds": sum(r[17] for r in rows)}


@pytest.mark.parametrize("years", [1, 10])
def test_sums_past_2_63_are_exact(session: Session, years: int) -> None:  # noqa: F811
    hours = years * 8760
    want = _rollups(session, hours)
    assert want["cpu_usec"] > 2**63 and want["io_wbytes"] > 2**63
    assert want["storage_byte_seconds"] > 2**63   # the writable layers too (issue #19)
    end = T0 + timedelta(hours=hours)
    # a period cut inside the first and last hour too (the shares are exact)
    [row] = usage_report(session=session, start=T0, end=end, by="group").rows
    assert row.cpu_core_hours == (D(want["cpu_usec"]) / D(HOUR_US)).quantize(D("1e-9"))
    assert row.io_read_gib == (D(want["io_rbytes"]) / D(GIB)).quantize(D("1e-9"))
    assert row.memory_gib_hours == (D(want["memory_byte_seconds"]) / D(GIB * 3600)).quantize(
        D("1e-9"))
    assert row.oom_kills == hours
    assert row.storage_gib_hours == (D(want["storage_byte_seconds"]) / D(GIB * 3600)
                                     ).quantize(D("1e-9"))

    inv = invoice(session=session, policy=_policy(), tenant="acme", start=T0, end=end)
    by = {x.resource: x for x in inv.lines}
    assert by["cpu"].amount == _amount(want["cpu_usec"], HOUR_US, D("0.04"), "EUR")
    assert by["io_write"].amount == _amount(want["io_wbytes"], GIB, D("0.02"), "EUR")
    assert by["memory"].amount == _amount(want["memory_byte_seconds"] * 1_000_000,
                                          GIB * HOUR_US, D("0.005"), "EUR")
    assert by["storage"].amount == _amount(want["storage_byte_seconds"] * 1_000_000,
                                           GIB * HOUR_US, D("0.0002"), "EUR")
    assert inv.total == sum((x.amount for x in inv.lines), D(0))
    # the exact figure, spelt out once: 8760 hours of 2**62 + 977 i microseconds of CPU
    if years == 1:
        assert want["cpu_usec"] == 8760 * BIG + 977 * 8759 * 8760 // 2
        assert by["cpu"].amount == D("448870772460.68")
        # and 8760 hours of 2**62 + 11 i byte-seconds of writable layers, at 0.0002
        assert want["storage_byte_seconds"] == 8760 * BIG + 11 * 8759 * 8760 // 2
        assert by["storage"].amount == D("2090217.42")

    # a period starting and ending inside an hour: the whole hours plus exact shares
    half = timedelta(minutes=30)
    [cut] = usage_report(session=session, start=T0 + half, end=end - half, by="group").rows
    exact_cpu = want["cpu_usec"] - BIG // 2 - (BIG + 977 * (hours - 1) + 1) // 2
    assert cut.cpu_core_hours == (D(exact_cpu) / D(HOUR_US)).quantize(D("1e-9"))

    # the "max" basis sums (usage wins / reserved time) past 2**63 too: with 20 TiB
    # reserved the reservation wins every hour, with 1 TiB the usage does
    [(node_id, gid)] = session.execute(select(Group.node_id, Group.id)).all()
    for reserved, wins, covered in ((20 << 40, 0, hours * HOUR_US),
                                    (1 << 40, want["memory_byte_seconds"], 0)):
        [t] = sum_pieces(session=session, pieces=[(T0, end)], group_ids=select(Group.id),
                         reserved={(node_id, gid, 0): reserved}).values()
        assert (t.cpu_usec, t.memory_byte_seconds) == (want["cpu_usec"],
                                                       want["memory_byte_seconds"])
        assert t.storage_byte_seconds == want["storage_byte_seconds"]
        assert (t.mem_usage_wins, t.covered_reserved_us) == (wins, covered)
