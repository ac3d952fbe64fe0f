# needs: kernel
# timeout: 3600
"""The daemon's own cost at 1,000 managed groups (issue #7), next to the sampler alone.

Run inside the sandbox: ``bench/run daemon_cost [--groups 1000] [--interval 10]
[--minutes 10]``.

Both runs use the same tree: ``--groups`` groups in tenants of 100 (``t00/g000`` ...), a
policy giving each group ``cpu.weight``, ``memory.high`` and ``pids.max``, one idle
``sleep`` per tenant.  In the same VM boot, one after the other:

1. ``governor run`` (everything: policy watch and reconcile, placement with the proc
   connector, sampling into SQLite with metering and rollups, OOM watch, exporter,
   retention, cost gauge), sampling every ``--interval`` seconds;
2. the sampler alone: a process that only calls ``Sampler.sample()`` over the same groups
   at the same interval (the physical part of the job: reading the counters).

After a warm-up (the policy applied, the first passes stored) each is measured for
``--minutes``: CPU time (user + system, all threads, from ``/proc/PID/stat``) as a share of
one core, and RSS read every interval (mean and max).  The ratio daemon / sampler says what
the rest of the daemon costs on top of the reads.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemonproc import free_port, usage, wait_until

ROOT = Path("/sys/fs/cgroup")
SUBTREE = "cost"
REPO = Path(__file__).resolve().parents[1]

SAMPLER_ALONE = """
import sys, time
from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import raise_nofile_limit
from governor.metering.sampler import Sampler
raise_nofile_limit()
interval = float(sys.argv[1])
with CgroupFS("/sys/fs/cgroup") as fs:
    s = Sampler(fs, sys.argv[2], "vm")
    nxt = time.monotonic()
    while True:
        p = s.sample()
        print(len(p.samples), flush=True)
        nxt += interval
        time.sleep(max(0.0, nxt - time.monotonic()))
"""


def policy(groups: int) -> str:
    out = []
    for i in range(groups):
        t, g = divmod(i, 100)
        out.append(f'[tenants.t{t:02d}.groups.g{g:03d}]\ncpu.weight = {50 + g}\n'
                   f'memory.high = "{64 + g}M"\npids.max = 100\n')
    return "\n".join(out)


def measure(pid: int, seconds: float, interval: float) -> tuple[float, float, int]:
    """CPU share of one core, mean RSS MiB, max RSS KiB over ``seconds``."""
    c0, _ = usage(pid)
    t0 = time.monotonic()
    rss: list[int] = []
    while time.monotonic() - t0 < seconds:
        time.sleep(interval)
        rss.append(usage(pid)[1])
    c1, _ = usage(pid)
    wall = time.monotonic() - t0
    return (c1 - c0) / wall, sum(rss) / len(rss) / 1024, max(rss)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args()
    from governor.store.db import upgrade

    tmp = Path(tempfile.mkdtemp(prefix="governor-cost-"))
    pol = tmp / "policy.toml"
    pol.write_text(policy(args.groups))
    db = f"sqlite:///{tmp}/governor.db"
    upgrade(db)
    cfg = tmp / "config.toml"
    cfg.write_text(
        f'[governor]\ncgroup_root = "{ROOT}"\nsubtree = "{SUBTREE}"\npolicy = "{pol}"\n'
        f'state_dir = "{tmp}/state"\nnode = "vm"\n[database]\nurl = "{db}"\n'
        f'[exporter]\nlisten = "127.0.0.1:{free_port()}"\n')
    seconds = args.minutes * 60
    print(f"daemon_cost: {args.groups} groups, interval {args.interval:g} s, "
          f"{args.minutes:g} min each, {os.cpu_count()} vCPUs", flush=True)

    # 1. the whole daemon
    log = tmp / "daemon.log"
    with log.open("w") as logf:
        d = subprocess.Popen([sys.executable, "-m", "governor", "run", "--config", str(cfg),
                              "--sample-interval", f"{args.interval:g}s"],
                             stderr=logf, cwd=REPO)
    wait_until(lambda: "governor running" in log.read_text() or d.poll() is not None, 900,
               "the daemon to start", step=0.5)
    if d.poll() is not None:
        print(log.read_text()[-3000:])
        return 1
    sleepers = []
    for t in range((args.groups + 99) // 100):
        procs = ROOT / SUBTREE / f"t{t:02d}" / "g000" / "cgroup.procs"
        sleepers.append(subprocess.Popen(
            ["sleep", "100000"], preexec_fn=lambda p=procs: p.write_text(str(os.getpid()))))  # noqa: PLW1509
    # warm-up: a few passes after start-up
    time.sleep(3 * args.interval)
    d_cpu, d_rss, d_max = measure(d.pid, seconds, args.interval)
    d.send_signal(signal.SIGTERM)
    d.wait(300)
    text = log.read_text()
    stop = [ln for ln in text.splitlines() if "governor stopped" in ln]
    print(f"daemon: {stop[-1] if stop else 'no stop line'}")

    # 2. the sampler alone, same tree (the daemon left the groups in place)
    s = subprocess.Popen([sys.executable, "-c", SAMPLER_ALONE, str(args.interval), SUBTREE],
                         stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert s.stdout is not None
    first = s.stdout.readline().strip()
    time.sleep(2 * args.interval)
    s_cpu, s_rss, s_max = measure(s.pid, seconds, args.interval)
    s.kill()
    s.wait()
    for p in sleepers:
        p.kill()
        p.wait()

    print(f"sampler alone: {first} samples per pass")
    print(f"{'process':<16} {'CPU % of a core':>16} {'RSS mean MiB':>13} {'RSS max MiB':>12}")
    print(f"{'governor run':<16} {d_cpu * 100:>16.2f} {d_rss:>13.1f} {d_max / 1024:>12.1f}")
    print(f"{'sampler alone':<16} {s_cpu * 100:>16.2f} {s_rss:>13.1f} {s_max / 1024:>12.1f}")
    print(f"ratio daemon / sampler: CPU {d_cpu / s_cpu:.2f}x, RSS {d_rss / s_rss:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
