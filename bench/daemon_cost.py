# needs: kernel
# timeout: 3600
# host calibration: --calibrate
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

``--profile SECONDS`` (default 120; 0: none): after the daemon's measured window, py-spy
samples it for that long (``py-spy record --nonblocking --format raw``, every thread, idle
time left out) and the top 10 functions by own time and by time including callees are
printed: where the daemon's CPU goes, on the real kernel.  ``--groups 10000`` also prints
the passes' durations (from the daemon's log at stop) against the interval.

``--scrape-every SECONDS`` (default 0: none): during the daemon's window, scrape its
/metrics every SECONDS as Prometheus does (gzip asked), so that the window's CPU and RSS
are those of a daemon being scraped; the scrapes' count and body size are printed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
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


def measure(pid: int, seconds: float, interval: float, *, name: str
            ) -> tuple[float, float, int]:
    """CPU share of one core, mean RSS MiB, max RSS KiB over ``seconds``; prints the RSS
    of each minute of the window (its mean), so memory that grows shows as a trend."""
    c0, _ = usage(pid)
    t0 = time.monotonic()
    rss: list[tuple[float, int]] = []
    while time.monotonic() - t0 < seconds:
        time.sleep(interval)
        rss.append((time.monotonic() - t0, usage(pid)[1]))
    c1, _ = usage(pid)
    wall = time.monotonic() - t0
    minutes: dict[int, list[int]] = collections.defaultdict(list)
    for t, kib in rss:
        minutes[min(int(t // 60), max(0, int(seconds // 60) - 1))].append(kib)
    print(f"{name} RSS by minute of the window, MiB: " + " ".join(
        f"{sum(v) / len(v) / 1024:.1f}" for _, v in sorted(minutes.items())), flush=True)
    values = [kib for _, kib in rss]
    return (c1 - c0) / wall, sum(values) / len(values) / 1024, max(values)


STAGE = re.compile(r'^governor_pass_cpu_seconds_total\{node="[^"]*",stage="(\w+)"\} (\S+)$',
                   re.M)
JOB = re.compile(r'^governor_job_cpu_seconds_total\{job="([\w-]+)",node="[^"]*"\} (\S+)$',
                 re.M)


def pass_cpu(port: int) -> tuple[dict[str, float], dict[str, float]]:
    """The daemon's ``governor_pass_cpu_seconds_total`` by stage and
    ``governor_job_cpu_seconds_total`` by job, from one scrape (made outside the measured
    window: a scrape renders the exposition)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as r:
        text = r.read().decode()
    return ({stage: float(v) for stage, v in STAGE.findall(text)},
            {job: float(v) for job, v in JOB.findall(text)})


def stage_split(before: tuple[dict[str, float], dict[str, float]],
                after: tuple[dict[str, float], dict[str, float]], cpu: float,
                seconds: float, interval: float) -> str:
    """The window's CPU of each pass stage, in ms a pass and as a share of one core, what
    the daemon spent beyond its passes (its other threads: placement, policy and drift
    watches, exporter, jobs), and of that what each scheduled job took."""
    passes = seconds / interval
    parts = []
    total = 0.0
    for stage, value in after[0].items():
        d = value - before[0].get(stage, 0.0)
        total += d
        parts.append(f"{stage} {d / passes * 1e3:.1f} ms ({d / seconds * 100:.2f}%)")
    beyond = cpu * seconds - total
    jobs = [(job, value - before[1].get(job, 0.0)) for job, value in after[1].items()]
    return (f"the passes' CPU by stage (governor_pass_cpu_seconds_total, a pass every "
            f"{interval:g} s): " + ", ".join(parts)
            + f"; beyond the passes {beyond / passes * 1e3:.1f} ms a pass "
            f"({beyond / seconds * 100:.2f}%), of which the jobs "
            f"(governor_job_cpu_seconds_total) "
            + (", ".join(f"{job} {d / passes * 1e3:.1f} ms"
                         for job, d in sorted(jobs, key=lambda j: -j[1])) or "none"))


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (its tid), from /proc/PID/task."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            f = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


THREAD = re.compile(r'^Thread (\d+) \((?:idle|active)[^)]*\): "([^"]*)"', re.M)


def thread_split(pid: int, before: dict[int, float], after: dict[int, float],
                 seconds: float, interval: float) -> str:
    """The window's CPU of each of the daemon's threads, by name (``py-spy dump``), in ms
    a pass, dearest first."""
    spy = Path(sys.executable).with_name("py-spy")
    r = subprocess.run([str(spy), "dump", "--pid", str(pid), "--nonblocking"],
                       capture_output=True, text=True, check=False)
    names = {int(tid): name for tid, name in THREAD.findall(r.stdout)}
    passes = seconds / interval
    spent = sorted(((after[t] - before.get(t, 0.0), names.get(t, f"tid {t}"))
                    for t in after), reverse=True)
    return "the daemon's threads in the window, ms a pass: " + ", ".join(
        f"{name} {d / passes * 1e3:.1f}" for d, name in spent if d > 0)


FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def smaps(pid: int) -> str:
    """Where ``pid``'s resident memory is, from /proc/PID/smaps: the heap and anonymous
    mappings (Python's objects and arenas, malloc), and each file mapped (the interpreter,
    extension modules, shared libraries), largest first, in MiB."""
    by: collections.Counter[str] = collections.Counter()
    name = "?"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                path = head[5] if len(head) > 5 else ""
                name = ("anonymous" if not path else path if path.startswith("[")
                        else Path(path).name)
            elif head and head[0] == "Rss:":
                by[name] += int(head[1])
    total = sum(by.values())
    top = ", ".join(f"{k} {v / 1024:.1f}" for k, v in by.most_common(8))
    # SQLite connections open (each keeps its own page cache, up to 2 MiB by default)
    dbs = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".db"):
                    dbs += 1
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return f"RSS {total / 1024:.1f} MiB: {top}; {threads} threads, {dbs} database files open"


def profile(pid: int, seconds: float, out: Path) -> None:
    """py-spy ``seconds`` of ``pid`` (all threads, not idle), then the top 10 functions by
    own samples and by samples including callees."""
    spy = Path(sys.executable).with_name("py-spy")
    r = subprocess.run([str(spy), "record", "--pid", str(pid), "--duration", f"{seconds:.0f}",
                        "--rate", "50", "--nonblocking", "--threads", "--format", "raw",
                        "--output", str(out)], capture_output=True, text=True, check=False)
    if r.returncode != 0 or not out.exists():
        print(f"profile: py-spy failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    #: by the outermost function of the daemon's own (governor/) in each stack: which
    #: job or thread the time is spent for (the pass, the reconcile, a listener...)
    roots: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = []
        for frame in stack.split(";"):
            m = FRAME.match(frame)
            if m is None:
                continue  # the thread's own label
            path = m["file"]
            short = path.split("site-packages/")[-1].split("/main/")[-1]
            names.append(f"{m['fn']} ({short})")
        if not names:
            continue
        own[names[-1]] += n
        mine = [name for name in names if "(governor/" in name]
        roots[mine[0] if mine else names[0]] += n
        for name in set(names):
            incl[name] += n
    print(f"profile: {total} samples at 50 Hz over {seconds:.0f} s "
          f"({total / 50 / seconds * 100:.1f}% of a core busy in Python)")
    # the threads' own wrappers (threading, the executor, APScheduler) include everything
    wrappers = ("(threading.py)", "(concurrent/", "(apscheduler/")
    incl = collections.Counter({k: v for k, v in incl.items()
                                if not any(w in k for w in wrappers)})
    for title, counter in (("own time", own), ("including callees", incl),
                           ("the daemon's outermost function (job or thread)", roots)):
        print(f"  top 10 by {title}:")
        for name, n in counter.most_common(10):
            print(f"    {n / max(total, 1) * 100:5.1f}%  {name}")


WARNING = re.compile(r'ts=(?P<ts>\S+) .*msg="(?P<msg>sampling pass late|slow sampling pass)"'
                     r'.*?(?P<what>(?:gap|duration)_s=[0-9.]+)')


def late_and_slow(log: str, phases: list[tuple[str, float]]) -> str:
    """The daemon's late and slow passes by the phase of the run they fell in (start-up,
    warm-up, the measured window, the profile, the scrapes, the stop), with their gap or
    duration: a pass made late by py-spy or a scrape is not the window's."""
    from datetime import datetime

    by: dict[str, list[str]] = collections.defaultdict(list)
    for m in WARNING.finditer(log):
        at = datetime.fromisoformat(m["ts"].replace("Z", "+00:00")).timestamp()
        phase = next((name for name, t0 in reversed(phases) if at >= t0), phases[0][0])
        by[phase].append(f"{'late' if 'late' in m['msg'] else 'slow'} {m['what']}")
    if not by:
        return "late or slow passes: none"
    return "late or slow passes by phase: " + "; ".join(
        f"{name}: {', '.join(by[name])}" for name, _ in phases if by.get(name))


class Scraper:
    """Scrapes ``url`` every ``every`` seconds in a thread, as Prometheus does (gzip asked,
    the body read whole), until :meth:`stop`; prints how many scrapes and their size
    (``every`` 0: does nothing)."""

    def __init__(self, url: str, every: float) -> None:
        self.url, self.every = url, every
        self.done = threading.Event()
        self.count = self.failed = self.size = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import http.client
        import urllib.request

        req = urllib.request.Request(self.url, headers={"Accept-Encoding": "gzip"})
        nxt = time.monotonic()
        while not self.done.is_set():
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    self.size = len(r.read())
                self.count += 1
            except (OSError, http.client.HTTPException):   # refused, reset, cut short
                self.failed += 1
            nxt += self.every
            self.done.wait(max(0.0, nxt - time.monotonic()))

    def start(self) -> None:
        if self.every > 0:
            self.thread.start()

    def stop(self) -> None:
        if self.every > 0:
            self.done.set()
            self.thread.join()
            print(f"scraped /metrics every {self.every:g} s in the window: {self.count} "
                  f"scrapes ({self.failed} failed), {self.size / 1024:.0f} KiB gzipped each",
                  flush=True)


def scrape_cost(pid: int, url: str, scrapes: int, background: float, *, gzip: bool = True
                ) -> tuple[float, int]:
    """The daemon's CPU seconds per scrape of /metrics (``gzip``: compressed, as Prometheus
    asks by default; else uncompressed, Prometheus's ``enable_compression: false``), each
    of a pass not scraped before (so each renders), taken between passes: CPU across the
    request less the daemon's background rate over its wall time.  And the body's size."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip" if gzip
                                               else "identity"})
    health = url.replace("/metrics", "/healthz")
    seen = -1
    costs = []
    size = 0
    for _ in range(scrapes):
        while True:  # a new pass published, and done a second ago
            try:
                with urllib.request.urlopen(health, timeout=60) as r:
                    n = int(json.load(r)["publications"])
            except urllib.error.HTTPError as e:  # 503 (stale, degraded): the same JSON
                n = int(json.load(e)["publications"])
            if n != seen:
                seen = n
                break
            time.sleep(0.5)
        time.sleep(1.0)
        c0, _ = usage(pid)
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=60) as r:
            size = len(r.read())
        wall = time.monotonic() - t0
        c1, _ = usage(pid)
        costs.append(max(0.0, c1 - c0 - background * wall))
    costs.sort()
    return costs[len(costs) // 2], size


def calibrate(rounds: int = 5, groups: int = 1000) -> float:
    """CPU ms of the daemon's own kind of work, no kernel: ``groups`` samples metered in
    memory and their rows written to SQLite (a temporary file), best of ``rounds``.  Run
    on the host (bench/run does it first) and in the VM: their ratio is the VM/host factor
    the host-speed estimate divides by, as bench/run placement does."""
    from datetime import UTC, datetime, timedelta

    from governor.metering.meter import Anchor, Meter, inc_key
    from governor.store.db import make_engine, scope_factory, upgrade
    from governor.store.metered import write_metered
    from governor.store.service import Incarnations, store_samples
    sys.path.insert(0, str(REPO))  # tests.helpers
    from tests.helpers.db import make_sample

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    best = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/cal.db"
        upgrade(url)
        engine = make_engine(url)
        scope = scope_factory(engine)
        m, inc = Meter(), Incarnations()
        for r in range(rounds + 1):
            batch = [make_sample(node="cal", group=f"g{i}", cgroup_id=i, cpu=r * 1000 + i,
                                 mem=1 << 20, rbytes=r * 4096,
                                 wall=t0 + timedelta(seconds=10 * r, microseconds=i))
                     for i in range(groups)]
            c = time.process_time()
            with scope() as session:
                node_id, ids = store_samples(session=session, node="cal", samples=batch,
                                             incarnations=inc)
            with scope() as session:
                step = m.step(batch, {inc_key(s): Anchor(None, None) for s in batch}
                              if r == 0 else None)
                write_metered(session=session, node_id=node_id, metered=step, ids=ids)
            m.advance(step)
            took = time.process_time() - c
            if r:
                best = min(best, took)
        engine.dispose()
    return best * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--write-every", type=int, default=None, metavar="N",
                    help="the daemon's [sampling] write_every (default: the daemon's own)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--profile", type=float, default=120.0, metavar="SECONDS")
    ap.add_argument("--calibrate", action="store_true",
                    help="print the host calibration (CPU ms of metering and storing 1,000 "
                    "samples) and exit; bench/run runs it on the host first")
    ap.add_argument("--host-calibration", type=float, default=0.0, metavar="MS",
                    help="the host's --calibrate figure: CPU shares are also shown divided "
                    "by the VM/host factor (the host-speed estimate)")
    ap.add_argument("--daemon-only", action="store_true",
                    help="measure the daemon alone (no sampler-alone window, no ratios): "
                    "for its memory over a long window")
    ap.add_argument("--scrapes", type=int, default=10,
                    help="scrapes of the daemon's /metrics after its window (0: none)")
    ap.add_argument("--scrape-every", type=float, default=0.0, metavar="SECONDS",
                    help="scrape /metrics every SECONDS during the daemon's window, as "
                    "Prometheus would (0: no scrape in the window)")
    args = ap.parse_args()
    if args.calibrate:
        print(f"{calibrate():.2f}")
        return 0
    from governor.store.db import upgrade

    tmp = Path(tempfile.mkdtemp(prefix="governor-cost-"))
    pol = tmp / "policy.toml"
    pol.write_text(policy(args.groups))
    db = f"sqlite:///{tmp}/governor.db"
    upgrade(db)
    cfg = tmp / "config.toml"
    port = free_port()
    cfg.write_text(
        f'[governor]\ncgroup_root = "{ROOT}"\nsubtree = "{SUBTREE}"\npolicy = "{pol}"\n'
        f'state_dir = "{tmp}/state"\nnode = "vm"\n[database]\nurl = "{db}"\n'
        f'[exporter]\nlisten = "127.0.0.1:{port}"\n'
        + ("" if args.write_every is None else f"[sampling]\nwrite_every = {args.write_every}\n"))
    seconds = args.minutes * 60
    print(f"daemon_cost: {args.groups} groups, interval {args.interval:g} s, "
          f"{args.minutes:g} min each, {os.cpu_count()} vCPUs"
          + ("" if args.write_every is None else f", write_every {args.write_every}"),
          flush=True)

    # 1. the whole daemon
    log = tmp / "daemon.log"
    t_start = time.monotonic()
    #: (phase, wall clock at its start): where each late or slow pass fell
    phases = [("start-up", time.time())]
    with log.open("w") as logf:
        d = subprocess.Popen([sys.executable, "-m", "governor", "run", "--config", str(cfg),
                              "--sample-interval", f"{args.interval:g}s"],
                             stderr=logf, cwd=REPO)
    wait_until(lambda: "governor running" in log.read_text() or d.poll() is not None, 3600,
               "the daemon to start", step=0.5)
    if d.poll() is not None:
        print(log.read_text()[-3000:])
        return 1
    print(f"daemon started in {time.monotonic() - t_start:.0f} s (the policy applied)",
          flush=True)
    phases.append(("warm-up", time.time()))
    sleepers = []
    for t in range((args.groups + 99) // 100):
        procs = ROOT / SUBTREE / f"t{t:02d}" / "g000" / "cgroup.procs"
        sleepers.append(subprocess.Popen(
            ["sleep", "100000"], preexec_fn=lambda p=procs: p.write_text(str(os.getpid()))))  # noqa: PLW1509
    # warm-up: until every group has been read once (a start opens the groups over several
    # passes, paced by what they cost: governor/daemon/pace.py; the daemon logs "every
    # group read" when the last is opened), then a few passes
    ramp = time.monotonic()
    while time.monotonic() - ramp < 3600:
        text = log.read_text()
        if "every group read" in text or (
                "groups left for the next pass" not in text
                and time.monotonic() - ramp >= 2 * args.interval):
            break
        time.sleep(args.interval)
    done = [ln for ln in log.read_text().splitlines() if "every group read" in ln]
    print(f"every group read once: {done[-1] if done else 'in the first pass'}; "
          f"{time.monotonic() - ramp:.0f} s of warm-up", flush=True)
    time.sleep(3 * args.interval)
    phases.append(("window", time.time()))
    stages0 = pass_cpu(port)
    threads0 = thread_cpu(d.pid)
    scraper = Scraper(f"http://127.0.0.1:{port}/metrics", args.scrape_every)
    scraper.start()
    d_cpu, d_rss, d_max = measure(d.pid, seconds, args.interval, name="daemon")
    scraper.stop()
    threads1 = thread_cpu(d.pid)
    stages = stage_split(stages0, pass_cpu(port), d_cpu, seconds, args.interval)
    print(stages, flush=True)
    print(thread_split(d.pid, threads0, threads1, seconds, args.interval), flush=True)
    print(f"daemon memory at the end of its window: {smaps(d.pid)}", flush=True)
    if args.profile > 0:
        phases.append(("profile", time.time()))
        profile(d.pid, args.profile, tmp / "profile.txt")
    scrape = plain = None
    if args.scrapes > 0:
        phases.append(("scrapes", time.time()))
        scrape = scrape_cost(d.pid, f"http://127.0.0.1:{port}/metrics", args.scrapes, d_cpu)
        plain = scrape_cost(d.pid, f"http://127.0.0.1:{port}/metrics", args.scrapes, d_cpu,
                            gzip=False)
    phases.append(("stop", time.time()))
    d.send_signal(signal.SIGTERM)
    d.wait(300)
    text = log.read_text()
    stop = [ln for ln in text.splitlines() if "governor stopped" in ln]
    print(f"daemon: {stop[-1] if stop else 'no stop line'}")
    print(late_and_slow(text, phases))
    if args.daemon_only:
        for p in sleepers:
            p.kill()
            p.wait()
        print(f"governor run: CPU {d_cpu * 100:.2f}% of a core, RSS mean {d_rss:.1f} MiB, "
              f"max {d_max / 1024:.1f} (no sampler alone: --daemon-only)")
        return 0

    # 2. the sampler alone, same tree (the daemon left the groups in place)
    s = subprocess.Popen([sys.executable, "-c", SAMPLER_ALONE, str(args.interval), SUBTREE],
                         stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert s.stdout is not None
    first = s.stdout.readline().strip()
    time.sleep(2 * args.interval)
    s_cpu, s_rss, s_max = measure(s.pid, seconds, args.interval, name="sampler")
    print(f"sampler memory at the end of its window: {smaps(s.pid)}", flush=True)
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
    print(f"{stages}; the sampler alone {s_cpu * args.interval * 1e3:.1f} ms a pass")
    if args.host_calibration > 0:
        factor = calibrate() / args.host_calibration
        print(f"VM/host factor {factor:.1f} (metering and storing 1,000 samples: "
              f"{args.host_calibration:.1f} ms on the host); host-speed estimate: governor "
              f"run {d_cpu * 100 / factor:.2f}% of one host core, the sampler alone "
              f"{s_cpu * 100 / factor:.2f}%")
    if scrape is not None:
        reads = s_cpu * args.interval
        print(f"one scrape of /metrics ({scrape[1] / 1024:.0f} KiB gzipped): "
              f"{scrape[0] * 1e3:.0f} ms of the daemon's CPU (median of {args.scrapes}); "
              f"one pass's reads (the sampler alone): {reads * 1e3:.0f} ms; "
              f"ratio {scrape[0] / reads:.2f}")
    if plain is not None:
        reads = s_cpu * args.interval
        print(f"one scrape of /metrics uncompressed ({plain[1] / 1024:.0f} KiB; Prometheus's "
              f"enable_compression: false): {plain[0] * 1e3:.0f} ms of the daemon's CPU "
              f"(median of {args.scrapes}); ratio to one pass's reads {plain[0] / reads:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
