# needs: kernel
"""What storing and metering the raw samples costs by itself, next to the reads (issue #16).

Run inside the sandbox: ``bench/run store_floor [--groups 1000] [--passes 30]
[--interval 2] [--write-every 6]``.

The groups are made as ``bench/run daemon_cost`` has them: ``--groups`` groups in tenants
of 100 under a scratch subtree of the VM's cgroup2 root (cpu, io, memory and pids
enabled), one sleeping process per tenant.  Each pass, in this one thread, timed by its
own CPU clock (``time.thread_time``):

1. **reads**: ``Sampler.sample()``, what the sampler alone of ``daemon_cost`` does;
2. **insert floor**: the pass's ``samples`` and ``sample_io`` rows (built beforehand, not
   timed) inserted into a bare ``sqlite3`` connection with the store's schema and
   pragmas, in the multi-row statements the store uses, and committed.  Nothing of
   governor runs in it: it is the least any program pays to keep one row of the 33
   columns per group per pass in SQLite from Python, which the crash test asserts
   (tests/kernel/test_crash_kernel.py);
3. **store**: governor's ``store_samples`` of the pass, into its own database (the row
   builder, the incarnation look-ups, the same INSERTs, the commit);
4. **meter**: ``Meter.step_into`` of the pass (the daemon's in-memory meter);
5. **meter writes**: ``write_metered`` of what it holds, every ``--write-every`` passes
   (the daemon's ``[sampling] write_every``, default 6), counted a pass.

The first two passes (files opened, incarnations made, anchors) are not counted.  The
figures are the mean a pass, and each one's ratio to the reads.  ``reads + insert floor +
meter + meter writes`` over the reads is the least the daemon's ratio in ``daemon_cost``
can be with governor's meter (its C step and its writes) while it stores a row per group
per pass, before anything else it does (placement, enforcement, the OOM watch, the
exposition, its jobs, Python's collector).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateTable
from vmtree import tenants_of_100

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import raise_nofile_limit
from governor.metering.catchup import load_anchors
from governor.metering.meter import IncKey, Meter, Pending
from governor.metering.sampler import Sampler
from governor.store import bulk
from governor.store.db import SQLITE_CACHE_KIB, make_engine, scope_factory, upgrade
from governor.store.metered import write_metered
from governor.store.service import Incarnations, store_samples
from governor.store.tables import metadata

STAGES = ("reads", "insert floor", "store", "meter", "meter writes")


class BareStore:
    """The ``samples`` and ``sample_io`` tables in a bare sqlite3 database, written as
    :func:`governor.store.bulk.bulk_insert_ignore` writes them."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL",
                       f"cache_size=-{SQLITE_CACHE_KIB}"):
            self.db.execute(f"PRAGMA {pragma}")
        for table in ("samples", "sample_io"):
            self.db.execute(str(CreateTable(metadata.tables[table]).compile(
                dialect=sqlite_dialect.dialect())))
        self.db.commit()
        self.ids: dict[IncKey, int] = {}
        self.cache = bulk._TsCache()

    def rows(self, samples: list[Any]) -> bulk.Rows:
        for s in samples:
            self.ids.setdefault((s.tenant, s.group, s.cgroup_id), len(self.ids) + 1)
        self.cache.turn()
        return bulk.sample_rows(samples, self.ids, 1, self.cache)

    def insert(self, rows: bulk.Rows) -> None:
        cur = self.db.cursor()
        for table, columns, data in (("samples", bulk._SAMPLE_COLUMNS, rows[0]),
                                     ("sample_io", bulk._IO_COLUMNS, rows[1])):
            if not data:
                continue
            k, many, one = bulk._sqlite_inserts(table, tuple(columns))
            for params in bulk.flat_chunks(data, k):
                cur.execute(many, params)
            left = len(data) % k
            if left:
                cur.executemany(one, data[len(data) - left:])
        self.db.commit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=30, help="passes counted (2 more first)")
    ap.add_argument("--interval", type=float, default=2.0,
                    help="seconds from a pass's start to the next's")
    ap.add_argument("--write-every", type=int, default=6)
    args = ap.parse_args()
    if os.environ.get("GOVERNOR_SANDBOX") != "1":
        print("store_floor: run inside the sandbox: bench/run store_floor", file=sys.stderr)
        return 2
    raise_nofile_limit()
    fs = CgroupFS(Path("/sys/fs/cgroup"))
    tmp = tempfile.mkdtemp(prefix="governor-floor-")
    with tenants_of_100(fs, args.groups, prefix="floor") as scratch:
        sampler = Sampler(fs, scratch, "vm")
        bare = BareStore(f"{tmp}/bare.db")
        url = f"sqlite:///{tmp}/governor.db"
        upgrade(url)
        scope = scope_factory(make_engine(url))
        incarnations = Incarnations()
        meter = Meter()
        pending: Pending[int] = Pending()
        spent: dict[str, list[float]] = {k: [] for k in STAGES}
        writes = 0
        n = 0
        due = time.monotonic()
        for p in range(args.passes + 2):
            t0 = time.thread_time()
            samples = sampler.sample().samples
            t1 = time.thread_time()
            rows = bare.rows(samples)
            t2 = time.thread_time()
            bare.insert(rows)
            t3 = time.thread_time()
            with scope() as session:
                node_id, ids = store_samples(session=session, node="vm", samples=samples,
                                             incarnations=incarnations)
            t4 = time.thread_time()

            def resolve(unknown: list[Any], node_id: int = node_id,
                        ids: dict[IncKey, int] = ids) -> Any:
                with scope() as session:
                    return load_anchors(session=session, node="vm", node_id=node_id,
                                        samples=unknown, ids=ids)

            anchors = meter.step_into(samples, resolve, pending, ids)
            t5 = time.thread_time()
            if pending.passes >= args.write_every:
                with scope() as session:
                    write_metered(session=session, node_id=node_id,
                                  metered=pending.metered())
                pending.clear()
                if p >= 2:
                    writes += 1
            t6 = time.thread_time()
            meter.advance_to(anchors)
            if p >= 2:
                n = len(samples)
                for k, v in zip(STAGES, (t1 - t0, t3 - t2, t4 - t3, t5 - t4, t6 - t5),
                                strict=True):
                    spent[k].append(v)
            due += args.interval
            time.sleep(max(0.0, due - time.monotonic()))
    mean = {k: statistics.mean(v) * 1e3 for k, v in spent.items()}
    reads = mean["reads"]
    print(f"store floor at {n} groups ({args.groups} + tenants), {args.passes} passes "
          f"counted ({writes} with the meter's write), CPU ms a pass (this thread's)")
    for k in STAGES:
        print(f"  {k:<14} {mean[k]:8.1f}   {mean[k] / reads:5.2f} of the reads")
    floor = (reads + mean["insert floor"] + mean["meter"] + mean["meter writes"]) / reads
    ours = (reads + mean["store"] + mean["meter"] + mean["meter writes"]) / reads
    print(f"reads + insert floor + meter + meter writes: {floor:.2f}x the reads "
          f"(the least the daemon's ratio can be with governor's meter, storing a row "
          f"per group per pass)")
    print(f"reads + store + meter + meter writes:        {ours:.2f}x the reads "
          f"(governor's store: {mean['store'] / mean['insert floor']:.2f}x the insert floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
