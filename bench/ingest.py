"""Ingest throughput: record_samples of N raw samples in batches, SQLite and PostgreSQL.

    .venv/bin/python bench/ingest.py                       # SQLite in a temp dir
    .venv/bin/python bench/ingest.py --url "$GOVERNOR_TEST_PG_URL"
Targets: SQLite >= 100,000 samples/s, PostgreSQL >= 50,000 samples/s.
Each sample carries every counter and one io.stat device (so 2 rows per sample).
The PostgreSQL URL's database gets a fresh scratch database created and dropped.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from governor.metering.sample import GroupSample
from governor.store.db import make_engine, normalize_url, session_factory, upgrade
from governor.store.service import Incarnations, record_samples


def samples(groups: int, ticks: int, t0: datetime) -> list[list[GroupSample]]:
    batches = []
    for k in range(ticks):
        wall = t0 + timedelta(seconds=10 * k)
        batches.append([GroupSample(
            node="bench", tenant=f"t{g % 50}", group=f"g{g}", cgroup_id=1000 + g, wall=wall,
            monotonic=10.0 * k, cpu_usage_usec=k * 1000, cpu_user_usec=k * 700,
            cpu_system_usec=k * 300, cpu_nr_periods=k, cpu_nr_throttled=0,
            cpu_throttled_usec=0, memory_current=1 << 30, memory_peak=1 << 30,
            memory_swap_current=0, memory_events_low=0, memory_events_high=0,
            memory_events_max=0, memory_events_oom=0, memory_events_oom_kill=0,
            memory_events_oom_group_kill=0, memory_stat_anon=1 << 29,
            memory_stat_file=1 << 29, memory_stat_kernel=1 << 20, memory_stat_sock=0,
            memory_stat_shmem=0, pids_current=5,
            io={"8:0": {"rbytes": k * 4096, "wbytes": k * 8192, "rios": k, "wios": 2 * k,
                        "dbytes": 0}},
            psi={"cpu_some": k, "cpu_full": 0, "memory_some": 0, "memory_full": 0,
                 "io_some": 0, "io_full": 0},
        ) for g in range(groups)])
    return batches


def run(url: str, total: int, batch: int, *, cache: bool) -> tuple[float, float]:
    """(samples per wall-clock second, samples per second of this process's CPU time).

    On a shared, busy machine the CPU-time rate is the better estimate of what an idle
    machine does for SQLite (which runs in-process); PostgreSQL's work is in the server."""
    engine = make_engine(url)
    upgrade(engine)
    ticks = total // batch
    data = samples(batch, ticks, datetime(2026, 11, 1, tzinfo=UTC))
    factory = session_factory(engine)
    known = Incarnations() if cache else None
    start = time.perf_counter()
    cpu = time.process_time()
    for b in data:
        with factory() as session, session.begin():
            record_samples(session=session, node="bench", samples=b, incarnations=known)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    engine.dispose()
    return ticks * batch / elapsed, ticks * batch / cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", help="database URL (default: a temp SQLite file)")
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=5_000, help="samples per batch (= groups)")
    ap.add_argument("--no-cache", action="store_true",
                    help="look group incarnations up in every batch (no Incarnations cache)")
    args = ap.parse_args()
    cache = not args.no_cache
    how = "with" if cache else "without"
    if args.url is None:
        with tempfile.TemporaryDirectory() as tmp:
            rate = run(f"sqlite:///{tmp}/bench.db", args.rows, args.batch, cache=cache)
        print(f"sqlite: {args.rows:,} samples in batches of {args.batch:,} ({how} the "
              f"incarnation cache): {rate[0]:,.0f} samples/s wall-clock, "
              f"{rate[1]:,.0f} samples/s of CPU time")
        return
    server = normalize_url(args.url)
    name = f"gov_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        rate = run(server.set(database=name).render_as_string(hide_password=False),
                   args.rows, args.batch, cache=cache)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    print(f"postgresql: {args.rows:,} samples in batches of {args.batch:,} ({how} the "
          f"incarnation cache): {rate[0]:,.0f} samples/s wall-clock "
          f"({rate[1]:,.0f}/s of client CPU time)")


if __name__ == "__main__":
    main()
