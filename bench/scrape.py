"""A scrape of /metrics against one sampling pass's reads, and passes while scraped (issue #16).

Run: ``.venv/bin/python bench/scrape.py [--groups 1000] [--scrapes 30] [--passes 12]``
(host: a fake cgroup tree of real 6.1 kernel files, ``tests/unit/cgroupfs_fake``).

1. **Reads**: CPU time of ``Sampler.sample()`` over the groups (what a pass reads), median.
2. **Scrape**: the daemon's ``Exporter`` serves /metrics; before each scrape a new pass is
   published (as the daemon publishes: a function that renders on the first scrape), so
   every scrape renders, gzips and sends the whole exposition: the worst case.  The
   scrapes come from a separate process (its CPU is not counted); this process's CPU time
   over them, divided by their number, is the cost of one scrape.  Goal: below one pass's
   reads.  Its parts are timed too: the render (C families, and the Python twin), the
   gzip copy (level 1: ISA-L's, governor/exporter/compress.py, and zlib's beside it), the
   rest being the HTTP exchange.  Run in the VM
   (``governor sandbox exec -- .venv/bin/python bench/scrape.py``) they show what TCG
   makes of each: zlib's deflate loop suffers far more than the reads' system calls.
   (On the real kernel the reads cost more than these tmpfs reads, so the ratio there is
   more favourable still.)
3. **Passes while scraped**: the wall time of passes (read + publish) alone, then with a
   client scraping every 50 ms: p50 and max side by side.  The exporter renders from
   what the pass produced; a scrape never touches the database.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import raise_nofile_limit
from governor.exporter import render as render_mod
from governor.exporter.compress import ENGINE, gzip_member
from governor.exporter.families import ACCELERATED, family_py
from governor.exporter.render import Health, Snapshot, render
from governor.exporter.server import Exporter
from governor.metering.sampler import Sampler
from tests.unit.cgroupfs_fake import create_groups

CLIENT = """
import sys, time, urllib.request
url, n, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
for line in sys.stdin if n < 0 else range(n):
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
    if n < 0:
        print("ok", flush=True)
    elif every:
        time.sleep(every)
"""


def cpu() -> float:
    return time.process_time()   # every thread of this process (the exporter's too)


def snapshot(sampler: Sampler, pass_s: float) -> Snapshot:
    return Snapshot(node="bench", groups=dict(sampler.latest), limits={}, costs={},
                    pressure_warnings={}, health=Health(
                        pass_duration=pass_s, last_success=time.time(),
                        groups_sampled=len(sampler.latest), placements={}, reloads={},
                        drift={}, enforce_write_errors=0, db_write_errors=0,
                        spool_depth=0, alerts={}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=30)
    ap.add_argument("--passes", type=int, default=12)
    args = ap.parse_args()
    raise_nofile_limit()   # as the daemon: about 12 descriptors per group
    tmp = Path(tempfile.mkdtemp(prefix="governor-scrape-"))
    create_groups(tmp / "cg" / "gov", args.groups)
    fs = CgroupFS(tmp / "cg", verify=False)
    sampler = Sampler(fs, "gov", "bench")
    exp = Exporter("127.0.0.1:0")
    exp.start()
    url = f"http://127.0.0.1:{exp.port}/metrics"

    reads = []
    for _ in range(args.passes):
        c = cpu()
        sampler.sample()
        reads.append(cpu() - c)
    read = statistics.median(reads)

    # scrapes, each of a new publication (every one renders)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, url, "-1", "0"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    snap = snapshot(sampler, 0.1)
    costs = []
    size = 0
    for _ in range(args.scrapes):
        exp.publish(partial(render, snap), created=time.time())
        c = cpu()
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "ok"
        costs.append(cpu() - c)
        size = len(exp.current.body)
    client.stdin.close()
    client.wait()
    scrape = statistics.median(costs)

    # the parts of a scrape: the render (the C families, and the Python twin for
    # comparison) and the gzip copy Prometheus asks for
    def best(f: Callable[[], object], n: int = 7) -> float:
        out = []
        for _ in range(n):
            c = cpu()
            f()
            out.append(cpu() - c)
        return min(out)

    body = render(snap)
    t_render = best(lambda: render(snap))
    with mock.patch.object(render_mod, "family", family_py):
        t_render_py = best(lambda: render(snap))
    t_gzip = best(lambda: gzip_member(body))
    t_zlib = best(lambda: gzip.compress(body, compresslevel=1, mtime=0))

    def passes(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            p = sampler.sample()
            exp.publish(partial(render, snapshot(sampler, p.duration)), created=time.time())
            out.append(time.perf_counter() - t0)
            time.sleep(0.2)
        return out

    alone = passes(args.passes)
    scraper = subprocess.Popen([sys.executable, "-c", CLIENT, url, "100000", "0.05"])
    time.sleep(0.5)
    scraped = passes(args.passes)
    scraper.kill()
    scraper.wait()
    exp.stop()
    sampler.close()
    fs.close()
    n = len(sampler.latest)
    print(f"scrape: {n} groups ({args.groups} + tenants), exposition {size / 1024:.0f} KiB, "
          f"{os.cpu_count()} CPUs; CPU ms, median")
    print(f"  one pass's reads (Sampler.sample)       {read * 1e3:8.1f}")
    print(f"  one scrape (render + gzip + send)       {scrape * 1e3:8.1f}   "
          f"ratio scrape / reads {scrape / read:.2f}")
    print(f"    render {t_render * 1e3:.1f} (C families{'' if ACCELERATED else ': not built'}; "
          f"the Python twin {t_render_py * 1e3:.1f}), gzip level 1 {t_gzip * 1e3:.1f} "
          f"({ENGINE}; zlib's {t_zlib * 1e3:.1f}), the rest the HTTP exchange (best of 7)")
    print("passes (read + publish), wall ms    p50      max")
    print(f"  alone                          {statistics.median(alone) * 1e3:8.1f} "
          f"{max(alone) * 1e3:8.1f}")
    print(f"  scraped every 50 ms            {statistics.median(scraped) * 1e3:8.1f} "
          f"{max(scraped) * 1e3:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
