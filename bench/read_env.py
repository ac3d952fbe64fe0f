# needs: kernel
"""Whether what the daemon's process is like slows the sampler's reads (issue #16).

Run inside the sandbox: ``bench/run read_env [--groups 1000] [--rounds 6]
[--ballast 48]``.

In ``bench/run daemon_cost`` the daemon's read stage (``governor_pass_cpu_seconds_total``
``stage="read"``: ``Sampler.sample()`` and nothing else) has measured 0.96 to 1.15 times
what the sampler alone's process pays for the same passes over the same groups.  The
daemon reads the same files (``memory.events`` fewer times), so the difference is in what
the process around the reads is like.  This benchmark changes one thing at a time around
``Sampler.sample()`` in one process over the same groups (made as ``daemon_cost`` has
them), in rounds, and times each pass by this thread's CPU clock:

- ``plain``: the sampler alone's process;
- ``threads``: the daemon's GIL switch interval (1 ms) and three threads waking as the
  daemon's do (a ``select`` with a 0.5 s timeout, the exporter's server loop; a 1 s
  sleep loop; an idle ``select`` on a pipe);
- ``heap``: ``--ballast`` MiB of live Python objects (dicts, tuples, strings; the
  daemon's RSS is about 45 MiB more than the sampler alone's), walked once before each
  pass as the daemon's exposition and meter walk theirs;
- ``plain`` again at the end of each round, after the ballast is dropped.

Prints the median of each condition's passes and its ratio to ``plain``.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vmtree import tenants_of_100

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import raise_nofile_limit
from governor.daemon.heap import trim_heap
from governor.metering.sampler import Sampler

CONDITIONS = ("plain", "threads", "heap", "plain after")


def ballast(mib: int) -> list[Any]:
    """About ``mib`` MiB of small live objects, as a daemon's heap holds them."""
    out: list[Any] = []
    rss0 = rss_kib()
    i = 0
    while rss_kib() - rss0 < mib * 1024:
        out.extend({"k": i + j, "v": (str(i + j), i + j, float(i))} for j in range(10_000))
        i += 10_000
    return out


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def walk(objs: list[Any]) -> int:
    return sum(len(d) for d in objs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--passes", type=int, default=3, help="passes per condition per round")
    ap.add_argument("--ballast", type=int, default=48, metavar="MIB")
    args = ap.parse_args()
    if os.environ.get("GOVERNOR_SANDBOX") != "1":
        print("read_env: run inside the sandbox: bench/run read_env", file=sys.stderr)
        return 2
    raise_nofile_limit()
    fs = CgroupFS(Path("/sys/fs/cgroup"))
    stop = threading.Event()
    rd, wr = os.pipe()
    with tenants_of_100(fs, args.groups, prefix="readenv") as scratch:
        sampler = Sampler(fs, scratch, "vm")
        for _ in range(3):   # files opened, the slow tier's first round
            sampler.sample()
        times: dict[str, list[float]] = {c: [] for c in CONDITIONS}

        def passes(cond: str, before: Any = None) -> None:
            for _ in range(args.passes):
                if before is not None:
                    before()
                t0 = time.thread_time()
                sampler.sample()
                times[cond].append(time.thread_time() - t0)
                time.sleep(0.5)

        def serve() -> None:   # the exporter's loop: select with a 0.5 s timeout
            while not stop.is_set():
                select.select([rd], [], [], 0.5)

        def tick() -> None:
            while not stop.is_set():
                time.sleep(1.0)

        def idle() -> None:
            select.select([rd], [], [])

        for r in range(args.rounds):
            passes("plain")
            switch = sys.getswitchinterval()
            sys.setswitchinterval(0.001)
            stop.clear()
            threads = [threading.Thread(target=f, daemon=True) for f in (serve, tick, idle)]
            for th in threads:
                th.start()
            passes("threads")
            stop.set()
            os.write(wr, b"x")
            for th in threads:
                th.join()
            os.read(rd, 1)
            sys.setswitchinterval(switch)
            held = ballast(args.ballast)
            passes("heap", before=lambda held=held: walk(held))
            del held
            trim_heap()
            passes("plain after")
            print(f"round {r + 1}: " + ", ".join(
                f"{c} {statistics.median(times[c]) * 1e3:.1f}" for c in CONDITIONS), flush=True)
        stop.set()
    base = statistics.median(times["plain"])
    print(f"Sampler.sample() at {args.groups} groups, CPU ms a pass (median of "
          f"{args.rounds * args.passes} passes each), ratio to plain:")
    for c in CONDITIONS:
        m = statistics.median(times[c])
        print(f"  {c:<12} {m * 1e3:8.1f}   {m / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
