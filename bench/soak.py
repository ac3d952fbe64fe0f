# needs: kernel
# timeout: 3600
"""The soak of issue #7: ``governor run`` for a long time on a real kernel under churn, then
proof that it neither grew nor fell behind nor lost a number.

Run inside the sandbox: ``bench/run soak [--minutes 30] [--interval 5]``.

For ``--minutes`` the driver keeps the daemon busy with everything a host does to it:

* processes spawning and exiting: every second a short shell loop tagged ``soak-T-G`` in
  its command line starts on the host side and is *placed* by the daemon (a ``cmdline``
  rule per group), every tenth one a 1 MiB direct write and read of the scratch disk
  ``/dev/vda``; plus one long-lived process per group;
* groups created and removed: every minute the policy file is rewritten (a new ephemeral
  group ``b/eph-N`` with its own rule and worker, the previous one dropped, ``a/web``'s
  ``cpu.weight`` flipped), so the daemon reloads, creates one group and removes another;
* periodic OOM kills: every ``--oom-every`` seconds a process allocating 96 MiB starts in
  ``c/oomy`` (``memory.max`` 32M, no swap) and the kernel kills it.

It reads the daemon's RSS and CPU time from ``/proc`` every 30 s.  At the end the
workload stops, the daemon gets SIGTERM (it stores a last pass) and the script checks:

* RSS: the first reading after start-up, the last, the largest;
* every sampling pass on time: the daemon's own ``late_passes`` (a pass started more than
  one interval late) is 0, ``slow_passes`` (a pass longer than the interval) is 0, and
  the number of passes matches the running time;
* the bill reconciles: for every group incarnation (the ephemeral ones as recorded just
  before they left the policy, the others after the stop) the billed CPU microseconds, IO
  bytes and OOM kills, summed from the hourly rollups that bills read and from the
  interval rows, equal the kernel's counters exactly; no duplicate rows.

Exit 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemonproc import free_port, usage, wait_until
from sqlalchemy import create_engine, func, select

from governor.cgroupfs import parse
from governor.store.db import upgrade
from governor.store.models import Group, HourlyRollup, IntervalUsageRow, OomEvent

ROOT = Path("/sys/fs/cgroup")
SUBTREE = "soak"
REPO = Path(__file__).resolve().parents[1]
BASE = {  # group -> its limits in the policy
    "a/web": 'cpu.max = "0.5"\ncpu.weight = {weight}\n',
    "a/batch": 'cpu.weight = 50\npids.max = 200\n',
    "b/db": 'memory.max = "128M"\nio.weight = 200\n',
    "c/oomy": 'memory.max = "32M"\nmemory.swap.max = 0\noom.actions = ["log"]\n',
}
# a short worker: ~20k shell loop iterations, then exit (the tag is $0, in the cmdline)
WORK = 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo $i > /dev/null'
HOG = "b = b'x' * (96 << 20)\nprint('survived')"
# an IO worker: 1 MiB written to and read from the sandbox's scratch disk, bypassing the
# page cache (so io.stat counts it in the group that issued it)
IO = ("dd if=/dev/zero of=/dev/vda bs=64k count=16 oflag=direct 2>/dev/null; "
      "dd if=/dev/vda of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null")


def policy(eph: int | None, weight: int) -> str:
    out = ['[plans.std]\ncurrency = "EUR"\ncpu_core_hour = "0.04"\n'
           'memory_gib_hour = "0.005"\nio_read_gib = "0.01"\nio_write_gib = "0.02"\n']
    groups = {g: lim.format(weight=weight) for g, lim in BASE.items()}
    if eph is not None:
        groups[f"b/eph-{eph}"] = "cpu.weight = 100\n"
    for t in sorted({g.split("/")[0] for g in groups}):
        out.append(f'[tenants.{t}]\nplan = "std"\n')
    for g, lim in groups.items():
        t, n = g.split("/")
        out.append(f"[tenants.{t}.groups.{n}]\n{lim}"
                   f"[[tenants.{t}.groups.{n}.match]]\ncmdline = \"soak-{t}-{n}\\\\b\"\n")
    return "\n".join(out)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def counters(rel: str) -> dict[str, int]:
    d = ROOT / SUBTREE / rel
    cpu = parse.parse_flat_keyed((d / "cpu.stat").read_text())["usage_usec"]
    io = parse.parse_io_stat((d / "io.stat").read_text()) if (d / "io.stat").exists() else {}
    ev = parse.parse_flat_keyed((d / "memory.events").read_text())
    return {"cpu_usec": cpu,
            "io_rbytes": sum(v.get("rbytes", 0) for v in io.values()),
            "io_wbytes": sum(v.get("wbytes", 0) for v in io.values()),
            "oom_kills": ev["oom_kill"]}


def procs_of(rel: str) -> list[int]:
    p = ROOT / SUBTREE / rel / "cgroup.procs"
    return [int(x) for x in p.read_text().split()] if p.exists() else []


def in_group(rel: str, argv: list[str]) -> subprocess.Popen[bytes]:
    procs = str(ROOT / SUBTREE / rel / "cgroup.procs")

    def pre() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return subprocess.Popen(argv, preexec_fn=pre, stdout=subprocess.DEVNULL)  # noqa: PLW1509


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=5.0, help="sampling interval, s")
    ap.add_argument("--oom-every", type=float, default=120.0, help="seconds between kills")
    ap.add_argument("--reload-every", type=float, default=60.0, help="seconds between reloads")
    args = ap.parse_args()
    if os.environ.get("GOVERNOR_SANDBOX") != "1":  # it writes to /dev/vda: the VM's only
        print("soak: run inside the sandbox: bench/run soak", file=sys.stderr)
        return 2
    rng = random.Random(7)
    tmp = Path(tempfile.mkdtemp(prefix="governor-soak-"))
    pol = tmp / "policy.toml"
    weight = 100
    write_atomic(pol, policy(None, weight))
    db = f"sqlite:///{tmp}/governor.db"
    upgrade(db)
    cfg = tmp / "config.toml"
    cfg.write_text(
        f'[governor]\ncgroup_root = "{ROOT}"\nsubtree = "{SUBTREE}"\npolicy = "{pol}"\n'
        f'state_dir = "{tmp}/state"\nnode = "vm"\n[database]\nurl = "{db}"\n'
        f'[exporter]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[placement]\nrescan_interval = "30s"\n')
    logf = (tmp / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "governor", "run", "--config", str(cfg),
         "--sample-interval", f"{args.interval}s", "--reconcile-interval", "10s"],
        stderr=logf, cwd=REPO)
    log = tmp / "daemon.log"
    wait_until(lambda: "governor running" in log.read_text() or daemon.poll() is not None,
               300, "the daemon to start")
    if daemon.poll() is not None:
        print(log.read_text()[-3000:])
        return 1
    started = time.monotonic()
    print(f"soak: daemon pid {daemon.pid} running, {args.minutes:g} min, interval "
          f"{args.interval:g} s, workdir {tmp}", flush=True)

    workers: list[subprocess.Popen[bytes]] = []
    # the shell stays (its command line carries the tag), its sleep follows it: a process
    # group each, so the stop takes both
    sleepers = [subprocess.Popen(["sh", "-c", "sleep 100000; true", f"soak-{g.replace('/', '-')}"],
                                 start_new_session=True) for g in BASE]
    final: dict[str, dict[str, int]] = {}  # removed incarnations: counters at removal
    eph: int | None = None
    rss: list[tuple[float, int, float]] = []
    spawned = kills = reloads = 0
    end = started + args.minutes * 60
    next_spawn = next_read = started
    next_reload = started + args.reload_every
    next_oom = started + 30.0
    hogs: list[subprocess.Popen[bytes]] = []
    while time.monotonic() < end:
        now = time.monotonic()
        if daemon.poll() is not None:
            print("soak: the daemon died:\n" + log.read_text()[-3000:])
            return 1
        if now >= next_read:
            c, r = usage(daemon.pid)
            rss.append((now - started, r, c))
            print(f"soak: t={now - started:6.0f} s  rss={r / 1024:6.1f} MiB  cpu={c:7.1f} s  "
                  f"spawned={spawned} kills={kills} reloads={reloads}", flush=True)
            next_read += 30.0
        if now >= next_spawn:
            names = [*BASE, *([f"b/eph-{eph}"] if eph is not None else [])]
            g = rng.choice(names)
            script = IO if spawned % 10 == 5 else WORK
            workers.append(subprocess.Popen(["sh", "-c", script, f"soak-{g.replace('/', '-')}"]))
            spawned += 1
            workers = [w for w in workers if w.poll() is None]
            next_spawn += 1.0
        if now >= next_oom:
            hogs.append(in_group("c/oomy", [sys.executable, "-c", HOG]))
            kills += 1
            next_oom += args.oom_every
        if now >= next_reload:
            old = eph
            if old is not None:  # retire it: empty, sampled once more, counted, dropped
                rel = f"b/eph-{old}"
                for pid in procs_of(rel):
                    os.kill(pid, signal.SIGKILL)
                wait_until(lambda rel=rel: not procs_of(rel), 60, f"{rel} to empty")
                time.sleep(2.5 * args.interval)
                final[rel] = counters(rel)
            eph = (old or 0) + 1
            weight = 300 - weight
            write_atomic(pol, policy(eph, weight))
            reloads += 1
            new = f"b/eph-{eph}"
            wait_until(lambda new=new: (ROOT / SUBTREE / new).is_dir(), 120, f"{new} created")
            if old is not None:
                gone = ROOT / SUBTREE / f"b/eph-{old}"
                wait_until(lambda gone=gone: not gone.exists(), 120, f"{gone} removed")
            next_reload += args.reload_every
        time.sleep(0.05)

    # wind down: no more work, every process gone, two passes, then a clean stop
    for w in workers:
        w.wait()
    for h in hogs:
        h.wait()
    for s in sleepers:
        os.killpg(s.pid, signal.SIGKILL)
        s.wait()
    groups = [*BASE, *([f"b/eph-{eph}"] if eph is not None else [])]
    wait_until(lambda: not any(procs_of(g) for g in groups), 60, "every group empty")
    time.sleep(2.5 * args.interval)
    c, r = usage(daemon.pid)
    rss.append((time.monotonic() - started, r, c))
    ran = time.monotonic() - started
    daemon.send_signal(signal.SIGTERM)
    rc = daemon.wait(120)
    logf.close()
    for g in groups:
        final[g] = counters(g)
    text = log.read_text()
    stop = [ln for ln in text.splitlines() if "governor stopped" in ln]
    print(f"soak: daemon exit {rc}; {stop[-1] if stop else 'no stop line'}")

    ok = rc == 0 and bool(stop)
    fields = dict(kv.split("=", 1) for kv in stop[-1].split() if "=" in kv) if stop else {}
    passes = int(fields.get("passes", "0"))
    late = int(fields.get("late_passes", "-1"))
    slow = int(fields.get("slow_passes", "-1"))
    expect = ran / args.interval
    print(f"passes: {passes} in {ran:.0f} s (expected ~{expect:.0f}), late {late}, slow {slow}")
    ok &= late == 0 and slow == 0 and passes >= 0.9 * expect

    first = rss[1] if len(rss) > 1 else rss[0]  # after the first 30 s of start-up
    top = max(rss, key=lambda x: x[1])
    print(f"rss: start {first[1] / 1024:.1f} MiB (t={first[0]:.0f} s), end "
          f"{rss[-1][1] / 1024:.1f} MiB (t={rss[-1][0]:.0f} s), max {top[1] / 1024:.1f} MiB; "
          f"daemon CPU {rss[-1][2] - first[2]:.1f} s over {rss[-1][0] - first[0]:.0f} s "
          f"({(rss[-1][2] - first[2]) / max(1.0, rss[-1][0] - first[0]) * 100:.1f}% of a core)")

    engine = create_engine(db)
    cols = ("cpu_usec", "io_rbytes", "io_wbytes", "oom_kills")
    print(f"{'group':<12} {'check':<10} {'kernel':>14} {'intervals':>14} {'rollups':>14}")
    with engine.connect() as conn:
        for g, kern in sorted(final.items()):
            ids = conn.execute(select(Group.id).where(Group.path == g)).scalars().all()
            if len(ids) != 1:
                print(f"{g:<12} incarnations in the database: {len(ids)} (want 1)")
                ok = False
                continue
            for col in cols:
                iv = conn.execute(select(func.coalesce(func.sum(
                    getattr(IntervalUsageRow, col)), 0)).where(
                    IntervalUsageRow.group_id == ids[0])).scalar_one()
                ro = conn.execute(select(func.coalesce(func.sum(
                    getattr(HourlyRollup, col)), 0)).where(
                    HourlyRollup.group_id == ids[0])).scalar_one()
                good = int(iv) == int(ro) == kern[col]
                ok &= good
                if col == "cpu_usec" or kern[col] or not good:
                    print(f"{g:<12} {col:<10} {kern[col]:>14} {int(iv):>14} {int(ro):>14}"
                          f"{'' if good else '  MISMATCH'}")
        oom_rows = conn.execute(select(func.coalesce(func.sum(OomEvent.count), 0))
                                .join(Group, Group.id == OomEvent.group_id)
                                .where(Group.path == "c/oomy", OomEvent.kind == "oom_kill")
                                ).scalar_one()
        dup = conn.execute(select(func.count()).select_from(
            select(IntervalUsageRow.group_id, IntervalUsageRow.end_ts)
            .group_by(IntervalUsageRow.group_id, IntervalUsageRow.end_ts)
            .having(func.count() > 1).subquery())).scalar_one()
    engine.dispose()
    print(f"oom kills: {kills} hogs started, kernel {final['c/oomy']['oom_kills']}, "
          f"events recorded {int(oom_rows)}; duplicate interval rows: {dup}")
    ok &= int(oom_rows) == final["c/oomy"]["oom_kills"] == kills and dup == 0
    print(f"spawned {spawned} workers, {reloads} policy reloads, "
          f"{len([g for g in final if 'eph' in g])} groups created and removed")
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
