# needs: kernel
"""Exec-to-placed latency of governor's placement against libcgroup's cgrulesengd.

Run inside the sandbox (``bench/run placement [--seconds 30] [--rates 100 500]
[--burst 500]``).  For each daemon in turn (governor's :class:`Placer` in its own process,
then ``cgrulesengd -n`` with the equivalent rule ``*:sleep cpu,memory <group>``), a load
generator spawns ``sleep`` processes with posix_spawn at fixed rates for the given seconds,
then a burst as fast as it can; it takes the time posix_spawn returns (the exec is done) as
the start and polls each process's ``/proc/PID/cgroup`` until it shows the group.  A process
that exits (after 2 s) without having been seen in its group is a miss.  The poll loop
itself bounds the resolution (printed as "poll ms": the mean time of one pass over the
pending processes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.tree import create, remove

ROOT = Path("/sys/fs/cgroup")
SLEEP = "/usr/bin/sleep"
POLICY = '[tenants.t.groups.g]\n[[tenants.t.groups.g.match]]\ncomm = "sleep"\n'


def serve(subtree: str, policy_file: str) -> int:
    """The governor side: a Placer in this process until SIGTERM; counters to stdout."""
    from governor.placement.placer import Placer
    from governor.policy import load_policy

    pol = load_policy([policy_file])
    with CgroupFS(ROOT) as fs:
        placer = Placer(fs, subtree, lambda: pol, exclude=())
        stop = [False]

        def on_term(_s: int, _f: object) -> None:
            stop[0] = True

        signal.signal(signal.SIGTERM, on_term)
        ok = placer.start()
        print("ready" if ok else "no-connector", flush=True)
        while not stop[0]:
            time.sleep(0.1)
        placer.stop()
        c = placer.counters
        n = sum(c.events.values())
        print(json.dumps({**c.as_dict(), "mean_handle_us": c.handle_seconds / n * 1e6 if n
                          else 0.0}), flush=True)
    return 0


def cgroup_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f.read().strip().split("::", 1)[1]
    except (FileNotFoundError, ProcessLookupError):
        return None


def load(target: str, rate: float | None, count: int) -> dict[str, float]:
    """Spawn ``count`` sleeps at ``rate``/s (None: as fast as possible); measure."""
    pending: dict[int, float] = {}
    latencies: list[float] = []
    misses = 0
    polls: list[float] = []
    spawned = 0
    t_start = time.perf_counter()
    next_at = t_start
    children: set[int] = set()

    def poll() -> None:
        nonlocal misses
        t0 = time.perf_counter()
        for pid, t_exec in list(pending.items()):
            cg = cgroup_of(pid)
            now = time.perf_counter()
            if cg == target:
                latencies.append(now - t_exec)
                del pending[pid]
            elif cg is None or now - t_exec > 2.5:
                misses += 1
                del pending[pid]
        polls.append(time.perf_counter() - t0)

    def reap() -> None:
        for pid in list(children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                children.discard(pid)

    while spawned < count:
        # spawn everything that is due before polling, so a slow poll pass cannot lower the
        # offered rate
        while spawned < count and (rate is None or time.perf_counter() >= next_at):
            pid = os.posix_spawn(SLEEP, [SLEEP, "2"], os.environ)
            pending[pid] = time.perf_counter()
            children.add(pid)
            spawned += 1
            next_at += 1.0 / rate if rate else 0
        poll()
        reap()
    elapsed = time.perf_counter() - t_start
    while pending:
        poll()
        reap()
    while children:
        reap()
        time.sleep(0.05)
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 \
            if latencies else float("nan")

    return {"spawned": spawned, "rate": spawned / elapsed, "placed": len(latencies),
            "misses": misses, "p50": pct(0.50), "p99": pct(0.99),
            "max": latencies[-1] * 1e3 if latencies else float("nan"),
            "poll": statistics.mean(polls) * 1e3 if polls else 0.0}


def start_governor(subtree: str, policy_file: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, __file__, "--serve", subtree, str(policy_file)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != "ready":
        raise SystemExit(f"placement bench: governor did not start ({line!r})")
    return p


def start_cgrulesengd(group_path: str) -> subprocess.Popen[str]:
    Path("/etc/cgconfig.d").mkdir(exist_ok=True)
    Path("/etc/cgconfig.conf").write_text("")
    Path("/etc/cgrules.conf").write_text(f"*:sleep\tcpu,memory\t{group_path}\n")
    p = subprocess.Popen(["cgrulesengd", "-n"], stdout=subprocess.PIPE, text=True,
                         stderr=subprocess.STDOUT)
    time.sleep(2.0)  # it reads the rules and subscribes to the connector
    if p.poll() is not None:
        out = p.stdout.read() if p.stdout else ""
        raise SystemExit(f"cgrulesengd exited {p.returncode}: {out}")
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0])
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--serve", nargs=2, metavar=("SUBTREE", "POLICY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(*args.serve)
    if os.environ.get("GOVERNOR_SANDBOX") != "1":
        print("placement: run inside the sandbox: bench/run placement", file=sys.stderr)
        return 2
    subtree = f"bench-{uuid.uuid4().hex[:8]}"
    fs = CgroupFS(ROOT)
    create(fs, f"{subtree}/t/g", ("cpu", "memory"))
    target = f"/{subtree}/t/g"
    policy_file = Path(f"/tmp/{subtree}.toml")
    policy_file.write_text(POLICY)
    loads: list[tuple[str, float | None, int]] = [
        (f"{r:g}/s x {args.seconds:g}s", r, int(r * args.seconds)) for r in args.rates]
    loads.append((f"burst {args.burst}", None, args.burst))
    results: dict[str, list[dict[str, float]]] = {}
    extra: dict[str, str] = {}
    try:
        for daemon in ("governor", "cgrulesengd"):
            proc = (start_governor(subtree, policy_file) if daemon == "governor"
                    else start_cgrulesengd(f"{subtree}/t/g"))
            try:
                results[daemon] = []
                for name, rate, count in loads:
                    r = load(target, rate, count)
                    results[daemon].append(r)
                    print(f"{daemon:<12} {name:<16} spawned {r['spawned']:.0f} "
                          f"at {r['rate']:.0f}/s: placed {r['placed']:.0f}, misses "
                          f"{r['misses']:.0f}, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, "
                          f"max {r['max']:.2f} ms (poll pass {r['poll']:.2f} ms)", flush=True)
            finally:
                proc.terminate()
                out, _ = proc.communicate(timeout=60)
                if daemon == "governor" and out:
                    stats = json.loads(out.strip().splitlines()[-1])
                    extra["governor"] = (
                        f"governor: {stats['placements']}, events {stats['events']}, "
                        f"overflows {stats['overflows']}, mean handle "
                        f"{stats['mean_handle_us']:.0f} us, max "
                        f"{stats['handle_max_seconds'] * 1e3:.1f} ms per event (VM)")
    finally:
        time.sleep(0.5)
        remove(fs, subtree)
        policy_file.unlink(missing_ok=True)
    print()
    print(f"{'load':<16} | {'governor p50/p99 ms':>20} {'placed':>7} {'miss':>5} | "
          f"{'cgrulesengd p50/p99 ms':>23} {'placed':>7} {'miss':>5} | {'p50 ratio':>9}")
    for i, (name, _r, _c) in enumerate(loads):
        g, c = results["governor"][i], results.get("cgrulesengd", [{}] * len(loads))[i]
        ratio = c.get("p50", float("nan")) / g["p50"] if g["p50"] else float("nan")
        print(f"{name:<16} | {g['p50']:>9.2f} / {g['p99']:>8.2f} {g['placed']:>7.0f} "
              f"{g['misses']:>5.0f} | {c.get('p50', float('nan')):>10.2f} / "
              f"{c.get('p99', float('nan')):>10.2f} {c.get('placed', 0):>7.0f} "
              f"{c.get('misses', 0):>5.0f} | {ratio:>8.2f}x")
    for line in extra.values():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
