"""The spool's cost with many samples pending (issue #15 item 8).

    .venv/bin/python bench/spool.py                    # 40,000 pending samples
    .venv/bin/python bench/spool.py --samples 200000 --batch 1000

Fills a spool with ``--samples`` samples in batches of ``--batch`` (one batch per pass
while the database was down), then times what a pass costs while the database is still
down (the check "anything pending?", the depth for the metric, one more batch put) and
the drain into a fresh SQLite database once it is up.  Prints the times and the peak RSS
of this process (ru_maxrss), also as it was after filling (a batch is built, put and
dropped at a time, so filling costs only what ``put`` itself holds).

Measured on the 2-core development machine under load 7-8 (other jobs running),
40,000 samples, 29.7 MiB of journal:
  before (every pass parsed the whole journal: __bool__, pending_samples, put):
    check+depth 6.9 s after a restart and 7.7 s every pass, put 2.7 s, drain 11.6 s,
    peak RSS 143 MiB
  after (counted once from each line's head, one streaming read per drain):
    check+depth 0.12-1.5 s once after a restart, 0.000 s the next pass, put 0.15 s,
    drain 10.9 s (record_samples into SQLite: the rest), peak RSS 70 MiB
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingest import samples  # bench/ingest.py (the script's directory is on sys.path)

from governor.store.db import make_engine, scope_factory, upgrade
from governor.store.spool import Spool


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=40_000)
    ap.add_argument("--batch", type=int, default=1_000)
    args = ap.parse_args()
    ticks = args.samples // args.batch
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.spool"
        spool = Spool(path, max_samples=10 * args.samples)
        t0 = datetime(2026, 11, 1, tzinfo=UTC)
        for k in range(ticks):  # one batch in memory at a time
            spool.put("bench", samples(args.batch, 1, t0 + timedelta(seconds=10 * k))[0],
                      reason="bench")
        extra = samples(args.batch, 1, t0 + timedelta(seconds=10 * ticks))[0]
        size = path.stat().st_size
        rss0 = _rss_mib()
        spool = Spool(path, max_samples=10 * args.samples)  # as after a restart
        t = time.perf_counter()
        pending = bool(spool)
        depth = spool.pending_samples()
        t_check = time.perf_counter() - t
        t = time.perf_counter()
        assert bool(spool) and spool.pending_samples() == depth
        t_again = time.perf_counter() - t
        t = time.perf_counter()
        spool.put("bench", extra, reason="bench")
        t_put = time.perf_counter() - t
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        upgrade(engine)
        t = time.perf_counter()
        drained = spool.drain(scope_factory(engine))
        t_drain = time.perf_counter() - t
        engine.dispose()
        print(f"spool of {depth:,} samples ({ticks} batches of {args.batch:,}, "
              f"{size / 2**20:.1f} MiB), pending={pending}: check+depth {t_check:.3f} s "
              f"after a restart, {t_again:.3f} s the next pass, "
              f"one more put {t_put:.3f} s, drain of {drained} batches into SQLite "
              f"{t_drain:.2f} s; peak RSS {_rss_mib():.0f} MiB (after filling "
              f"{rss0:.0f} MiB)")


if __name__ == "__main__":
    main()
