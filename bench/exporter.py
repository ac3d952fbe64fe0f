"""Render 100,000 series: governor's renderer vs prometheus-client's ``generate_latest``.

Host only (no kernel): the input is a synthetic snapshot shaped like a real pass (tenants
and groups with cpu, memory, io per device, PSI, limits, costs, health).  Both renderings
are timed in alternation in the same run (best and median of ``--runs``), and both outputs
are parsed with prometheus-client's parser: the samples must be identical.

    bench/run exporter                   # ~100k series
    bench/run exporter --groups 6000 --runs 9

Targets (issue 6): under 150 ms for 100k series on the host, at least 5x faster than
``generate_latest``.  The exit code is 1 when the parsed samples differ or the ratio is
below 5; the absolute time is reported (a loaded shared machine can miss it: compare the
ratio, which is measured in the same conditions).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers

from prometheus_client import CollectorRegistry, generate_latest

from governor.exporter.collector import SnapshotCollector
from governor.exporter.render import render
from tests.helpers.exposition import parsed_samples, snapshot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--groups", type=int, default=3000,
                    help="groups (each ~33 series with one IO device)")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    snap = snapshot(args.groups)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: snap))
    ours: list[float] = []
    theirs: list[float] = []
    body = b""
    ref = b""
    for _ in range(args.runs):
        t0 = time.perf_counter()
        body = render(snap)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = generate_latest(reg)
        theirs.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    gz = gzip.compress(body, compresslevel=6, mtime=0)
    t_gz = time.perf_counter() - t0
    a, b = parsed_samples(body.decode()), parsed_samples(ref.decode())
    series = len(a)
    same = a == b
    best, best_ref = min(ours), min(theirs)
    med, med_ref = statistics.median(ours), statistics.median(theirs)
    print(f"series              {series}")
    print(f"bytes               {len(body)} (gzip {len(gz)}, made in {t_gz * 1e3:.1f} ms)")
    print(f"governor render     best {best * 1e3:8.1f} ms   median {med * 1e3:8.1f} ms")
    print(f"generate_latest     best {best_ref * 1e3:8.1f} ms   median {med_ref * 1e3:8.1f} ms")
    print(f"ratio (best)        {best_ref / best:.1f}x   (median {med_ref / med:.1f}x)")
    print(f"parsed samples      {'identical' if same else 'DIFFERENT'}")
    print(f"target <150 ms      {'met' if best < 0.150 else 'MISSED'}")
    print(f"target >=5x         {'met' if best_ref / best >= 5 else 'MISSED'}")
    return 0 if same and best_ref / best >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
