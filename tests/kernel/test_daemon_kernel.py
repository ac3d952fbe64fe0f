"""`governor run` on a real kernel: self-protection, one instance per subtree, and bills that
agree with the kernel's counters (CPU, memory, IO), across a SIGKILL and a re-created group.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from governor.cgroupfs import parse
from governor.store.db import upgrade
from governor.store.models import Group, IntervalUsageRow, Sample

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]

POLICY = """
[tenants.t]
[tenants.t.groups.cpu]
cpu.weight = 100
[tenants.t.groups.mem]
memory.max = "256M"
[tenants.t.groups.io]
pids.max = 64
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(cond: Callable[[], bool], timeout: float = 60.0, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


@dataclass
class Gov:
    sub: Path
    cfg: Path
    log: Path
    url: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self, interval: str = "1s") -> subprocess.Popen[bytes]:
        logf = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "governor", "run", "--config", str(self.cfg),
             "--sample-interval", interval, "--reconcile-interval", "1s"],
            stderr=logf, cwd=REPO)
        n = self.log.read_text().count("governor running")
        assert wait(lambda: self.log.read_text().count("governor running") > n
                    or self.proc is None or self.proc.poll() is not None, 180), self.tail()
        assert self.proc.poll() is None, self.tail()
        return self.proc

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=120)
        self.proc = None
        return rc

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@pytest.fixture
def gov(scratch_subtree: Path, tmp_path: Path) -> Iterator[Gov]:
    with daemon_setup(scratch_subtree, tmp_path) as g:
        yield g


@contextlib.contextmanager
def daemon_setup(scratch_subtree: Path, tmp_path: Path) -> Iterator[Gov]:
    """POLICY, an upgraded SQLite database and a config for ``governor run`` on the scratch
    subtree; a daemon still running at the end is killed."""
    pol = tmp_path / "policy.toml"
    pol.write_text(POLICY)
    db = f"sqlite:///{tmp_path}/g.db"
    upgrade(db)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[governor]\ncgroup_root = "/sys/fs/cgroup"\nsubtree = "{scratch_subtree.name}"\n'
        f'policy = "{pol}"\nstate_dir = "{tmp_path}/state"\nnode = "vm"\n'
        f'[database]\nurl = "{db}"\n[exporter]\nlisten = "127.0.0.1:{free_port()}"\n')
    g = Gov(scratch_subtree, cfg, tmp_path / "daemon.log", db)
    g.log.write_text("")
    try:
        yield g
    finally:
        if g.proc is not None and g.proc.poll() is None:
            g.proc.kill()
            g.proc.wait()


def in_group(sub: Path, rel: str, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside the group: the forked child moves itself before exec, so the
    exec (which tears down the child's copy of this big test process) and everything after
    it is charged to the group."""
    procs = str(sub / rel / "cgroup.procs")

    def pre() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return subprocess.Popen(argv, preexec_fn=pre, **kw)  # type: ignore[call-overload,no-any-return]  # noqa: PLW1509


def engine(g: Gov) -> Engine:
    return create_engine(g.url)


def billed(g: Gov, path: str, column: str) -> int:
    """Sum of a usage quantity over every incarnation of ``path``."""
    e = engine(g)
    with e.connect() as c:
        v = c.execute(select(func.coalesce(func.sum(getattr(IntervalUsageRow, column)), 0))
                      .join(Group, Group.id == IntervalUsageRow.group_id)
                      .where(Group.path == path)).scalar_one()
    e.dispose()
    return int(v)


def raw(g: Gov, path: str, column: str) -> list[int]:
    e = engine(g)
    with e.connect() as c:
        rows = c.execute(select(getattr(Sample, column)).join(Group, Group.id == Sample.group_id)
                         .where(Group.path == path).order_by(Sample.ts)).scalars().all()
    e.dispose()
    return [int(x) for x in rows]


def io_rows(g: Gov) -> list[tuple[object, ...]]:
    """Every t/io sample and interval, for the message of a failed assertion."""
    e = engine(g)
    with e.connect() as c:
        rows: list[tuple[object, ...]] = [tuple(r) for r in c.execute(
            select(Group.id, Group.cgroup_id, Group.created_at, Sample.ts)
            .join(Sample, Sample.group_id == Group.id).where(Group.path == "t/io")
            .order_by(Sample.ts))]
        rows += [tuple(r) for r in c.execute(
            select(IntervalUsageRow.group_id, IntervalUsageRow.start_ts,
                   IntervalUsageRow.end_ts, IntervalUsageRow.io_wbytes,
                   IntervalUsageRow.from_creation)
            .join(Group, Group.id == IntervalUsageRow.group_id).where(Group.path == "t/io"))]
    e.dispose()
    return rows


def kernel_counter(sub: Path, rel: str, file: str, key: str) -> int:
    return parse.parse_flat_keyed((sub / rel / file).read_text())[key]


BURN = ("import resource, sys\n"
        "def used():\n"
        "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
        "    return r.ru_utime + r.ru_stime\n"
        "while used() < float(sys.argv[1]):\n"
        "    pass\n"
        "print(int(used() * 1e6))\n")


def reaped_cpu_usec(p: subprocess.Popen[bytes]) -> int:
    """The child's whole CPU time (user + system) as its parent sees it when reaping it:
    its own getrusage misses the interpreter's shutdown after the last line."""
    assert p.stdout is not None
    p.stdout.read()
    _pid, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0
    return round((ru.ru_utime + ru.ru_stime) * 1e6)


def test_self_protection_and_one_instance(gov: Gov) -> None:
    p = gov.start()
    try:
        cg = parse.parse_proc_cgroup(Path(f"/proc/{p.pid}/cgroup").read_text()).unified
        assert cg == "/governor-daemon"
        assert Path("/sys/fs/cgroup/governor-daemon/memory.min").read_text().strip() == str(
            64 << 20)
        assert Path(f"/proc/{p.pid}/oom_score_adj").read_text().strip() == "-1000"
        second = subprocess.run([sys.executable, "-m", "governor", "run", "--config",
                                 str(gov.cfg)], capture_output=True, text=True, cwd=REPO,
                                timeout=180, check=False)
        assert second.returncode == 2
        assert f"another governor (pid {p.pid})" in second.stderr
    finally:
        assert gov.stop() == 0
    assert "governor stopped" in gov.tail()


def test_cpu_and_io_billed_like_the_kernel(gov: Gov) -> None:
    s = gov.sub
    gov.start()
    k0 = kernel_counter(s, "t/cpu", "cpu.stat", "usage_usec")
    try:
        burner = in_group(s, "t/cpu", [sys.executable, "-c", BURN, "6.0"],
                          stdout=subprocess.PIPE)
        dd = in_group(s, "t/io", ["dd", "if=/dev/zero", "of=/dev/vda", "bs=1M", "count=64",
                                  "oflag=direct"], stderr=subprocess.DEVNULL)
        assert dd.wait(120) == 0
        rusage_usec = reaped_cpu_usec(burner)
        time.sleep(3)  # a few passes after both finished
    finally:
        assert gov.stop() == 0
    cpu = billed(gov, "t/cpu", "cpu_usec")
    k1 = kernel_counter(s, "t/cpu", "cpu.stat", "usage_usec")
    # within 2% of the CPU time the process itself used (rusage, as its parent reaps it)
    assert abs(cpu - rusage_usec) <= 0.02 * rusage_usec, (cpu, rusage_usec, k1 - k0,
                                                          raw(gov, "t/cpu", "cpu_usage_usec"))
    # and exactly the kernel's own counter delta (the group is idle now)
    assert cpu == kernel_counter(s, "t/cpu", "cpu.stat", "usage_usec") - raw(
        gov, "t/cpu", "cpu_usage_usec")[0]
    assert billed(gov, "t/io", "io_wbytes") == 64 << 20     # to the byte
    # the passes' CPU by stage (governor_pass_cpu_seconds_total), in the stop line: each
    # stage ran and was counted, and together they are no more than the passes' wall time
    # (one thread's CPU; a mark counted twice, or a stage not closed, would break that)
    stop = re.findall(r'msg="governor stopped" passes=(\d+) .*pass_mean_s=([\d.]+) .*'
                      r'pass_cpu_read_s=([\d.]+) pass_cpu_store_s=([\d.]+) '
                      r'pass_cpu_meter_s=([\d.]+) pass_cpu_other_s=([\d.]+) '
                      r'pass_cpu_gc_s=([\d.]+)', gov.log.read_text())
    assert stop, gov.tail()
    passes, mean, *stages = (float(x) for x in stop[-1])
    assert all(v > 0 for v in stages[:4]), stages   # the collector may not have run
    assert sum(stages) <= passes * (mean + 0.001) + 0.01, (stages, passes, mean)
    # every group's memory.events was watched (the OOM watch's inotify), so the passes
    # read it only after an event: t, t/cpu, t/io and the others of the policy
    watched = re.findall(r"memory_events_watched=(\d+)", gov.log.read_text())
    assert watched and int(watched[-1]) >= 3, gov.tail()
    # the scheduled jobs' CPU (governor_job_cpu_seconds_total), there for each job
    jobs = dict(re.findall(r"job_cpu_(\w+?)_s=([\d.]+)", gov.log.read_text()))
    assert set(jobs) == {"reconcile", "retention", "spool_drain", "costs",
                         "placement_rescan"}, gov.tail()


def test_memory_billed_in_byte_seconds(gov: Gov) -> None:
    s = gov.sub
    gov.start(interval="0.5s")
    try:
        t_start = time.monotonic()
        # 100 MiB of shmem charged to t/mem, held for a measured time, then released
        assert in_group(s, "t/mem", ["dd", "if=/dev/zero", "of=/dev/shm/governor-bill",
                                     "bs=1M", "count=100"],
                        stderr=subprocess.DEVNULL).wait(60) == 0
        t_written = time.monotonic()
        time.sleep(20)
        held_bytes = int((s / "t/mem/memory.current").read_text())
        time.sleep(20)
        t_release = time.monotonic()
        os.unlink("/dev/shm/governor-bill")
        time.sleep(3)
    finally:
        assert gov.stop() == 0
    assert 100 << 20 <= held_bytes <= (100 << 20) * 1.02, held_bytes  # the 100 MiB, no more
    # held from the end of the write (the ramp counted at half) to the release
    want = held_bytes * (t_release - t_written + (t_written - t_start) / 2)
    got = billed(gov, "t/mem", "memory_byte_seconds")
    assert abs(got - want) <= 0.03 * want, f"billed/held = {got / want:.4f}"


def test_sigkill_restart_and_recreated_group_bill_exactly(gov: Gov) -> None:
    s = gov.sub
    gov.start()
    burner = in_group(s, "t/cpu", [sys.executable, "-c", BURN, "4.0"], stdout=subprocess.PIPE)
    try:
        time.sleep(3)
        assert gov.stop(signal.SIGKILL) == -signal.SIGKILL   # no clean shutdown
        assert in_group(s, "t/io", ["dd", "if=/dev/zero", "of=/dev/vda", "bs=1M",
                                    "count=8", "oflag=direct"],
                        stderr=subprocess.DEVNULL).wait(120) == 0   # while it is down
        time.sleep(2)
        gov.start()
        burner.communicate(timeout=300)
        # remove t/io behind its back: the reconcile re-creates it (a new incarnation)
        first_id = os.stat(s / "t/io").st_ino
        os.rmdir(s / "t/io")
        assert wait(lambda: (s / "t/io").exists() and os.stat(s / "t/io").st_ino != first_id)
        assert in_group(s, "t/io", ["dd", "if=/dev/zero", "of=/dev/vda", "bs=1M",
                                    "count=4", "oflag=direct"],
                        stderr=subprocess.DEVNULL).wait(120) == 0
        time.sleep(3)
    finally:
        if burner.poll() is None:
            burner.kill()
        assert gov.stop() == 0
    # CPU: the bill over the whole run equals the kernel's counter delta, to the microsecond
    samples = raw(gov, "t/cpu", "cpu_usage_usec")
    assert samples == sorted(samples)
    kernel_now = kernel_counter(s, "t/cpu", "cpu.stat", "usage_usec")
    assert samples[-1] == kernel_now
    assert billed(gov, "t/cpu", "cpu_usec") == kernel_now - samples[0]
    # IO: 8 MiB written while governor was down, 4 MiB into the new incarnation: both billed
    assert billed(gov, "t/io", "io_wbytes") == 12 << 20, (io_rows(gov), gov.tail())
    e = engine(gov)
    with e.connect() as c:
        incarnations = c.execute(select(func.count()).select_from(Group)
                                 .where(Group.path == "t/io")).scalar_one()
        negative = c.execute(select(func.count()).select_from(IntervalUsageRow).where(
            (IntervalUsageRow.cpu_usec < 0) | (IntervalUsageRow.io_wbytes < 0)
            | (IntervalUsageRow.memory_byte_seconds < 0))).scalar_one()
        dup = c.execute(select(func.count()).select_from(
            select(Sample.group_id, Sample.ts).group_by(Sample.group_id, Sample.ts)
            .having(func.count() > 1).subquery())).scalar_one()
    e.dispose()
    assert incarnations == 2 and negative == 0 and dup == 0


HOSTILE = [
    ("fuzzed bytes", b"\x00\xff[tenants.\x01]\n=\"", None),
    ("deep nesting", ("x = " + "[" * 5000 + "]" * 5000 + "\n").encode(), None),
    ("huge file", b"# " + b"a" * (2 << 20) + b"\n", None),
    ("escaping name", b'[tenants."../../etc"]\n[tenants.ok.groups."../x"]\n', None),
    ("half-written file", POLICY.encode()[: len(POLICY) // 2] + b'\n[tenants.t.groups.cpu\n',
     None),
    ("symlink outside", None, "/etc/passwd"),
]


def test_hostile_policy_files_rejected_old_policy_kept(gov: Gov, tmp_path: Path) -> None:
    s = gov.sub
    pol = tmp_path / "policy.toml"
    root = Path("/sys/fs/cgroup")
    gov.start()
    before_root = sorted(p.name for p in root.iterdir() if p.is_dir())
    try:
        snapshot = {p: (s / p / "cpu.weight").read_text() for p in ("t/cpu", "t/mem", "t/io")}
        mem = (s / "t/mem/memory.max").read_text()
        for i, (what, data, link) in enumerate(HOSTILE, start=1):
            tmp = tmp_path / "incoming"
            if link is not None:
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(link)
            else:
                tmp.write_bytes(data or b"")
            tmp.replace(pol)
            assert wait(lambda i=i: gov.log.read_text().count(  # type: ignore[misc]
                "policy rejected; the policy in force is unchanged") >= i, 60), (what, gov.tail())
            assert gov.proc is not None and gov.proc.poll() is None, what
            assert (s / "t/mem/memory.max").read_text() == mem, what
            assert {p: (s / p / "cpu.weight").read_text() for p in snapshot} == snapshot, what
        # nothing was created outside the subtree, nothing inside it either
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == before_root
        assert sorted(p.name for p in s.iterdir() if p.is_dir()) == ["t"]
        # and a good policy is taken again
        pol.unlink()
        pol.write_text(POLICY.replace("cpu.weight = 100", "cpu.weight = 250"))
        assert wait(lambda: (s / "t/cpu/cpu.weight").read_text().strip() == "250", 60)
    finally:
        assert gov.stop() == 0


def test_postgres_outage_spooled_then_drained_without_loss(scratch_subtree: Path,
                                                            tmp_path: Path) -> None:
    """PostgreSQL stopped for 60 s under load: samples spool locally, drain when it is back,
    none lost, none doubled, no gap recorded, and the bill still equals the kernel delta."""
    pgdir = "/var/tmp/governor-pg-outage"
    env = dict(os.environ, PG_TEST_DIR=pgdir, PGPORT="5434")
    out = subprocess.run(["sh", "scripts/pg-test-server.sh", "start"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=900, check=True)
    url = out.stdout.strip().split("=", 1)[1]
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]

    def pg_ctl(*args: str) -> None:
        subprocess.run(["su", "-s", "/bin/sh", "postgres", "-c",
                        f"{bindir}/pg_ctl -D {pgdir}/data -w -t 120 " + " ".join(args)],
                       check=True, capture_output=True, timeout=300)

    try:
        upgrade(url)
        pol = tmp_path / "policy.toml"
        pol.write_text(POLICY)
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            f'[governor]\ncgroup_root = "/sys/fs/cgroup"\nsubtree = "{scratch_subtree.name}"\n'
            f'policy = "{pol}"\nstate_dir = "{tmp_path}/state"\nnode = "vm"\n'
            f'[database]\nurl = "{url}"\n[exporter]\nlisten = "127.0.0.1:{free_port()}"\n')
        gov = Gov(scratch_subtree, cfg, tmp_path / "daemon.log", url)
        gov.log.write_text("")
        gov.start()
        burner = in_group(scratch_subtree, "t/cpu", [sys.executable, "-c", BURN, "30"],
                          stdout=subprocess.PIPE)
        try:
            time.sleep(5)
            pg_ctl("-m", "fast", "stop")
            down = time.monotonic()
            time.sleep(60)
            assert "samples not stored" in gov.log.read_text()   # they were spooled
            pg_ctl("-l", f"{pgdir}/server.log", "-o",
                   f"\"-p 5434 -k {pgdir} -c listen_addresses=127.0.0.1 -c fsync=off\"",
                   "start")
            outage = time.monotonic() - down
            spool = tmp_path / "state" / f"{scratch_subtree.name}.spool"
            assert wait(lambda: not spool.exists() or spool.stat().st_size == 0, 120), \
                gov.tail()
            reaped_cpu_usec(burner)
            time.sleep(3)
        finally:
            if burner.poll() is None:
                burner.kill()
            assert gov.stop() == 0
        e = create_engine(url)
        with e.connect() as c:
            from governor.store.models import Gap
            gaps = c.execute(select(func.count()).select_from(Gap)).scalar_one()
            ts = c.execute(select(Sample.ts).join(Group, Group.id == Sample.group_id)
                           .where(Group.path == "t/cpu").order_by(Sample.ts)).scalars().all()
        e.dispose()
        assert gaps == 0
        # every pass the governor made (it logs their number when it stops) is stored, the
        # outage included: none lost, none doubled
        m = re.findall(r'msg="governor stopped" passes=(\d+)', gov.log.read_text())
        assert m and len(ts) == int(m[-1]) == len(set(ts)), (len(ts), m)
        assert len(ts) > outage / 4  # sampling went on through the outage
        samples = raw(gov, "t/cpu", "cpu_usage_usec")
        assert billed(gov, "t/cpu", "cpu_usec") == samples[-1] - samples[0]
        assert samples[-1] == kernel_counter(scratch_subtree, "t/cpu", "cpu.stat",
                                             "usage_usec")
    finally:
        subprocess.run(["sh", "scripts/pg-test-server.sh", "stop"], env=env, cwd=REPO,
                       capture_output=True, timeout=300, check=False)


def test_fork_bomb_and_memory_blowup_do_not_starve_governor_or_neighbours(
        scratch_subtree: Path, tmp_path: Path) -> None:
    s = scratch_subtree
    pol = tmp_path / "policy.toml"
    pol.write_text("""
[tenants.evil]
[tenants.evil.groups.bomb]
pids.max = 200
[tenants.evil.groups.hog]
memory.max = "64M"
memory.swap.max = "0"
[tenants.good]
[tenants.good.groups.work]
cpu.weight = 100
""")
    db = f"sqlite:///{tmp_path}/g.db"
    upgrade(db)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[governor]\ncgroup_root = "/sys/fs/cgroup"\nsubtree = "{s.name}"\n'
        f'policy = "{pol}"\nstate_dir = "{tmp_path}/state"\nnode = "vm"\n'
        f'[database]\nurl = "{db}"\n[exporter]\nlisten = "127.0.0.1:{free_port()}"\n')
    gov = Gov(s, cfg, tmp_path / "daemon.log", db)
    gov.log.write_text("")
    gov.start()
    bomb = hog = worker = None
    try:
        worker = in_group(s, "good/work", [sys.executable, "-c", BURN, "600"],
                          stdout=subprocess.DEVNULL)
        bomb = in_group(s, "evil/bomb", ["bash", "-c", "b() { b | b & }; b; sleep 600"],
                        stderr=subprocess.DEVNULL)
        # dd's 96 MiB buffer is over the 64M limit with no swap: an OOM kill every 3 s from
        # the first second (an interpreter's start took over 23 s in a loaded TCG run)
        hog = in_group(s, "evil/hog", ["bash", "-c", "while true; do dd if=/dev/zero "
                                       "of=/dev/null bs=96M count=1; sleep 3; done"],
                       stderr=subprocess.DEVNULL)
        # both attacks under way (seen in the kernel's counters) before measuring
        assert wait(lambda: kernel_counter(s, "evil/hog", "memory.events", "oom_kill") >= 1
                    and kernel_counter(s, "evil/bomb", "pids.events", "max") >= 1, 90)
        u0, t0 = kernel_counter(s, "good/work", "cpu.stat", "usage_usec"), time.monotonic()
        e0 = kernel_counter(s, "evil", "cpu.stat", "usage_usec")
        time.sleep(15)
        u1, t1 = kernel_counter(s, "good/work", "cpu.stat", "usage_usec"), time.monotonic()
        e1 = kernel_counter(s, "evil", "cpu.stat", "usage_usec")
        kills = kernel_counter(s, "evil/hog", "memory.events", "oom_kill")
        pids_max_hits = kernel_counter(s, "evil/bomb", "pids.events", "max")
    finally:
        for rel in ("evil/bomb", "evil/hog"):
            (s / rel / "cgroup.kill").write_text("1")
        for p in (bomb, hog, worker):
            if p is not None:
                p.kill()
                p.wait()
        rc = gov.stop()
    assert rc == 0, gov.tail()
    assert kills >= 1 and pids_max_hits >= 1   # both attacks really happened
    share, evil = (u1 - u0) / 1e6 / (t1 - t0), (e1 - e0) / 1e6 / (t1 - t0)
    # weight 100 against the attackers' 100: half of the CPU the two use when the CPU is
    # short (the neighbour's one thread is all it asks for).  A share of the CPU used, not
    # cores: how much of the host the VM gets varies (with a CPU hog beside the VM the
    # neighbour had 0.56 of a core, where the test once asked 0.7 of one; with a second VM
    # too, 0.52 against the attackers' 0.74, whose count includes the kernel's work of
    # their OOM kills and failed forks).  Starved is less than half what the attackers get.
    assert share > 0.1, f"the neighbour got {share:.2f} cores"
    assert share / (share + evil) >= 1 / 3, \
        f"the neighbour got {share:.2f} cores, the attackers {evil:.2f}"
    m = re.findall(r'msg="governor stopped" passes=(\d+) slow_passes=(\d+) late_passes=(\d+)',
                   gov.log.read_text())
    assert m, gov.tail()
    passes, _slow, late = (int(x) for x in m[-1])
    lates = [line for line in gov.log.read_text().splitlines() if "pass late" in line
             or "governor running" in line or "governor stopped" in line]
    gaps = [float(g) for g in re.findall(r'msg="sampling pass late" gap_s=([\d.]+)',
                                         gov.log.read_text())]
    # one pass a second, as good as on time: a pass is late only when the VM itself lost the
    # CPU (a loaded CI run with a CPU hog beside the VM saw 4 of 34 passes late, each by one
    # interval, gap 2.0 s); a starved governor would miss most passes, or stop for long.
    # Passes are counted against how long it ran (its log's running and stopped times): a
    # fixed 20 failed a healthy run of 17 s with 18 passes, none late
    stamps = [datetime.fromisoformat(found[1]) for line in lates
              if "pass late" not in line and (found := re.search(r"ts=(\S+)Z", line))]
    ran = (stamps[-1] - stamps[0]).total_seconds() if len(stamps) >= 2 else 0.0
    if not (ran >= 15 and passes >= 0.8 * ran and late <= passes // 5
            and max(gaps, default=0) < 3.5):
        pytest.fail(f"passes, slow, late = {m[-1]}:\n" + "\n".join(lates))


def test_database_down_at_start_enforces_then_drains_without_loss(scratch_subtree: Path,
                                                                  tmp_path: Path) -> None:
    """`governor run` with its database unreachable (a file where its directory should be):
    the limits are in force within one interval and /healthz says degraded; once the
    database appears, the spooled samples are stored: one row per pass, none lost."""
    import json
    import urllib.error
    import urllib.request

    pol = tmp_path / "policy.toml"
    pol.write_text(POLICY)
    wall = tmp_path / "db"
    wall.write_text("not a directory: the database is unreachable\n")
    url = f"sqlite:///{wall}/g.db"
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[governor]\ncgroup_root = "/sys/fs/cgroup"\nsubtree = "{scratch_subtree.name}"\n'
        f'policy = "{pol}"\nstate_dir = "{tmp_path}/state"\nnode = "vm"\n'
        f'[database]\nurl = "{url}"\n[exporter]\nlisten = "127.0.0.1:{port}"\n')
    gov = Gov(scratch_subtree, cfg, tmp_path / "daemon.log", url)
    gov.log.write_text("")

    def healthz() -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    t0 = time.monotonic()
    gov.start()
    try:
        # the policy is in force within one interval of the start, database or not
        assert wait(lambda: (scratch_subtree / "t/mem/memory.max").exists() and (
            scratch_subtree / "t/mem/memory.max").read_text().strip() == str(256 << 20), 1.5)
        assert (scratch_subtree / "t/io/pids.max").read_text().strip() == "64"
        code, doc = healthz()
        assert code == 503 and doc["status"] == "degraded", doc
        assert any("database unreachable" in str(p) for p in doc["problems"]), doc  # type: ignore[attr-defined]
        log = gov.log.read_text()
        assert "database unreachable" in log and "Traceback" not in log
        assert 'msg="policy applied"' in log
        spool = tmp_path / "state" / f"{scratch_subtree.name}.spool"
        assert wait(lambda: spool.exists() and spool.stat().st_size > 0, 10), gov.tail()
        time.sleep(4)
        # the database appears (made elsewhere at the current schema, then moved in place)
        ready = tmp_path / "ready"
        upgrade(f"sqlite:///{ready}/g.db")
        wall.unlink()
        ready.rename(wall)
        assert wait(lambda: not spool.exists(), 30), gov.tail()
        assert wait(lambda: healthz()[0] == 200, 10), healthz()
        assert time.monotonic() - t0 > 5
    finally:
        assert gov.stop() == 0
    m = re.findall(r'msg="governor stopped" passes=(\d+)', gov.log.read_text())
    e = create_engine(url)
    with e.connect() as c:
        from governor.store.models import AppliedPolicy, Gap
        ts = c.execute(select(Sample.ts).join(Group, Group.id == Sample.group_id)
                       .where(Group.path == "t/cpu").order_by(Sample.ts)).scalars().all()
        gaps = c.execute(select(func.count()).select_from(Gap)).scalar_one()
        applied = c.execute(select(AppliedPolicy.trigger)).scalars().all()
    e.dispose()
    # every pass stored once: the outage's spooled ones and the later ones, none doubled
    assert m and len(ts) == int(m[-1]) == len(set(ts)), (len(ts), m, gov.tail())
    assert gaps == 0
    assert "start" in applied   # the policy applied during the outage, recorded afterwards
