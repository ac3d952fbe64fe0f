"""How long the placement listener waits for the GIL while the daemon runs a pass (host).

In ``governor run`` the Placer's listener thread shares the interpreter with the sampling
pass.  When an exec event wakes it (its ``recv`` returns), it needs the GIL before it can
place the process.  A thread busy in Python hands the GIL over after the switch interval
(``sys.setswitchinterval``, CPython's default 5 ms); a thread inside one long C call (the
sampler's C fast pass) only when the call returns.

This runs what the daemon's pass runs (``Sampler.sample``, ``record_samples``, ``meter``
on SQLite) over N groups of a fake tree (real 6.1 kernel file contents,
tests/unit/cgroupfs_fake) in the main thread, and a waiter thread that, like the listener,
sleeps in a syscall that releases the GIL and measures, on waking, how late it got to run
Python code (wake time minus the time asked for).  Configurations, interleaved round by
round: the C fast pass in chunks of ``FAST_CHUNK`` groups or in one call, and the switch
interval at CPython's 5 ms or at the daemon's; last (gc.freeze is one-way), as the daemon
runs: its start-up heap frozen (``settle_heap``) too.  Baseline: the waiter alone.

    .venv/bin/python bench/gil_wait.py [--groups 1000] [--seconds 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import raise_nofile_limit
from governor.daemon import SWITCH_INTERVAL, settle_heap
from governor.metering import sampler as sampler_mod
from governor.metering.catchup import meter
from governor.metering.sampler import Sampler
from governor.store.db import make_engine, scope_factory, upgrade
from governor.store.service import record_samples
from tests.unit.cgroupfs_fake import create_groups


def waiter(stop: threading.Event, lates: list[float]) -> None:
    rng = random.Random(1)
    while not stop.is_set():
        want = rng.uniform(0.001, 0.004)
        t0 = time.perf_counter()
        time.sleep(want)  # releases the GIL, as the listener's recv(2) does
        lates.append(time.perf_counter() - t0 - want)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=6.0, help="per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    raise_nofile_limit()  # as the daemon does: an fd per stat file of every group
    tmp = Path(tempfile.mkdtemp(prefix="governor-gil-"))
    create_groups(tmp / "cg" / "gov", args.groups)
    url = f"sqlite:///{tmp}/governor.db"
    upgrade(url)
    scope = scope_factory(make_engine(url))
    sampler = Sampler(CgroupFS(tmp / "cg", verify=False), "gov", "bench")
    if sampler._fast_pass is None:
        print("gil_wait: the C accelerator is not in use (pip install -e .)", file=sys.stderr)
        return 2
    chunk = sampler_mod.FAST_CHUNK
    configs = [("baseline (no pass running)", None, 0.005),
               ("one C call per pass, switch 5 ms", 10**9, 0.005),
               (f"chunks of {chunk}, switch 5 ms", chunk, 0.005),
               (f"chunks of {chunk}, switch {SWITCH_INTERVAL * 1e3:g} ms (the daemon's)",
                chunk, SWITCH_INTERVAL)]
    daemon = (f"chunks of {chunk}, switch {SWITCH_INTERVAL * 1e3:g} ms, heap frozen (daemon)",
              chunk, SWITCH_INTERVAL)
    lates: dict[str, list[float]] = {c[0]: [] for c in [*configs, daemon]}
    passes: dict[str, list[float]] = {c[0]: [] for c in [*configs, daemon]}
    sampler.sample()  # the slow tier opens everything
    frozen = 0
    schedule = [configs] * args.rounds + [[daemon]] * args.rounds
    for r, todo in enumerate(schedule):
        if r == args.rounds:
            frozen = settle_heap()
        for label, fast_chunk, interval in todo:
            sys.setswitchinterval(interval)
            stop = threading.Event()
            got: list[float] = []
            th = threading.Thread(target=waiter, args=(stop, got))
            th.start()
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                if fast_chunk is None:
                    time.sleep(0.05)
                    continue
                sampler_mod.FAST_CHUNK = fast_chunk
                t0 = time.perf_counter()
                ps = sampler.sample()
                with scope() as session:
                    record_samples(session=session, node="bench", samples=ps.samples)
                with scope() as session:
                    meter(session=session, node="bench")
                passes[label].append(time.perf_counter() - t0)
                time.sleep(0.02)
            stop.set()
            th.join()
            lates[label].extend(got)
    sampler_mod.FAST_CHUNK = chunk
    sys.setswitchinterval(0.005)
    print(f"gil_wait: {args.groups} groups, {args.rounds} rounds x {args.seconds:g} s per "
          "configuration; the waiter's lateness on waking, ms (OS wake-up + GIL wait)")
    print(f"(the last row after gc.freeze of {frozen} objects, its rounds after the others)")
    print(f"{'configuration':<46} {'wakes':>6} {'p50':>7} {'p99':>7} {'max':>7} "
          f"{'pass ms':>8}")
    for label, *_ in [*configs, daemon]:
        xs = lates[label]
        ps_ = passes[label]
        print(f"{label[:46]:<46} {len(xs):>6} {pct(xs, .5) * 1e3:>7.2f} {pct(xs, .99) * 1e3:>7.2f} "
              f"{max(xs) * 1e3:>7.2f} "
              f"{(sum(ps_) / len(ps_) * 1e3 if ps_ else float('nan')):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
