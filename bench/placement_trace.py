# needs: kernel
# timeout: 1800
"""Where the time of a move goes, from the kernel's own tracepoints.

Run inside the sandbox: ``bench/run placement_trace [--rate 20] [--seconds 10]
[--daemons governor governor-nowarm cgrulesengd]``.

bench/placement.py measures exec-to-placed from the outside.  This splits it, for each
process the load generator spawns (``sleep``, matched by the same rule as there), with
the timestamps of three tracepoints (tracefs, mounted in the guest if needed):

* ``sched:sched_process_exec`` of the child: the clock starts;
* ``raw_syscalls:sys_enter`` (write) of the daemon thread that moves it: the daemon's
  **reaction** (exec event received, /proc read, rule matched) ends;
* ``cgroup:cgroup_attach_task`` of the child, by that thread: the kernel's **wait** inside
  the write ends.  Without ``favordynmods`` that wait is the RCU grace period of
  ``cgroup_threadgroup_rwsem``'s switch to its writer mode, unless the rwsem is still in
  that mode from an earlier writer (keep_warm's purpose);
* ``raw_syscalls:sys_exit`` (write) of that thread: the move is done.

Daemons: ``governor`` (the Placer with the daemon's keep_warm), ``governor-nowarm``
(keep_warm = 0), ``cgrulesengd`` (libcgroup, rule ``*:sleep cpu,memory``: it writes each
pid twice, once per controller named; the second write's wait is shown apart).  The mount
is the VM's default one (no favordynmods) unless ``--favordynmods``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import placement as P  # bench/placement.py: the daemons, the load, the rule

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.tree import create, remove
from governor.config import Config

TRACE = Path("/sys/kernel/tracing")
EVENTS = ("sched/sched_process_exec", "cgroup/cgroup_attach_task", "raw_syscalls/sys_enter",
          "raw_syscalls/sys_exit")
WRITE_NR = 1  # x86-64
LINE = re.compile(r"\s*(.+?)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (\w+): (.*)")


def tw(path: str, value: str) -> None:
    (TRACE / path).write_text(value)


def trace_on(tids: list[str]) -> None:
    tw("tracing_on", "0")
    tw("trace", "")
    tw("buffer_size_kb", "16384")
    mine = " || ".join(f"common_pid == {t}" for t in tids)
    for ev in ("raw_syscalls/sys_enter", "raw_syscalls/sys_exit"):
        tw(f"events/{ev}/filter", f"id == {WRITE_NR} && ({mine})")
    for ev in EVENTS:
        tw(f"events/{ev}/enable", "1")
    tw("tracing_on", "1")


def trace_off() -> str:
    tw("tracing_on", "0")
    for ev in EVENTS:
        tw(f"events/{ev}/enable", "0")
    return (TRACE / "trace").read_text()


def analyse(text: str) -> dict[str, list[float]]:
    """Per moved child: react / wait / after / total (seconds), and the wait of a second
    write of the same pid (cgrulesengd)."""
    execs: dict[int, float] = {}
    enter: dict[int, float] = {}       # writer tid -> last write entry
    rows: list[list[float | int | None]] = []  # [pid, tid, entered, attached, exited]
    for ln in text.splitlines():
        if ln.startswith("#"):
            continue
        m = LINE.match(ln)
        if not m:
            continue
        tid, ts, ev, rest = int(m.group(2)), float(m.group(3)), m.group(4), m.group(5)
        if ev == "sched_process_exec" and "filename=/usr/bin/sleep" in rest:
            pm = re.search(r" pid=(\d+)", rest)
            if pm:
                execs[int(pm.group(1))] = ts
        elif ev == "sys_enter":
            enter[tid] = ts
        elif ev == "cgroup_attach_task":
            pm = re.search(r" pid=(\d+)", rest)
            if pm:
                rows.append([int(pm.group(1)), tid, enter.get(tid), ts, None])
        elif ev == "sys_exit":
            for r in reversed(rows):
                if r[1] == tid and r[4] is None:
                    r[4] = ts
                    break
    out: dict[str, list[float]] = {"react": [], "wait": [], "after": [], "total": [],
                                   "second wait": []}
    seen: set[int] = set()
    for pid, _tid, entered, attached, exited in rows:
        assert isinstance(pid, int) and isinstance(attached, float)
        if pid not in execs or entered is None:
            continue
        assert isinstance(entered, float)
        done = exited if isinstance(exited, float) else attached
        if pid in seen:
            out["second wait"].append(attached - entered)
            continue
        seen.add(pid)
        out["react"].append(entered - execs[pid])
        out["wait"].append(attached - entered)
        out["after"].append(done - attached)
        out["total"].append(done - execs[pid])
    return out


def q(v: list[float], p: float) -> float:
    if not v:
        return math.nan
    s = sorted(v)
    return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))] * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=20.0, help="spawns a second offered")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--daemons", nargs="+", default=["governor", "governor-nowarm",
                                                     "cgrulesengd"],
                    choices=("governor", "governor-nowarm", "cgrulesengd"))
    ap.add_argument("--favordynmods", action="store_true",
                    help="remount with favordynmods first (Linux 6.0+)")
    args = ap.parse_args()
    if os.environ.get("GOVERNOR_SANDBOX") != "1":
        print("placement_trace: run inside the sandbox: bench/run placement_trace",
              file=sys.stderr)
        return 2
    if not (TRACE / "trace").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACE)], check=True)
    opts = P.set_favordynmods(args.favordynmods)
    cfg = Config()
    print(f"cgroup2 mount: {opts}; {args.rate:g} spawns/s offered for {args.seconds:g} s; "
          f"governor keep_warm {cfg.keep_warm:g} s every {cfg.keep_warm_interval * 1e3:g} ms",
          flush=True)
    fs = CgroupFS(P.ROOT)
    subtree = f"bench-{uuid.uuid4().hex[:8]}"
    create(fs, f"{subtree}/t/g", ("cpu", "memory"))
    target = f"/{subtree}/t/g"
    policy = Path(f"/tmp/{subtree}.toml")
    policy.write_text(P.POLICY)
    results: dict[str, tuple[dict[str, list[float]], P.Result]] = {}
    try:
        for name in args.daemons:
            daemon: P.Governor | P.Cgrulesengd = (
                P.Cgrulesengd(f"{subtree}/t/g") if name == "cgrulesengd" else
                P.Governor(subtree, policy, cfg.listener_nice,
                           0.0 if name == "governor-nowarm" else cfg.keep_warm))
            try:
                P.wait_ready(target, daemon)
                trace_on([t.name for t in Path(f"/proc/{daemon.p.pid}/task").iterdir()])
                try:
                    r = P.run_load(target, args.rate, int(args.rate * args.seconds), 0.5,
                                   args.seconds)
                finally:
                    text = trace_off()
            finally:
                daemon.stop()
            results[name] = (analyse(text), r)
            print(f"{name}: spawned {r['spawned']}, placed {r['placed']}, misses "
                  f"{r['misses']}, exec-to-placed seen by the load p50 {P.fmt_ms(r['p50'])} ms",
                  flush=True)
    finally:
        remove(fs, subtree)
        policy.unlink(missing_ok=True)

    print()
    print("per move, ms (VM, TCG): react = exec -> the daemon's write(2); wait = write(2) -> "
          "the kernel attaches the task; total = exec -> write(2) returns")
    head = (f"{'daemon':<16} {'moves':>5} | {'react p50':>9} {'p90':>6} | {'wait p10':>8} "
            f"{'p50':>6} {'p90':>6} | {'total p50':>9} {'p90':>6} | {'2nd wait p50':>12}")
    print(head)
    print("-" * len(head))
    for name, (st, _r) in results.items():
        print(f"{name:<16} {len(st['total']):>5} | {q(st['react'], .5):>9.2f} "
              f"{q(st['react'], .9):>6.2f} | {q(st['wait'], .1):>8.2f} {q(st['wait'], .5):>6.2f} "
              f"{q(st['wait'], .9):>6.2f} | {q(st['total'], .5):>9.2f} {q(st['total'], .9):>6.2f}"
              f" | {q(st['second wait'], .5):>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
