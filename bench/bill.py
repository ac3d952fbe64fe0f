"""A month's invoice for 1,000 groups from hourly rollups (target: < 1 s).

    .venv/bin/python bench/bill.py                       # SQLite in a temp dir
    .venv/bin/python bench/bill.py --url "$GOVERNOR_TEST_PG_URL"
One tenant, 1,000 groups on one node, 720 hourly rollups each (720,000 rows), a price change
in the middle of the month (two lines per group and resource).  Timed for the three memory
bases; "max" with a memory.min reservation on every group takes the per-hour path.

Then the same month up to a moment inside its last hour ("up to now", issue #18), whose
intervals are stored as the daemon writes them (one a minute per group: 60,000 rows that
add up to that hour's rollups): that hour is read from its intervals, the one crossing the
end split by its time share.  The whole month's bills above read none of them.

Last, the daemon's billed-cost gauge at that moment (issue #16): ``RunningBills`` (the
settled hours summed once and kept, governor.billing.running), its first update five
minutes before (the month read whole) and the next one (the last two hours read), against
the whole month's node bill it replaces, which the gauge read every five minutes before;
the totals must be equal.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers

from sqlalchemy import text

from governor.billing.report import invoice
from governor.billing.running import RunningBills
from governor.metering.rollup import ROLLUP_QUANTITIES
from governor.policy.model import Limits, Policy, PricePlan, PriceVersion, Tenant
from governor.store.bulk import bulk_insert_ignore, ts_converter
from governor.store.db import make_engine, normalize_url, session_factory, upgrade
from governor.store.service import ensure_node, incarnation_ids, record_applied_policy
from tests.helpers.db import make_sample

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)
GROUPS = 1000


def policy(basis: str) -> Policy:
    d = Decimal
    versions = (PriceVersion(None, d("0.04"), d("0.005"), d("0.01"), d("0.02"), d("0.5")),
                PriceVersion(START + timedelta(days=15, hours=7, minutes=30), d("0.05"),
                             d("0.006"), d("0.01"), d("0.02"), d("0.5")))
    return Policy(tenants={"acme": Tenant("acme", "std", Limits(), {})},
                  plans={"std": PricePlan("std", "EUR", versions, basis)},  # type: ignore[arg-type]
                  sources=("bench",), digest="bench")


def load(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    with session_factory(engine)() as session, session.begin():
        node_id = ensure_node(session=session, name="n1")
        ids = incarnation_ids(session=session, node_id=node_id, samples=[
            make_sample(group=f"g{g:04d}", cgroup_id=5000 + g, wall=START)
            for g in range(GROUPS)])
        cols = ("node_id", "group_id", "hour", "covered_us", "intervals", *ROLLUP_QUANTITIES)
        hours = int((END - START) / timedelta(hours=1))
        for h in range(hours):
            hour = START + timedelta(hours=h)
            rows = [(node_id, gid, hour, 3_600_000_000, 360, 1_800_000_000 + g, 0, 0, 0,
                     (1 << 30) * 3600 + g, 1 << 20, 1 << 21, 256, 512, 0, 0, g % 2,
                     (g % 2) * (2 << 30) * 3600)   # storage: every other group
                    for g, gid in enumerate(ids.values())]
            bulk_insert_ignore(session, "rollups_hourly", cols, rows, ts_index=2)
        # the last hour's intervals, a minute each, adding up to its rollups exactly
        last = END - timedelta(hours=1)
        conv = ts_converter(session)
        ivs = []
        for row in rows:
            for i in range(60):
                a = last + timedelta(minutes=i)
                ivs.append((node_id, row[1], conv(a + timedelta(minutes=1)), conv(a),
                            60_000_000, False,
                            *(v * (i + 1) // 60 - v * i // 60 for v in row[5:])))
        bulk_insert_ignore(session, "usage_intervals", (
            "node_id", "group_id", "end_ts", "start_ts", "duration_us", "from_creation",
            *ROLLUP_QUANTITIES), ivs, ts_index=None)
        record_applied_policy(session=session, node="n1", applied_at=START, policy_hash="b",
                              trigger="bench", writes=[
                                  {"path": f"acme/g{g:04d}", "file": "memory.min",
                                   "value": str((1 << 30) + (g - 500) * (1 << 20))}
                                  for g in range(GROUPS)])
    # statistics, as autovacuum (PostgreSQL) or `PRAGMA optimize` (SQLite) would gather
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    engine.dispose()


def bench(url: str, label: str) -> None:
    load(url)
    engine = make_engine(url)
    for basis in ("usage", "reservation", "max"):
        with session_factory(engine)() as session:
            t, cpu = time.perf_counter(), time.process_time()
            inv = invoice(session=session, policy=policy(basis), tenant="acme", start=START,
                          end=END)
            elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        # the CPU time of this process is the whole work for SQLite (in-process) and the
        # client's share for PostgreSQL; on a busy shared machine it is the fairer figure
        print(f"{label}: month bill, {GROUPS} groups, memory basis {basis}: {elapsed:.3f} s "
              f"wall-clock, {cpu:.3f} s CPU ({len(inv.lines)} lines, total {inv.total} "
              f"{inv.currency})")
    now = END - timedelta(minutes=20, seconds=30)
    for basis in ("usage", "max"):
        with session_factory(engine)() as session:
            t, cpu = time.perf_counter(), time.process_time()
            inv = invoice(session=session, policy=policy(basis), tenant="acme", start=START,
                          end=now)
            elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        print(f"{label}: month bill up to {now:%H:%M:%S} of its last day (that hour from its "
              f"60,000 intervals), memory basis {basis}: {elapsed:.3f} s wall-clock, "
              f"{cpu:.3f} s CPU ({len(inv.lines)} lines, total {inv.total} {inv.currency})")
    for basis in ("usage", "max"):
        pol = policy(basis)
        running = RunningBills()
        times = []
        for at in (now - timedelta(minutes=5), now):
            with session_factory(engine)() as session:
                cpu = time.process_time()
                got = running.bills(session=session, policy=pol, digest=basis, node="n1",
                                    now=at)
                times.append(time.process_time() - cpu)
        with session_factory(engine)() as session:
            cpu = time.process_time()
            whole = invoice(session=session, policy=pol, tenant="acme", start=START, end=now,
                            node="n1")
            full = time.process_time() - cpu
        if got != {("acme", whole.currency): whole.total}:
            raise SystemExit(f"the gauge {got} differs from the node bill {whole.total}")
        print(f"{label}: cost gauge at {now:%H:%M:%S}, memory basis {basis}: the node's month "
              f"bill {full:.3f} s CPU; RunningBills first update {times[0]:.3f} s, next "
              f"{times[1]:.3f} s (ratio whole / next {full / times[1]:.0f}x); "
              f"total {whole.total} {whole.currency} in both")
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    args = ap.parse_args()
    if args.url is None:
        with tempfile.TemporaryDirectory() as tmp:
            bench(f"sqlite:///{tmp}/bill.db", "sqlite")
        return
    server = normalize_url(args.url)
    name = f"gov_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        bench(server.set(database=name).render_as_string(hide_password=False), "postgresql")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
