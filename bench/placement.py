# needs: kernel
# timeout: 2400
# host calibration: --calibrate
"""Exec-to-placed latency of governor's placement against libcgroup's cgrulesengd.

Run inside the sandbox: ``bench/run placement [--seconds 30] [--rates 100 500]
[--burst 1000] [--lifetime 1]`` (bench/run compiles the load generator
bench/placement_load.c on the host with ``cc -O2`` first).

For each daemon in turn, in the same VM boot (governor's :class:`Placer` in a process of
its own, then ``cgrulesengd -n`` with the equivalent rule ``*:sleep cpu,memory <group>``),
the load generator spawns ``sleep LIFETIME`` processes at each fixed offered rate for the
given seconds (it stops there even when it could not spawn them all: the achieved rate is
printed), then a burst as fast as it can.  It starts each child's clock at the kernel's
exec event for it (the generator listens to the process connector too; the spawn's return
when it cannot) and polls each child's ``/proc/PID/cgroup`` (one pread per pending child
per pass, from a thread of its own: a slow spawn does not delay the look) until it names
the group; a child that exits without ever having been seen there is a **miss**.  The mean
poll pass is printed: it bounds the resolution.  The generator reports the rate it really
achieved: the VM (TCG) may not fork and exec as fast as asked.

Every load runs under each cgroup2 mount mode asked (``--mounts``, default both): the
default mount, where each ``cgroup.procs`` write waits for an RCU grace period (the
threadgroup rwsem's switch to its slow mode), and ``favordynmods`` (Linux 6.0+; governor's
``[placement] favordynmods = true``), where it does not.  Both daemons run under the same
mode.

For the governor, the Placer's own counters are read after each load: the Python time it
spent per connector event, mean and max by event kind.

Host-speed scale: the issue's latency targets are for a host, and a TCG guest runs this code
many times slower.  ``--calibrate`` (bench/run runs it on the host first) measures the CPU
time of the Placer's whole exec path with the kernel write replaced by a file write; the
VM runs the same calibration, and VM latencies divided by the ratio are printed as a
host-speed estimate next to the figures as measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.tree import create, remove
from governor.config import Config

ROOT = Path("/sys/fs/cgroup")
SLEEP = "/usr/bin/sleep"
POLICY = '[tenants.t.groups.g]\n[[tenants.t.groups.g.match]]\ncomm = "sleep"\n'
LOADGEN = Path(__file__).resolve().parent / "build" / "placement_load"
#: the governors --variants can run beside cgrulesengd
VARIANTS = ("governor", "warm-always", "warm-off")

Result = dict[str, Any]


# -- the governor side -------------------------------------------------------------------
def serve(subtree: str, policy_file: str, nice: int, keep_warm: float,
          min_rate: int) -> int:
    """A Placer in this process until SIGTERM; its counters as a JSON line on stdout at
    each SIGUSR1 and at the end."""
    from governor.placement import netlink
    from governor.placement.placer import Placer
    from governor.policy import load_policy

    cpu: dict[str, list[float]] = {}  # kind -> [events, CPU seconds, max CPU seconds]

    class TimedPlacer(Placer):
        """Also the CPU time of the listener thread per event (the counters have the
        wall time, which a loaded TCG host stretches)."""

        def handle(self, ev: netlink.ProcEvent) -> None:
            t0 = time.thread_time()
            super().handle(ev)
            dt = time.thread_time() - t0
            c = cpu.setdefault(ev.name, [0, 0.0, 0.0])
            c[0] += 1
            c[1] += dt
            c[2] = max(c[2], dt)

    pol = load_policy([policy_file])
    flags = {"stop": False, "dump": False}

    def on_signal(signum: int, _f: object) -> None:
        flags["stop" if signum == signal.SIGTERM else "dump"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)
    with CgroupFS(ROOT) as fs:
        placer = TimedPlacer(fs, subtree, lambda: pol, exclude=(), nice=nice,
                             keep_warm=keep_warm, keep_warm_min_rate=min_rate,
                             keep_warm_interval=Config().keep_warm_interval)
        ok = placer.start()
        print("ready" if ok else "no-connector", flush=True)
        while not flags["stop"]:
            time.sleep(0.05)
            if flags["dump"]:
                flags["dump"] = False
                print(json.dumps({**placer.counters.as_dict(), "cpu": cpu}), flush=True)
        placer.stop()
        print(json.dumps({**placer.counters.as_dict(), "cpu": cpu}), flush=True)
    return 0


class Governor:
    def __init__(self, subtree: str, policy_file: Path, nice: int, keep_warm: float,
                 min_rate: int) -> None:
        self.p = subprocess.Popen([sys.executable, __file__, "--serve", subtree,
                                   str(policy_file), str(nice), str(keep_warm),
                                   str(min_rate)],
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None
        line = self.p.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"placement bench: governor did not start ({line!r})")

    def counters(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        self.p.send_signal(signal.SIGUSR1)
        out: dict[str, Any] = json.loads(self.p.stdout.readline())
        return out

    def stop(self) -> None:
        self.p.terminate()
        self.p.communicate(timeout=120)


# -- the peer ----------------------------------------------------------------------------
class Cgrulesengd:
    LOG = Path("/tmp/cgrulesengd.log")

    def __init__(self, group_path: str, nice: int = 0) -> None:
        # libcgroup wants its configuration to exist even when it has nothing to say; the
        # guest's /etc is a RAM overlay, nothing reaches the host
        Path("/etc/cgconfig.d").mkdir(exist_ok=True)
        Path("/etc/cgconfig.conf").write_text("")
        Path("/etc/cgrules.conf").write_text(f"*:sleep\tcpu,memory\t{group_path}\n")
        self.p = subprocess.Popen(["cgrulesengd", "-n", "-f", str(self.LOG)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if nice:  # an operator may renice it (it is single-threaded: the whole process)
            os.setpriority(os.PRIO_PROCESS, self.p.pid, nice)

    def check(self) -> None:
        if self.p.poll() is not None:
            log = self.LOG.read_text() if self.LOG.exists() else ""
            raise SystemExit(f"cgrulesengd exited {self.p.returncode}: {log[-2000:]}")

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(timeout=60)


# -- the load ----------------------------------------------------------------------------
def run_load(target: str, rate: float, count: int, lifetime: float,
             max_seconds: float = 0.0) -> Result:
    """One run of the load generator (rate 0: a burst; spawning stops after
    ``max_seconds`` when the VM cannot keep up with the rate)."""
    out = subprocess.run([str(LOADGEN), target, f"{rate:g}", str(count), f"{lifetime:g}",
                          f"{max_seconds:g}"],
                         check=True, capture_output=True, text=True).stdout
    lat: list[float] = []
    misses = 0
    from_exec = 0
    summary: list[int] = []
    for line in out.splitlines():
        if line.startswith("P "):
            lat.append(int(line.split()[1]) / 1e6)
        elif line.startswith("M"):
            misses += 1
        elif line.startswith("S "):
            summary = [int(x) for x in line.split()[1:]]
        elif line.startswith("E "):
            from_exec = int(line.split()[1])
    spawned, elapsed, passes, pass_total, spawn_total, max_late = summary
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, math.ceil(q * len(lat)) - 1)] if lat else math.nan

    return {"spawned": spawned, "offered": rate,
            "achieved": spawned / (elapsed / 1e9) if elapsed else math.inf,
            "placed": len(lat), "misses": misses, "p50": pct(0.50), "p99": pct(0.99),
            "max": lat[-1] if lat else math.nan,
            "pass_us": pass_total / passes / 1e3 if passes else 0.0,
            "spawn_us": spawn_total / spawned / 1e3 if spawned else 0.0,
            "late_ms": max_late / 1e6, "from_exec": from_exec}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(target: str, daemon: Governor | Cgrulesengd, timeout: float = 60) -> None:
    """A few processes until the daemon places one (cgrulesengd has no ready signal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(daemon, Cgrulesengd):
            daemon.check()
        if run_load(target, 20, 5, 0.3)["placed"] == 5:
            return
    raise SystemExit(f"placement bench: {type(daemon).__name__} places nothing in {target}")


def per_event(before: dict[str, Any], after: dict[str, Any]
              ) -> dict[str, tuple[int, float, float]]:
    """``kind -> (events, mean wall seconds, mean CPU seconds)`` between two snapshots."""
    out: dict[str, tuple[int, float, float]] = {}
    for kind, n in after["events"].items():
        dn = n - before["events"].get(kind, 0)
        if dn:
            ds = (after["handle_seconds_by_event"].get(kind, 0.0)
                  - before["handle_seconds_by_event"].get(kind, 0.0))
            dc = after["cpu"][kind][1] - before["cpu"].get(kind, [0, 0.0])[1]
            out[kind] = (dn, ds / dn, dc / dn)
    return out


# -- host-speed scale ---------------------------------------------------------------------
def calibrate(rounds: int = 7, n: int = 1000) -> float:
    """CPU microseconds the Placer spends on one exec event of a matching process, with
    the kernel's cgroup.procs write replaced by a write to a regular file: the same
    Python, C accelerator and procfs syscalls on this machine, best of ``rounds``.  Run
    on the host and in the VM, the ratio is how much slower the VM runs this path (TCG):
    VM latencies divided by it estimate the host-speed scale the issue's targets use."""
    import tempfile

    from governor.placement import netlink
    from governor.placement.placer import Placer
    from governor.policy.loader import parse_policy

    pol = parse_policy([("bench.toml", POLICY)])
    child = subprocess.Popen([SLEEP, "600"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "sub" / "t" / "g").mkdir(parents=True)
            (Path(tmp) / "sub" / "t" / "g" / "cgroup.procs").touch()
            with CgroupFS(Path(tmp), verify=False) as fs:
                placer = Placer(fs, "sub", lambda: pol, exclude=())
                ev = netlink.ProcEvent(netlink.PROC_EVENT_EXEC, child.pid, child.pid)
                best = math.inf
                for _ in range(rounds):
                    t0 = time.thread_time()
                    for _ in range(n):
                        placer.handle(ev)  # the file write does not move it: same path each time
                    best = min(best, (time.thread_time() - t0) / n)
                placer.procs.close()
                if placer.counters.placements["moved"] != rounds * n:
                    raise SystemExit(f"calibration: {placer.counters.placements}")
    finally:
        child.kill()
        child.wait()
    return best * 1e6


def fmt_ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def ratio(a: float, b: float) -> str:
    return "-" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}"


def set_favordynmods(on: bool) -> str:
    """Remount the VM's cgroup2 with or without ``favordynmods`` (every other option kept:
    governor.cgroupfs.mount, as the daemon does it); returns the mount's options after."""
    from governor.cgroupfs import mount

    if on:
        mount.favor_dynmods(ROOT)
    else:
        entry = mount.cgroup2_mount_of(ROOT)
        mount.remount_cgroup2(ROOT, mount.merge_options(entry.super_options,
                                                        drop=[mount.FAVORDYNMODS]))
    opts = mount.cgroup2_mount_of(ROOT).super_options
    if (mount.FAVORDYNMODS in opts) != on:
        raise SystemExit(f"placement bench: could not turn favordynmods {on}: {opts}")
    return ",".join(opts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0])
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--lifetime", type=float, default=1.0,
                    help="seconds each spawned process lives (a miss: never placed in it)")
    ap.add_argument("--mounts", nargs="+", choices=("default", "favordynmods"),
                    default=["default", "favordynmods"],
                    help="cgroup2 mount modes to run every load in, in turn (favordynmods: "
                    "Linux 6.0+, governor's [placement] favordynmods = true)")
    ap.add_argument("--listener-nice", type=int, default=Config().listener_nice, metavar="N",
                    help="governor's listener thread nice (default: the daemon's [placement] "
                    "listener_nice, -10)")
    ap.add_argument("--keep-warm", type=float, default=Config().keep_warm, metavar="SECONDS",
                    help="governor's [placement] keep_warm: no-op migrations for this long "
                    "after a move keep the next moves from waiting for an RCU grace period "
                    "(default: the daemon's, 1 s; 0: off)")
    ap.add_argument("--keep-warm-min-rate", type=int, default=Config().keep_warm_min_rate,
                    metavar="N", help="governor's [placement] keep_warm_min_rate: the window "
                    "opens only when N moves were made within the last second (default: the "
                    "daemon's; 0: after every move)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=["governor"],
                    help="governors to run beside cgrulesengd on every load: governor (the "
                    "--keep-warm and --keep-warm-min-rate given, by default the daemon's), "
                    "warm-always (keep_warm_min_rate 0: a window after every move, as before "
                    "issue 16), warm-off (keep_warm 0)")
    ap.add_argument("--peer-nice", type=int, default=0, metavar="N",
                    help="run cgrulesengd at nice N (governor's listener thread runs at "
                    "[placement] listener_nice, default -10)")
    ap.add_argument("--calibrate", action="store_true",
                    help="print the host calibration (us per exec event) and exit; bench/run "
                    "runs it on the host and passes --host-calibration")
    ap.add_argument("--host-calibration", type=float, default=0.0, metavar="US",
                    help="the host's --calibrate figure: VM latencies are also shown divided "
                    "by (VM calibration / this), the host-speed estimate")
    ap.add_argument("--serve", nargs=5,
                    metavar=("SUBTREE", "POLICY", "NICE", "KEEP_WARM", "MIN_RATE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve[0], args.serve[1], int(args.serve[2]), float(args.serve[3]),
                     int(args.serve[4]))
    if args.calibrate:
        print(f"{calibrate():.2f}")
        return 0
    if os.environ.get("GOVERNOR_SANDBOX") != "1":
        print("placement: run inside the sandbox: bench/run placement", file=sys.stderr)
        return 2
    if not os.access(LOADGEN, os.X_OK):
        print(f"placement: no {LOADGEN}: bench/run placement compiles it", file=sys.stderr)
        return 2
    vm_cal = calibrate()
    slowdown = vm_cal / args.host_calibration if args.host_calibration > 0 else math.nan
    # variant -> (keep_warm, keep_warm_min_rate)
    settings = {"governor": (args.keep_warm, args.keep_warm_min_rate),
                "warm-always": (args.keep_warm or Config().keep_warm, 0),
                "warm-off": (0.0, 0)}
    names = [*args.variants, "cgrulesengd"]
    print(f"governor's listener thread at nice {args.listener_nice}; " + ", ".join(
        f"{v}: keep_warm {settings[v][0]:g} s, keep_warm_min_rate {settings[v][1]}"
        for v in args.variants) + f"; cgrulesengd at nice {args.peer_nice}", flush=True)
    print(f"placement bench: {os.cpu_count()} vCPUs, child lifetime {args.lifetime:g} s; "
          f"calibration (Placer CPU per exec event, kernel write replaced by a file write): "
          f"VM {vm_cal:.1f} us, host "
          + (f"{args.host_calibration:.1f} us: the VM is {slowdown:.1f}x slower"
             if args.host_calibration > 0 else "not given (no host-speed estimate)"),
          flush=True)
    subtree = f"bench-{uuid.uuid4().hex[:8]}"
    fs = CgroupFS(ROOT)
    create(fs, f"{subtree}/t/g", ("cpu", "memory"))
    target = f"/{subtree}/t/g"
    policy_file = Path(f"/tmp/{subtree}.toml")
    policy_file.write_text(POLICY)
    loads: list[tuple[str, float, int]] = [
        (f"{r:g}/s x {args.seconds:g}s", r, int(r * args.seconds)) for r in args.rates]
    loads.append((f"burst {args.burst}", 0.0, args.burst))
    # (mode, load index) -> daemon -> result
    results: dict[tuple[str, int], dict[str, Result]] = {}
    handling: dict[tuple[str, int], dict[str, tuple[int, float, float]]] = {}
    handle_max: dict[str, float] = {}
    cpu_max: dict[str, float] = {}
    try:
        for mode in args.mounts:
            opts = set_favordynmods(mode == "favordynmods")
            print(f"-- cgroup2 mount: {opts}", flush=True)
            # daemons alternate load by load (a fresh daemon each time), so a change in the
            # machine's load over the run falls on both
            for i, (label, rate, count) in enumerate(loads):
                for name in names:
                    daemon: Governor | Cgrulesengd = (
                        Governor(subtree, policy_file, args.listener_nice, *settings[name])
                        if name != "cgrulesengd"
                        else Cgrulesengd(f"{subtree}/t/g", args.peer_nice))
                    try:
                        wait_ready(target, daemon)
                        before = daemon.counters() if isinstance(daemon, Governor) else None
                        cpu0 = cpu_seconds(daemon.p.pid)
                        r = run_load(target, rate, count, args.lifetime,
                                     args.seconds if rate else 0.0)
                        # the daemon's whole CPU time over the load, per process spawned
                        r["cpu_ms"] = ((cpu_seconds(daemon.p.pid) - cpu0) * 1e3
                                       / max(r["spawned"], 1))
                        if isinstance(daemon, Cgrulesengd):
                            daemon.check()
                        elif before is not None:
                            after = daemon.counters()
                            r["warm"] = (after["keep_warm_writes"]
                                         - before["keep_warm_writes"])
                            r["windows"] = (after["keep_warm_windows"]
                                            - before["keep_warm_windows"])
                            if name == names[0]:
                                handling[mode, i] = per_event(before, after)
                            for k, v in after["handle_max_seconds_by_event"].items():
                                handle_max[k] = max(v, handle_max.get(k, 0.0))
                            for k, v in after["cpu"].items():
                                cpu_max[k] = max(v[2], cpu_max.get(k, 0.0))
                        results.setdefault((mode, i), {})[name] = r
                        print(f"{name:<12} {label:<14} spawned {r['spawned']} of {count} at "
                              f"{r['achieved']:.0f}/s (spawn {r['spawn_us']:.0f} us, late up "
                              f"to {r['late_ms']:.0f} ms): placed {r['placed']}, misses "
                              f"{r['misses']}, p50 {fmt_ms(r['p50'])} ms, p99 "
                              f"{fmt_ms(r['p99'])} ms, max {fmt_ms(r['max'])} ms (poll pass "
                              f"{r['pass_us']:.0f} us; {r['from_exec']} of {r['placed']} "
                              "timed from the kernel's exec event); daemon CPU "
                              f"{r['cpu_ms']:.2f} ms per process spawned"
                              + (f", {r['warm']} keep_warm no-op migrations in "
                                 f"{r['windows']} windows" if "warm" in r else ""),
                              flush=True)
                    finally:
                        daemon.stop()
    finally:
        time.sleep(0.5)
        remove(fs, subtree)
        policy_file.unlink(missing_ok=True)

    def host(x: float) -> str:
        return "-" if math.isnan(slowdown) or math.isnan(x) else f"{x / slowdown:.2f}"

    for mode in args.mounts:
        print()
        print(f"exec-to-placed, cgroup2 mount {mode}: VM (TCG) ms as measured; cpu/proc = the "
              f"daemon's CPU ms per process spawned; host = VM / {slowdown:.1f} (the "
              "calibration), an estimate; ratio = governor / cgrulesengd")
        head = (f"{'load':<14} {'achieved/s':>10} | {'daemon':<12} {'placed/of':>10} {'miss':>5} "
                f"{'p50':>8} {'p99':>8} {'max':>8} {'cpu/proc':>8} {'warm':>6} | "
                f"{'host p50':>8} {'host p99':>8}")
        print(head)
        print("-" * len(head))
        for i, (label, _rate, _count) in enumerate(loads):
            c = results[mode, i]["cgrulesengd"]
            for name in names:
                r = results[mode, i][name]
                warm = str(r["warm"]) if "warm" in r else ""
                print(f"{label:<14} {r['achieved']:>10.0f} | {name:<12} "
                      f"{str(r['placed']) + '/' + str(r['spawned']):>10} "
                      f"{r['misses']:>5} {fmt_ms(r['p50']):>8} {fmt_ms(r['p99']):>8} "
                      f"{fmt_ms(r['max']):>8} {r['cpu_ms']:>8.2f} {warm:>6} | "
                      f"{host(r['p50']):>8} {host(r['p99']):>8}")
            for name in args.variants:  # ratios to the same load's cgrulesengd
                g = results[mode, i][name]
                # placed: the share of the processes spawned (the VM spawns its own number)
                share = ratio(g["placed"] / max(g["spawned"], 1),
                              c["placed"] / max(c["spawned"], 1))
                tag = "ratio " + name.removeprefix("warm-")
                print(f"{label:<14} {'':>10} | {tag:<12} {share:>10} "
                      f"{'':>5} {ratio(g['p50'], c['p50']):>8} {ratio(g['p99'], c['p99']):>8} "
                      f"{ratio(g['max'], c['max']):>8} {ratio(g['cpu_ms'], c['cpu_ms']):>8} "
                      f"{'':>6} |")
    print()
    print("governor Placer, time per connector event in the VM, mean us by load: wall (its"
          " handle_seconds counters) / CPU of the listener thread")
    kinds = sorted({k for h in handling.values() for k in h})
    print(f"{'mount':<13} {'load':<14} "
          + " ".join(f"{k + ' n':>8} {k + ' wall/cpu':>16}" for k in kinds))
    for (mode, i), h in handling.items():
        print(f"{mode:<13} {loads[i][0]:<14} " + " ".join(
            f"{h[k][0]:>8} {f'{h[k][1] * 1e6:.0f} / {h[k][2] * 1e6:.0f}':>16}" if k in h
            else f"{'-':>8} {'-':>16}" for k in kinds))
    print("max per event over the whole run, us wall (handle_max_seconds) / CPU: " + ", ".join(
        f"{k} {v * 1e6:.0f} / {cpu_max.get(k, math.nan) * 1e6:.0f}"
        for k, v in sorted(handle_max.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
