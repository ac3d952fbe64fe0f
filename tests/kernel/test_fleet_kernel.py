"""A fleet on one PostgreSQL: three governor daemons with distinct node names, each on its
own subtree of this kernel, writing to one PostgreSQL server that runs on the HOST (the
guest reaches it through QEMU's guest-to-host forwards: ``governor sandbox exec --to-host``,
one address per node so that one node's link can be cut alone).

For at least ten minutes, with churn (group incarnations made and removed every cycle on
every node, a process started every second in another group), node B is killed with
SIGKILL and restarted, and node C's route to the database is blackholed for 60 s.  Then the
fleet bill (``governor bill`` over the central database, all nodes) equals, for every group,
the sum over the three nodes of the kernel's own CPU counters, exactly; no sample or
interval is doubled, and the node whose link dropped spooled and lost nothing.

The server URL (as the guest sees it, through 10.0.2.101) is GOVERNOR_FLEET_PG_URL;
scripts/test.sh sets it and the forwards for the kernel suite.  Without it the test fails
under CI=true and is skipped elsewhere, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select

from governor.cgroupfs import parse
from governor.store.db import upgrade
from governor.store.models import Group, IntervalUsageRow, Node, Sample
from tests.conftest import SCRATCH_CONTROLLERS, _enable_controllers, remove_subtree
from tests.helpers.db import throwaway_database
from tests.kernel.test_daemon_kernel import free_port, wait

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
ENV = "GOVERNOR_FLEET_PG_URL"
#: the guest address of each node's database link (each forwarded to the same host port)
NODES = (("fleet-a", "10.0.2.101"), ("fleet-b", "10.0.2.102"), ("fleet-c", "10.0.2.103"))
DURATION = float(os.environ.get("GOVERNOR_FLEET_SECONDS", "600"))
CYCLE = 40.0

POLICY = """
[plans.standard]
currency = "EUR"
cpu_core_hour = "0.040"
memory_gib_hour = "0.005"
io_read_gib = "0.01"
io_write_gib = "0.02"
[tenants.acme]
plan = "standard"
cpu.max = "10000 100000"
[tenants.acme.groups.web]
cpu.max = "5000 100000"
[tenants.beta]
plan = "standard"
[tenants.beta.groups.batch]
cpu.max = "5000 100000"
"""

#: a busy loop; every group it runs in is capped (acme's adhoc incarnations by acme's own
#: cpu.max): the three nodes' loops together take under half of one CPU, so the ten minutes of
#: churn leave the host's other test suites room to run beside them (scripts/test.sh)
SPIN = ["sh", "-c", "while :; do :; done"]
#: a process started every second (fork and exec churn), each doing a little work
CHURN = ["sh", "-c", "while :; do dd if=/dev/zero of=/dev/null bs=64k count=300 "
         "2>/dev/null; sleep 1; done"]


def counter(group: Path) -> int:
    return parse.parse_flat_keyed((group / "cpu.stat").read_text())["usage_usec"]


def start_in(group: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    procs = str(group / "cgroup.procs")

    def pre() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return subprocess.Popen(argv, preexec_fn=pre,  # noqa: PLW1509
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def freeze(group: Path, procs: list[subprocess.Popen[bytes]]) -> int:
    """Kill everything in ``group``; its CPU counter, once it no longer moves.

    An empty ``cgroup.procs`` is not by itself a still counter: a task leaves the group's
    task list in ``cgroup_exit()``, before its exit ends, and what it runs until its last
    switch is charged to the group.  (A probe in the TCG VM saw no counter move after the
    list emptied in 260 tries, throttled or not; the read is made safe all the same.)  The
    counter is read until two reads half a second apart agree: the value the governor's
    later reads see, and bill."""
    (group / "cgroup.kill").write_text("1")
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=30)
    assert wait(lambda: not (group / "cgroup.procs").read_text().strip(), 30)
    reads = [counter(group)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        reads.append(counter(group))
        if reads[-1] == reads[-2]:
            return reads[-1]
    raise AssertionError(f"{group}: usage_usec still moving 30 s after it emptied: {reads}")


@dataclass
class Daemon:
    name: str
    addr: str
    sub: Path
    workdir: Path
    url: str
    proc: subprocess.Popen[bytes] | None = None
    events: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def log(self) -> Path:
        return self.workdir / "daemon.log"

    def configure(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.workdir / "policy.toml").write_text(POLICY)
        (self.workdir / "config.toml").write_text(
            f'[governor]\ncgroup_root = "/sys/fs/cgroup"\nsubtree = "{self.sub.name}"\n'
            f'policy = "{self.workdir}/policy.toml"\nstate_dir = "{self.workdir}/state"\n'
            f'node = "{self.name}"\n[database]\nurl = "{self.url}"\n'
            f'[exporter]\nlisten = "127.0.0.1:{self.port}"\n')
        self.log.write_text("")

    def start(self) -> None:
        n = self.log.read_text().count("governor running")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "governor", "run", "--config",
             str(self.workdir / "config.toml"), "--sample-interval", "2s"],
            stderr=self.log.open("a"), cwd=REPO)
        assert wait(lambda: self.log.read_text().count("governor running") > n
                    or self.proc is None or self.proc.poll() is not None, 600), self.tail()
        assert self.proc.poll() is None, self.tail()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=180)
        self.proc = None
        return rc

    def tail(self) -> str:
        return f"--- {self.name} ---\n" + self.log.read_text()[-3000:]

    def diagnose(self, engine: Engine, path: str) -> str:
        """What there is to know when this node did not store what the test waited for:
        the process's state, every thread's stack (SIGUSR1 writes them to the log), its
        health metrics, what the database holds of ``path`` from this node, the kernel's
        last messages, and the end of the log."""
        out = [f"--- {self.name}: {path} ---"]
        if self.proc is None:
            out.append("process: stopped by the test")
        elif (rc := self.proc.poll()) is not None:
            out.append(f"process: EXITED with {rc}")
        else:
            out.append(f"process: running (pid {self.proc.pid})")
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                            timeout=20) as r:
                    text = r.read().decode()
                out += [ln for ln in text.splitlines()
                        if ln.startswith("governor_") and 'group="' not in ln]
            except OSError as e:
                out.append(f"/metrics: {e!r}")
        try:
            with engine.connect() as c:
                rows = c.execute(
                    select(Group.cgroup_id, func.count(Sample.ts), func.max(Sample.ts),
                           func.max(Sample.cpu_usage_usec))
                    .join(Sample, Sample.group_id == Group.id, isouter=True)
                    .join(Node, Node.id == Group.node_id)
                    .where(Node.name == self.name, Group.path == path)
                    .group_by(Group.cgroup_id)).all()
                last = c.execute(select(func.max(Sample.ts)).join(
                    Group, Group.id == Sample.group_id).join(
                    Node, Node.id == Group.node_id).where(Node.name == self.name)).scalar()
            out += [f"stored: cgroup_id={r[0]} samples={r[1]} last={r[2]} max_cpu={r[3]}"
                    for r in rows]
            out.append(f"stored: this node's last sample at {last}")
        except Exception as e:  # a diagnosis never hides the failure it explains
            out.append(f"database: {e!r}")
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
        out += ["dmesg:", *dmesg.stdout.splitlines()[-15:]]
        out.append("log:\n" + self.log.read_text()[-12000:])
        return "\n".join(out)


@pytest.fixture
def fleet_db() -> Iterator[str]:
    """A fresh database on the host's PostgreSQL, as the guest reaches it via 10.0.2.101."""
    server = os.environ.get(ENV)
    if not server:
        why = (f"{ENV} is not set: scripts/test.sh sets it, with the guest-to-host forwards "
               "(governor sandbox exec --to-host 10.0.2.101:5432:PGPORT, also .102, .103)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    with throwaway_database(server, prefix="gov_fleet") as url:
        yield url


@pytest.fixture
def subtrees(cgroup2_mount: Path) -> Iterator[list[Path]]:
    _enable_controllers(cgroup2_mount, SCRATCH_CONTROLLERS)
    tops = [cgroup2_mount / f"gfleet-{n}-{uuid.uuid4().hex[:6]}" for n, _ in NODES]
    for t in tops:
        t.mkdir()
    try:
        yield tops
    finally:
        for t in tops:
            remove_subtree(t)


def sampled(engine: Engine, node: str, path: str, cgroup_id: int, value: int) -> bool:
    """A raw sample of this incarnation on ``node`` holds ``value`` (stored, not spooled)."""
    with engine.connect() as c:
        n = c.execute(select(func.count()).select_from(Sample)
                      .join(Group, Group.id == Sample.group_id)
                      .join(Node, Node.id == Group.node_id)
                      .where(Node.name == node, Group.path == path,
                             Group.cgroup_id == cgroup_id,
                             Sample.cpu_usage_usec == value)).scalar_one()
    return int(n) > 0


def metered_to(engine: Engine, node: str, path: str, cgroup_id: int, value: int) -> bool:
    """The metered intervals of this incarnation reach the sample holding ``value``."""
    with engine.connect() as c:
        ts = c.execute(select(func.max(Sample.ts)).join(Group, Group.id == Sample.group_id)
                       .join(Node, Node.id == Group.node_id)
                       .where(Node.name == node, Group.path == path,
                              Group.cgroup_id == cgroup_id,
                              Sample.cpu_usage_usec == value)).scalar()
        end = c.execute(select(func.max(IntervalUsageRow.end_ts))
                        .join(Group, Group.id == IntervalUsageRow.group_id)
                        .join(Node, Node.id == Group.node_id)
                        .where(Node.name == node, Group.path == path,
                               Group.cgroup_id == cgroup_id)).scalar()
    return ts is not None and end is not None and end >= ts


def test_three_nodes_one_postgresql_fleet_bill_equals_the_kernel(
        fleet_db: str, subtrees: list[Path], tmp_path: Path) -> None:
    url = fleet_db
    upgrade(url)
    daemons = [Daemon(n, a, sub, tmp_path / n, url.replace("10.0.2.101", a))
               for (n, a), sub in zip(NODES, subtrees, strict=True)]
    engine = create_engine(url)
    #: (node, path, cgroup id) -> the frozen kernel counter of every incarnation
    frozen: dict[tuple[str, str, int], int] = {}
    steady: dict[str, list[subprocess.Popen[bytes]]] = {}
    route_down = False
    try:
        for d in daemons:
            d.configure()
            d.start()
        for d in daemons:
            assert wait(lambda d=d: (d.sub / "acme/web/cgroup.procs").exists()  # type: ignore[misc]
                        and (d.sub / "beta/batch/cgroup.procs").exists(), 120), d.tail()
            steady[d.name] = [start_in(d.sub / "acme/web", SPIN),
                              start_in(d.sub / "beta/batch", CHURN)]
        t0 = time.monotonic()
        cycle = 0
        # cycles until DURATION has passed and both faults (cycles 2 and 3) have happened
        while time.monotonic() - t0 < DURATION or cycle < 3:
            cycle += 1
            print(f"cycle {cycle} at {time.monotonic() - t0:.0f} s", flush=True)
            # a new incarnation of acme/adhoc on every node (made as a runtime would: a
            # directory the policy does not name, found, sampled and billed)
            adhoc: dict[str, tuple[Path, int, subprocess.Popen[bytes]]] = {}
            for d in daemons:
                g = d.sub / "acme" / "adhoc"
                g.mkdir()
                adhoc[d.name] = (g, g.stat().st_ino, start_in(g, SPIN))
            if cycle == 2:     # node B: kill -9 mid-run, restarted 5 s later
                b = daemons[1]
                assert b.stop(signal.SIGKILL) == -signal.SIGKILL
                time.sleep(5)
                b.start()
                b.events.append("killed with SIGKILL, restarted")
            if cycle == 3:     # node C: its database link blackholed for 60 s
                c = daemons[2]
                subprocess.run(["ip", "route", "add", "blackhole", f"{c.addr}/32"], check=True)
                route_down = True
                time.sleep(60)
                subprocess.run(["ip", "route", "del", "blackhole", f"{c.addr}/32"], check=True)
                route_down = False
                c.events.append("database link blackholed for 60 s")
            time.sleep(CYCLE)
            for d in daemons:
                g, ino, p = adhoc[d.name]
                value = freeze(g, [p])
                frozen[(d.name, "acme/adhoc", ino)] = value
                # the frozen counter stored (through the spool for node C), then removed
                assert wait(lambda d=d, ino=ino, value=value: sampled(  # type: ignore[misc]
                    engine, d.name, "acme/adhoc", ino, value), 300), \
                    f"cgroup_id={ino} value={value}\n" + d.diagnose(engine, "acme/adhoc")
                g.rmdir()
        print(f"churn over at {time.monotonic() - t0:.0f} s", flush=True)
        for d in daemons:
            for rel in ("acme/web", "beta/batch"):
                g = d.sub / rel
                value = freeze(g, steady[d.name])
                frozen[(d.name, rel, g.stat().st_ino)] = value
        for (node, path, ino), value in frozen.items():
            d = next(x for x in daemons if x.name == node)
            assert wait(lambda n=node, p=path, i=ino, v=value: metered_to(  # type: ignore[misc]
                engine, n, p, i, v), 300), \
                f"cgroup_id={ino} value={value}\n" + d.diagnose(engine, path)
        rcs = [d.stop() for d in daemons]
        assert rcs == [0, 0, 0], "".join(d.tail() for d in daemons)
        assert cycle >= 3 and time.monotonic() - t0 >= DURATION
        assert [d.events for d in daemons] == [
            [], ["killed with SIGKILL, restarted"], ["database link blackholed for 60 s"]]
        c_log = daemons[2].log.read_text()
        stuck = [ln for ln in c_log.splitlines() if "still running" in ln or "link dead" in ln]
        assert "samples not stored" in c_log or "database unreachable" in c_log, \
            "\n".join([*stuck, c_log[-3000:]])   # where a pass waited, in full
        check_fleet(engine, url, daemons, frozen, tmp_path)
    finally:
        if route_down:
            subprocess.run(["ip", "route", "del", "blackhole", f"{daemons[2].addr}/32"],
                           check=False)
        for procs in steady.values():
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
        engine.dispose()


def check_fleet(engine: Engine, url: str, daemons: list[Daemon],
                frozen: dict[tuple[str, str, int], int], tmp_path: Path) -> None:
    """Every incarnation billed exactly its kernel counter (from its first sample, or from
    zero when the governor saw it made); the fleet bill's CPU lines are the sums over the
    three nodes; nothing doubled."""
    from governor.billing.service import make_invoices
    from governor.policy import load_policy

    with engine.connect() as c:
        rows = c.execute(
            select(Node.name, Group.path, Group.cgroup_id, Group.id)
            .join(Node, Node.id == Group.node_id).where(Group.name.is_not(None))).all()
        billed: dict[tuple[str, str, int], int] = {}
        expected: dict[tuple[str, str, int], int] = {}
        for node, path, cgid, gid in rows:
            key = (node, path, int(cgid))
            billed[key] = int(c.execute(
                select(func.coalesce(func.sum(IntervalUsageRow.cpu_usec), 0))
                .where(IntervalUsageRow.group_id == gid)).scalar_one())
            first = c.execute(select(Sample.cpu_usage_usec).where(Sample.group_id == gid)
                              .order_by(Sample.ts).limit(1)).scalar_one()
            from_creation = bool(c.execute(
                select(func.count()).select_from(IntervalUsageRow)
                .where(IntervalUsageRow.group_id == gid,
                       IntervalUsageRow.from_creation)).scalar_one())
            if key in frozen:
                expected[key] = frozen[key] - (0 if from_creation else int(first))
        dup_samples = c.execute(select(func.count()).select_from(
            select(Sample.group_id, Sample.ts).group_by(Sample.group_id, Sample.ts)
            .having(func.count() > 1).subquery())).scalar_one()
        dup_intervals = c.execute(select(func.count()).select_from(
            select(IntervalUsageRow.group_id, IntervalUsageRow.start_ts)
            .group_by(IntervalUsageRow.group_id, IntervalUsageRow.start_ts)
            .having(func.count() > 1).subquery())).scalar_one()
        nodes = sorted(c.execute(select(Node.name)).scalars().all())
        span = c.execute(select(func.min(Sample.ts), func.max(Sample.ts))).one()
    assert nodes == sorted(n for n, _ in NODES)
    assert dup_samples == 0 and dup_intervals == 0
    # every incarnation the test made (and froze) is in the database, on its node
    assert set(frozen) <= set(billed), sorted(set(frozen) - set(billed))
    wrong = {k: (billed[k], v) for k, v in expected.items() if billed[k] != v}
    assert wrong == {}, wrong
    assert all(v > 0 for v in expected.values())
    adhoc = [k for k in frozen if k[1] == "acme/adhoc"]
    assert len(adhoc) >= 3 * 3   # churn: an incarnation per node and cycle

    # the fleet bill, as `governor bill` makes it over the central database
    policy = load_policy([str(daemons[0].workdir / "policy.toml")])
    start = span[0].replace(minute=0, second=0, microsecond=0)
    end = span[1].replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    invoices = {i.tenant: i for i in make_invoices(url, policy, tenant=None, start=start,
                                                   end=end)}
    per_path: dict[str, int] = {}
    for (_, path, _), v in expected.items():
        per_path[path] = per_path.get(path, 0) + v
    got: dict[str, Decimal] = {}
    for inv in invoices.values():
        for line in inv.lines:
            if line.resource == "cpu":
                got[line.path] = got.get(line.path, Decimal(0)) + line.quantity
    want = {p: (Decimal(v) / Decimal(3_600_000_000)).quantize(Decimal("1e-9"))
            for p, v in per_path.items()}
    # and nothing else: no line for a tenant's own cgroup beside its groups (its counters
    # hold theirs: governor.billing.totals.billed_groups)
    assert got == want
    print(f"fleet: {len(billed)} incarnations on {len(nodes)} nodes, "
          f"{sum(expected.values())} us of CPU billed exactly; "
          f"{', '.join(f'{p} {q} core-h' for p, q in sorted(got.items()))}")


def test_a_statement_on_a_blackholed_link_is_cut_not_waited_out(fleet_db: str) -> None:
    """The dead-link backstop on this kernel (governor/store/linkwatch.py): the daemon's
    Database on node C's link; the route to the server blackholed under an open connection,
    five times, at other moments of a pass's transaction; each time the statement waiting
    fails as a lost connection within the watch's stall (3 s here), well before the
    kernel's own timeouts, and the watch says it cut it; once the route is back a new
    connection answers.  (A probe of this link found the kernel alone waiting out the
    whole outage in 3 of 8 tries: the statement's bytes unsent, acknowledgements still
    coming in from QEMU's side.)"""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from governor.store.gate import Database

    addr = NODES[2][1]
    upgrade(fleet_db)
    db = Database(fleet_db.replace("10.0.2.101", addr))
    down = False
    try:
        for trial in range(5):
            assert db.check() and db.link_watch is not None
            watch = db.link_watch
            watch.stall_ms = watch.stuck_ms = 3000
            watch.every = 0.5
            cuts = watch.cuts
            t0 = 0.0
            with pytest.raises(DBAPIError) as err, db.scope() as c:
                # a pass's transaction: the link dies between two of its statements, or
                # while one is on its way (trial 2 onwards: a larger statement)
                assert c.execute(text("SELECT 1")).scalar_one() == 1
                subprocess.run(["ip", "route", "add", "blackhole", f"{addr}/32"],
                               check=True)
                down = True
                t0 = time.monotonic()
                if trial < 2:
                    c.execute(text("SELECT 2"))
                else:
                    c.execute(text("SELECT length(:x)"), {"x": "x" * 200_000 * trial})
            took = time.monotonic() - t0
            first = str(err.value).splitlines()[0]
            print(f"trial {trial}: statement failed after {took:.1f} s: {first}", flush=True)
            assert err.value.connection_invalidated, err.value
            assert watch.cuts == cuts + 1 and took < 12, (watch.cuts, took)
            subprocess.run(["ip", "route", "del", "blackhole", f"{addr}/32"], check=True)
            down = False
            with db.scope() as c:      # the link back: a new connection answers
                assert c.execute(text("SELECT 3")).scalar_one() == 3
    finally:
        if down:
            subprocess.run(["ip", "route", "del", "blackhole", f"{addr}/32"], check=False)
        db.dispose()
