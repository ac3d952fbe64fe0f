# needs: kernel
"""One sampling pass over N groups: fd-cached pread reader vs reopening every file.

Run inside the sandbox (``bench/run read_stats``). Creates N leaf groups under a scratch
subtree of the VM's cgroup2 root, each with cpu io memory pids enabled, puts one sleeping
process in every tenth group so the counters are not all zero, then times passes of
``StatReader.read`` (fds opened once, re-read with pread) against ``read_stats_reopen``
(open, read, close for every file) over the same groups, in alternation, and prints the
medians and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.managed import MANAGED_CONTROLLERS
from governor.cgroupfs.reader import StatReader, raise_nofile_limit, read_stats_reopen
from governor.cgroupfs.tree import create, move, remove


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--groups", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--passes", type=int, default=9)
    args = ap.parse_args()
    if os.environ.get("GOVERNOR_SANDBOX") != "1":
        print("read_stats: run inside the sandbox: bench/run read_stats", file=sys.stderr)
        return 2
    nofile = raise_nofile_limit()  # ~12 fds per group: the default 1024 is too few
    print(f"RLIMIT_NOFILE soft limit: {nofile}")
    root = Path("/sys/fs/cgroup")
    scratch = f"bench-{uuid.uuid4().hex[:8]}"
    fs = CgroupFS(root)
    print(f"{'groups':>7} {'files/pass':>10} {'pread ms':>9} {'reopen ms':>10} "
          f"{'us/group pread':>15} {'us/group reopen':>16} {'reopen/pread':>13}")
    for n in args.groups:
        names = [f"{scratch}/t{i // 100}/g{i}" for i in range(n)]
        sleepers = []
        for i, g in enumerate(names):
            create(fs, g, MANAGED_CONTROLLERS)
            if i % 10 == 0:
                p = subprocess.Popen(["sleep", "600"])
                move(fs, g, p.pid)
                sleepers.append(p)
        reader = StatReader(fs)
        for g in names:  # warm: open every fd once, as the sampler's first pass does
            reader.read(g)
        files = sum(len(reader._groups[g].fds) for g in names)
        t_pread: list[float] = []
        t_reopen: list[float] = []
        for _ in range(args.passes):
            t0 = time.perf_counter()
            for g in names:
                reader.read(g)
            t_pread.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for g in names:
                read_stats_reopen(fs, g)
            t_reopen.append(time.perf_counter() - t0)
        reader.close()
        a, b = statistics.median(t_pread), statistics.median(t_reopen)
        print(f"{n:>7} {files:>10} {a * 1e3:>9.1f} {b * 1e3:>10.1f} {a / n * 1e6:>15.1f} "
              f"{b / n * 1e6:>16.1f} {b / a:>12.2f}x", flush=True)
        for p in sleepers:
            p.kill()
            p.wait()
        remove(fs, scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
