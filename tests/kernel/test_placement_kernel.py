"""Placement on a real cgroup v2 kernel: the proc connector, rules, containers, foreign
cgroups, races and `governor launch`.  Each test treats a fresh scratch subtree of the VM's
cgroup2 root as the governor's subtree."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.parse import parse_flat_keyed as parse_flat
from governor.enforce.keeper import Enforcer
from governor.placement import netlink
from governor.placement.placer import Placer
from governor.placement.procfs import pidns_of
from tests.conftest import remove_subtree

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
GOVERNOR = [sys.executable, "-m", "governor"]

POLICY = """
[tenants.t.groups.byuser]
[[tenants.t.groups.byuser.match]]
user = "nobody"
[tenants.t.groups.byexe]
[[tenants.t.groups.byexe.match]]
exe = "/usr/bin/tail"
[tenants.t.groups.ctr]
[[tenants.t.groups.ctr.match]]
container = { init = "sh" }
[tenants.t.groups.adopt]
[[tenants.t.groups.adopt.match]]
cgroup = "/gforeign-*"
[tenants.t.groups.storm]
[[tenants.t.groups.storm.match]]
comm = "sleep"
[tenants.t.groups.oomy]
memory.max = "48M"
memory.swap.max = 0
oom.actions = ["restart", "log"]
oom.restart_max = 2
oom.restart_backoff = "100ms"
"""


def cgroup_of(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.strip().split("::", 1)[1]


def wait_for(pid: int, want: str, timeout: float = 30.0) -> str | None:
    deadline = time.monotonic() + timeout
    cg = cgroup_of(pid)
    while cg != want and time.monotonic() < deadline:
        time.sleep(0.01)
        cg = cgroup_of(pid)
    return cg


def cmdline_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ") \
            .decode()
    except (FileNotFoundError, ProcessLookupError):
        return None


def children_of(pid: int, at_least: int, timeout: float = 60.0) -> list[int]:
    """The children of ``pid`` once there are ``at_least`` (a loaded TCG guest may take
    seconds to run a shell's first forks); what there is at the deadline otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        if len(kids) >= at_least or time.monotonic() > deadline:
            return kids
        time.sleep(0.05)


@pytest.fixture
def world(cgroup2_mount: Path, scratch_subtree: Path,
          tmp_path: Path) -> Iterator[tuple[CgroupFS, Enforcer, Path]]:
    pol = tmp_path / "policy.toml"
    pol.write_text(POLICY)
    with CgroupFS(cgroup2_mount) as fs:
        enf = Enforcer(fs, scratch_subtree.name, str(pol))
        assert enf.reload(trigger="test")
        yield fs, enf, scratch_subtree


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()



def settle(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait up to ``timeout`` seconds for ``check``; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert check(), what

def test_connector_reports_fork_exec_exit() -> None:
    with netlink.Connector() as conn:
        p = subprocess.Popen(["/bin/true"])
        p.wait()
        seen: dict[str, netlink.ProcEvent] = {}
        deadline = time.monotonic() + 10
        while "exit" not in seen and time.monotonic() < deadline:
            for ev in conn.receive():
                if ev.tgid == p.pid:
                    seen.setdefault(ev.name, ev)
    assert seen["fork"].ptgid == os.getpid()
    assert seen["exec"].pid == p.pid
    assert seen["exit"].a == 0


def test_rescan_and_events_place_by_user_exe_container_and_cgroup(
        world: tuple[CgroupFS, Enforcer, Path], procs: list[subprocess.Popen[bytes]],
        cgroup2_mount: Path) -> None:
    fs, enf, scratch = world
    sub = scratch.name
    foreign = cgroup2_mount / f"gforeign-{secrets.token_hex(3)}"
    foreign.mkdir()
    try:
        # started before the governor: the start-up rescan adopts them
        procs.append(subprocess.Popen(["sleep", "300"], user="nobody"))
        before_exe = subprocess.Popen(["tail", "-f", "/dev/null"])
        procs.append(before_exe)
        ctr = subprocess.Popen(["unshare", "--pid", "--fork", "sh", "-c",
                                "sleep 300 & sleep 300 & wait"])
        procs.append(ctr)
        infor = subprocess.Popen(["tail", "-f", "/dev/null"])
        procs.append(infor)
        (foreign / "cgroup.procs").write_text(str(infor.pid))
        children_of(children_of(ctr.pid, 1)[0], 2)  # the container's shell forked both
        placer = Placer(fs, sub, lambda: enf.policy, exclude=(), nice=-10)  # the daemon's
        assert placer.start() is True
        try:
            # the listener thread runs at the nice asked (field 19 of its task's stat)
            deadline = time.monotonic() + 30
            while placer.counters.listener_nice is None and time.monotonic() < deadline:
                time.sleep(0.05)
            task = Path(f"/proc/self/task/{placer.listener_tid}/stat").read_text()
            assert int(task.rsplit(")", 1)[1].split()[16]) == -10
            assert placer.counters.listener_nice == -10
            assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == 0  # the thread only
            assert wait_for(procs[0].pid, f"/{sub}/t/byuser") == f"/{sub}/t/byuser"
            assert wait_for(before_exe.pid, f"/{sub}/t/byexe") == f"/{sub}/t/byexe"
            # the foreign cgroup's rule comes after byexe's in policy order, so the exe wins
            assert wait_for(infor.pid, f"/{sub}/t/byexe") == f"/{sub}/t/byexe"
            # every member of the container, the sleeps too (whole container, by its init)
            members = children_of(ctr.pid, 1)
            assert len(members) == 1
            init = members[0]
            assert pidns_of("/proc", init) != pidns_of("/proc", 1)
            kids = children_of(init, 2)
            assert len(kids) == 2
            for pid in [init, *kids]:
                assert wait_for(pid, f"/{sub}/t/ctr") == f"/{sub}/t/ctr"
            assert cgroup_of(ctr.pid) == "/"  # unshare itself is on the host side

            # started after: the connector's events place them
            user2 = subprocess.Popen(["sleep", "300"], user="nobody")
            procs.append(user2)
            ctr2 = subprocess.Popen(["unshare", "--pid", "--fork", "sh", "-c",
                                     "sleep 1; sleep 300 & wait"])
            procs.append(ctr2)
            foreign2 = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
            procs.append(foreign2)
            assert wait_for(user2.pid, f"/{sub}/t/byuser") == f"/{sub}/t/byuser"
            # the container's later child (forked after `sleep 1`) follows it
            init2 = children_of(ctr2.pid, 1)[0]
            deadline = time.monotonic() + 60
            later: list[int] = []
            while not later and time.monotonic() < deadline:
                later = [k for k in children_of(init2, 1) if cmdline_of(k) == "sleep 300"]
                time.sleep(0.05)
            assert later
            for pid in [init2, *later]:
                assert wait_for(pid, f"/{sub}/t/ctr") == f"/{sub}/t/ctr"
            # a process moved into a foreign cgroup after start is adopted by a rescan
            (foreign / "cgroup.procs").write_text(str(foreign2.pid))
            placer.rescan()
            assert cgroup_of(foreign2.pid) == f"/{sub}/t/adopt"
            assert placer.counters.placements["error"] == 0
            assert placer.counters.events.get("exec", 0) > 0
            mean = placer.counters.handle_seconds / sum(placer.counters.events.values())
            print(f"events {placer.counters.events} mean handle {mean * 1e6:.0f} us "
                  f"max {placer.counters.handle_max_seconds * 1e6:.0f} us (VM, TCG)")
        finally:
            placer.stop()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        remove_subtree(foreign)


def test_excluded_cgroup_left_alone_unless_named(
        world: tuple[CgroupFS, Enforcer, Path], procs: list[subprocess.Popen[bytes]],
        cgroup2_mount: Path) -> None:
    fs, enf, scratch = world
    foreign = cgroup2_mount / f"gforeign-{secrets.token_hex(3)}"
    other = cgroup2_mount / f"gother-{secrets.token_hex(3)}"
    foreign.mkdir()
    other.mkdir()
    try:
        a = subprocess.Popen(["sleep", "300"], user="nobody")  # user rule, no cgroup field
        b = subprocess.Popen(["cat"], stdin=subprocess.PIPE)   # only the cgroup rule
        procs += [a, b]
        (other / "cgroup.procs").write_text(str(a.pid))
        (foreign / "cgroup.procs").write_text(str(b.pid))
        placer = Placer(fs, scratch.name, lambda: enf.policy,
                        exclude=("/gother-*", "/gforeign-*"))
        placer.rescan()
        placer.classify(a.pid)  # an event-style decision counts the exclusion
        assert cgroup_of(a.pid) == f"/{other.name}"
        assert cgroup_of(b.pid) == f"/{scratch.name}/t/adopt"
        assert placer.counters.placements["excluded"] == 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
        remove_subtree(foreign)
        remove_subtree(other)


def test_exit_before_move_and_fork_storm(world: tuple[CgroupFS, Enforcer, Path]) -> None:
    fs, enf, scratch = world
    sub = scratch.name
    placer = Placer(fs, sub, lambda: enf.policy, exclude=())
    # exits between the match and the move
    p = subprocess.Popen(["sleep", "0"])
    p.wait()
    assert placer.classify(p.pid) is None
    q = subprocess.Popen(["sleep", "300"])
    from governor.placement.procfs import Proc
    proc = Proc("/proc", q.pid)
    st = proc.stat()
    q.kill()
    q.wait()
    assert placer._move(q.pid, "t/storm", st.starttime, proc) == "gone"
    assert placer.counters.placements == {"moved": 0, "already": 0, "gone": 1, "error": 0,
                                          "excluded": 0}

    assert placer.start() is True
    # A storm of 1,000 forks and execs: one in four sleeps long enough to be checked
    # (its pid printed), the rest exit within 0-2 s, many before their exec event is read.
    # The check waits for the long sleepers, never for a fixed time: a loaded TCG guest
    # reads the 3,000 events at its own speed.
    script = ("for i in $(seq 1000); do if [ $((i % 4)) -eq 0 ]; "
              "then sleep 300 >/dev/null 2>&1 & echo $!; "
              "else sleep $((i % 3)) >/dev/null 2>&1 & fi; done")
    long: list[int] = []
    try:
        storm = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                               timeout=600, check=True)
        long = [int(x) for x in storm.stdout.split()]
        want = f"/{sub}/t/storm"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if all(cgroup_of(pid) == want for pid in long):
                break
            time.sleep(0.2)
        where = {pid: cgroup_of(pid) for pid in long}
    finally:
        placer.stop()
        for pid in long:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    c = placer.counters.placements
    print(f"fork storm: {c}, events {placer.counters.events}, overflows "
          f"{placer.counters.overflows}, long sleepers {len(long)}")
    assert len(long) == 250
    # every long sleeper, forked in this test's cgroup, was moved by the placer; none was
    # left behind or placed elsewhere, and none died
    assert {pid: cg for pid, cg in where.items() if cg != want} == {}
    assert c["error"] == 0
    assert c["moved"] >= len(long)
    assert c["moved"] + c["gone"] + c["already"] <= 1 + 1000  # the "gone" above, one each


def test_keep_warm_migrations_move_nothing(world: tuple[CgroupFS, Enforcer, Path],
                                           cgroup2_mount: Path) -> None:
    """The no-op migration of keep_warm on the real kernel: this thread written to its own
    cgroup's cgroup.threads is accepted and moves nothing; once the process is moved
    elsewhere, the old path is refused (EOPNOTSUPP: another resource domain), so a stale
    path can never move the daemon back, and the warmer follows to the new cgroup.  Then a
    Placer with keep_warm places a process and keeps writing for the window only."""
    import errno
    import threading

    from governor.cgroupfs.tree import MigrationWarmer, own_cgroup

    fs, enf, scratch = world
    home = own_cgroup()
    others = sorted(Path(f"/proc/{os.getpid()}/task").iterdir())
    w = MigrationWarmer(fs)
    for _ in range(50):
        w.touch()
    assert w.writes == 50 and w.rel == home and own_cgroup() == home
    assert sorted(Path(f"/proc/{os.getpid()}/task").iterdir()) == others
    for t in others:  # every thread of this process is still where it was
        assert (t / "cgroup").read_text().strip() == f"0::/{home}"
    away = cgroup2_mount / f"gwarm-{secrets.token_hex(3)}"
    away.mkdir()
    try:
        (away / "cgroup.procs").write_text(str(os.getpid()))
        tid = str(threading.get_native_id())
        with pytest.raises(OSError) as e:  # the stale path: refused, nothing moved back
            (cgroup2_mount / home / "cgroup.threads").write_text(tid)
        assert e.value.errno == errno.EOPNOTSUPP
        assert own_cgroup() == away.name
        w.touch()  # refused at the old path, then written to the new one
        assert w.rel == away.name and w.writes == 51 and own_cgroup() == away.name
    finally:
        (cgroup2_mount / home / "cgroup.procs").write_text(str(os.getpid()))
        w.close()
        remove_subtree(away)
    assert own_cgroup() == home

    # the daemon's way: the C accelerator's thread writes after each move, for the window
    from governor.cgroupfs import tree
    ACCELERATED = tree._warm is not None  # keep_warm's writer thread (_keepwarm) is built

    placer = Placer(fs, scratch.name, lambda: enf.policy, exclude=(), keep_warm=0.5,
                    keep_warm_min_rate=0)  # a window after every move (the rate: below)
    sleeps: list[subprocess.Popen[bytes]] = []

    def place_one() -> None:
        sleeps.append(subprocess.Popen(["sleep", "30"]))
        want = f"/{scratch.name}/t/storm"
        assert wait_for(sleeps[-1].pid, want) == want

    assert placer.start() is True
    away.mkdir()
    try:
        place_one()
        settle("no-op migrations after the move", lambda: placer.counters.keep_warm_writes > 0)
        assert placer.warmer.background is ACCELERATED
        time.sleep(1.5)  # past the window
        done = placer.counters.keep_warm_writes
        time.sleep(1.0)
        assert placer.counters.keep_warm_writes == done  # stopped with the window
        assert placer.counters.keep_warm_errors == 0
        if ACCELERATED:
            # the daemon is moved while a window is open: the thread's next write is
            # refused at the old path (EOPNOTSUPP), then goes to the new one
            (away / "cgroup.procs").write_text(str(os.getpid()))
            place_one()
            settle("writes at the new cgroup", lambda: placer.warmer.rel == away.name)
            moved_at = placer.counters.keep_warm_writes
            place_one()  # (the window may have closed before the listener saw the refusal)
            settle("writes there", lambda: placer.counters.keep_warm_writes > moved_at)
            settle("the refusal counted", lambda: placer.counters.keep_warm_errors >= 1)
            assert placer.counters.keep_warm_errors == 1
            assert own_cgroup() == away.name  # the old path never moved it back
            (cgroup2_mount / home / "cgroup.procs").write_text(str(os.getpid()))
            place_one()
            settle("writes at home again", lambda: placer.warmer.rel == home)
            # the listener reads the writer's counts every 50 ms: the refusal may land later
            settle("the second refusal counted", lambda: placer.counters.keep_warm_errors >= 2)
            assert placer.counters.keep_warm_errors == 2
    finally:
        placer.stop()
        for s in sleeps:
            s.kill()
            s.wait()
        (cgroup2_mount / home / "cgroup.procs").write_text(str(os.getpid()))
        remove_subtree(away)
    print(f"keep_warm: {done} no-op migrations after one move (window 0.5 s, interval "
          f"{placer.keep_warm_interval * 1e3:.0f} ms), background thread {ACCELERATED}; "
          f"{placer.counters.keep_warm_writes} in all")
    assert done > 0
    assert placer.counters.placements["moved"] >= 1 and own_cgroup() == home


def governor(*args: str, cfg: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # one CLI start takes ~25 s of imports in the TCG guest, several times that when the
    # host runs other VMs: the timeout only catches a hang
    return subprocess.run([*GOVERNOR, *args[:1], "--config", str(cfg), *args[1:]],
                          check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture
def cfg(world: tuple[CgroupFS, Enforcer, Path], tmp_path: Path) -> Path:
    _fs, _enf, scratch = world
    c = tmp_path / "config.toml"
    c.write_text(f'[governor]\ncgroup_root = "/sys/fs/cgroup"\nsubtree = "{scratch.name}"\n'
                 f'policy = "{tmp_path / "policy.toml"}"\n'
                 f'[database]\nurl = "sqlite:///{tmp_path / "g.db"}"\n')
    return c


def test_launch_in_a_minimal_container(cfg: Path, world: tuple[CgroupFS, Enforcer, Path]
                                       ) -> None:
    _fs, _enf, scratch = world
    script = ("echo pid=$$; hostname; cat /proc/self/cgroup; ls /proc | grep -c '^[0-9]'; "
              "cat /sys/class/net/lo/operstate /sys/class/net/lo/flags; "
              "ls /sys/class/net | wc -l; exit 7")
    r = governor("launch", "--tenant", "t", "--group", "byexe", "--unshare",
                 "pid,mount,uts,net", "--hostname", "box", "--", "sh", "-c", script, cfg=cfg)
    assert r.returncode == 7, r.stderr
    lines = r.stdout.split()
    assert lines[0] == "pid=1"
    assert lines[1] == "box"
    assert lines[2] == f"0::/{scratch.name}/t/byexe"
    assert int(lines[3]) <= 3  # the fresh /proc shows only the container's processes
    assert int(lines[5], 16) & 1  # lo is IFF_UP
    assert os.uname().nodename != "box"


def test_launch_exit_codes_and_user(cfg: Path, world: tuple[CgroupFS, Enforcer, Path]
                                    ) -> None:
    _fs, _enf, scratch = world
    r = governor("launch", "-t", "t", "-g", "byuser", "--user", "nobody", "--", "sh", "-c",
                 "id -u; grep NoNewPrivs /proc/self/status; cat /proc/self/cgroup", cfg=cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["65534", "NoNewPrivs:\t1",
                                        f"0::/{scratch.name}/t/byuser"]
    assert governor("launch", "-t", "t", "-g", "byexe", "--", "sh", "-c", "kill -9 $$",
                    cfg=cfg).returncode == 137
    nf = governor("launch", "-t", "t", "-g", "byexe", "--", "no-such-cmd-x", cfg=cfg)
    assert nf.returncode == 127 and "command not found" in nf.stderr
    ne = governor("launch", "-t", "t", "-g", "byexe", "--", "/etc/hostname", cfg=cfg)
    assert ne.returncode == 126 and "cannot execute" in ne.stderr
    mg = governor("launch", "-t", "t", "-g", "nope", "--", "true", cfg=cfg)
    # a group the policy does not have is a usage error, as everywhere (UnknownTenant)
    assert mg.returncode == 2 and "unknown group t/nope: not in the policy" in mg.stderr
    bu = governor("launch", "-t", "t", "-g", "byexe", "--user", "no-such-user-x", "--",
                  "true", cfg=cfg)
    assert bu.returncode == 125 and "no such user" in bu.stderr
    remove_subtree(scratch / "t" / "storm")
    gone = governor("launch", "-t", "t", "-g", "storm", "--", "true", cfg=cfg)
    assert gone.returncode == 125 and "governor policy apply" in gone.stderr


def test_launch_hardening_as_nobody_in_a_real_group(cfg: Path, world: tuple[CgroupFS,
                                                                           Enforcer, Path],
                                                   tmp_path: Path) -> None:
    """Issue 15 item 4 through the CLI on the real kernel: root's environment (a database
    password) and an open descriptor of root's do not reach a command launched as nobody,
    which runs in its own session with nobody's groups only, inside the group."""
    _fs, _enf, scratch = world
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    fd = os.open(secret, os.O_RDONLY)
    script = ('ls /proc/$$/fd; echo "fds end"; id -u; id -g; id -G; '
              'ps -o sid= -p $$ | tr -d " "; echo "pid $$"; cat /proc/self/cgroup; '
              'echo "env:"; env')
    try:
        r = subprocess.run(
            [*GOVERNOR, "launch", "--config", str(cfg), "-t", "t", "-g", "byuser", "--user",
             "nobody", "--env", "APP_MODE=prod", "--", "sh", "-c", script],
            check=False, capture_output=True, text=True, timeout=300, cwd=REPO,
            pass_fds=(fd,), env={**os.environ,
                                 "GOVERNOR_DATABASE": "postgresql://gov:s3cret@db/gov"})
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    end = lines.index("fds end")
    assert sorted(lines[:end]) == ["0", "1", "2"], r.stdout
    uid, gid, groups, sid, pid, cgroup = lines[end + 1:end + 7]
    assert (uid, gid, groups) == ("65534", "65534", "65534"), r.stdout
    assert f"pid {sid}" == pid, r.stdout
    assert cgroup == f"0::/{scratch.name}/t/byuser"
    assert "s3cret" not in r.stdout and "GOVERNOR_" not in r.stdout, r.stdout
    env = dict(x.split("=", 1) for x in lines[lines.index("env:") + 1:])
    assert (env["USER"], env["APP_MODE"], env["PATH"]) == ("nobody", "prod",
                                                           "/usr/local/bin:/usr/bin:/bin")


def test_ps_lists_group_processes(cfg: Path, world: tuple[CgroupFS, Enforcer, Path],
                                  procs: list[subprocess.Popen[bytes]]) -> None:
    _fs, _enf, scratch = world
    p = subprocess.Popen(["tail", "-f", "/dev/null"])
    procs.append(p)
    (scratch / "t" / "byexe" / "cgroup.procs").write_text(str(p.pid))
    import json
    r = governor("ps", "--format", "json", cfg=cfg)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["processes"]
    mine = [x for x in rows if x["pid"] == p.pid]
    assert len(mine) == 1
    assert mine[0]["group"] == "t/byexe" and mine[0]["command"] == "tail -f /dev/null"
    assert mine[0]["user"] == "root" and mine[0]["container"] is False
    t = governor("ps", "--tenant", "t", cfg=cfg)
    assert str(p.pid) in t.stdout and "tail -f /dev/null" in t.stdout


def test_launch_restarts_an_oom_killed_container(cfg: Path, world: tuple[CgroupFS, Enforcer,
                                                                          Path],
                                                 tmp_path: Path) -> None:
    """oom.actions = ["restart"]: the kernel OOM-kills the container's pid 1 three times (the
    first run and two restarts, restart_max = 2), each time a fresh container; then the
    launch gives up with 137.  A run that ends by itself is not restarted."""
    fs, _enf, scratch = world
    rel = f"{scratch.name}/t/oomy"
    before = parse_flat(fs.read(rel, "memory.events"))["oom_kill"]
    runs = tmp_path / "runs"
    hog = (f'echo "$$" >> {runs}; exec {sys.executable} -c '
           '"b = \'x\' * (200 << 20); print(len(b))"')
    r = governor("launch", "--tenant", "t", "--group", "oomy", "--unshare", "pid,mount",
                 "--", "sh", "-c", hog, cfg=cfg)
    assert r.returncode == 137, r.stderr
    # each run was pid 1 of a new pid namespace
    assert runs.read_text().split() == ["1", "1", "1"], r.stderr
    assert "restart 1 of 2 in 0.1s" in r.stderr and "restart 2 of 2 in 0.2s" in r.stderr
    assert "not restarted: 2 of 2 restarts used" in r.stderr
    assert parse_flat(fs.read(rel, "memory.events"))["oom_kill"] == before + 3
    # a command that fits in the limit ends once, with its own code
    r = governor("launch", "--tenant", "t", "--group", "oomy", "--", "sh", "-c",
                 f"echo ok >> {runs}; exit 3", cfg=cfg)
    assert r.returncode == 3 and "restart" not in r.stderr, r.stderr
    assert runs.read_text().split()[-1] == "ok"


def test_keep_warm_opens_only_at_min_rate(world: tuple[CgroupFS, Enforcer, Path]) -> None:
    """keep_warm made adaptive (issue #16) on the real kernel: with keep_warm_min_rate 5,
    moves a second apart open no window (no no-op migration at all); a burst of 10 opens
    one, whose writes stop once the window after the burst is over."""
    fs, enf, scratch = world
    want = f"/{scratch.name}/t/storm"
    placer = Placer(fs, scratch.name, lambda: enf.policy, exclude=(), keep_warm=0.5,
                    keep_warm_min_rate=5)
    sleeps: list[subprocess.Popen[bytes]] = []
    burst: subprocess.Popen[bytes] | None = None

    assert placer.start() is True
    try:
        for _ in range(3):  # slow: one move, then more than a second before the next
            sleeps.append(subprocess.Popen(["sleep", "30"]))
            assert wait_for(sleeps[-1].pid, want) == want
            time.sleep(1.1)
        if placer.warmer.background:
            placer._warm_stats()  # the C thread's count now, not at the listener's next read
        slow = placer.counters.as_dict()
        assert slow["keep_warm_windows"] == 0 and slow["keep_warm_writes"] == 0, slow
        # a burst: ten sleeps forked by one shell within a fraction of a second
        burst = subprocess.Popen(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do "
                                  "sleep 4 & done; wait"])
        settle("the burst placed", lambda: placer.counters.placements["moved"] >= 13)
        settle("a window opened", lambda: placer.counters.keep_warm_windows >= 1)
        settle("no-op migrations in it", lambda: placer.counters.keep_warm_writes > 0)
        time.sleep(1.5)  # past the window (0.5 s after the last move at the rate)
        done = placer.counters.keep_warm_writes
        time.sleep(1.0)
        assert placer.counters.keep_warm_writes == done  # closed with the window
        assert placer.counters.keep_warm_errors == 0
    finally:
        placer.stop()
        if burst is not None:
            burst.wait(timeout=60)  # its sleeps end by themselves
        for s in sleeps:
            s.kill()
            s.wait()
    c = placer.counters
    print(f"keep_warm_min_rate 5: 3 slow moves, no window; a burst of 10: "
          f"{c.keep_warm_windows} window(s), {c.keep_warm_writes} no-op migrations")


def test_an_idle_listener_sleeps_until_an_event_and_stops_at_once(
        world: tuple[CgroupFS, Enforcer, Path]) -> None:
    """The listener waits without a short timeout while nothing happens (issue #16: its
    wake-ups every 0.5 s were an idle daemon's CPU): it still places at once, and a stop
    wakes it (Connector.wake) instead of waiting out the timeout (IDLE_TIMEOUT, 30 s)."""
    from governor.placement.listener import IDLE_TIMEOUT

    fs, enf, scratch = world
    want = f"/{scratch.name}/t/storm"
    placer = Placer(fs, scratch.name, lambda: enf.policy, exclude=())
    assert placer.start() is True
    stopped = False
    sleep = None
    try:
        time.sleep(1.0)   # idle: the listener waits in its receive
        sleep = subprocess.Popen(["sleep", "30"])
        assert wait_for(sleep.pid, want, timeout=5) == want   # an event ends the wait
        time.sleep(1.0)
        t0 = time.monotonic()
        placer.stop()
        stopped = True
        took = time.monotonic() - t0
    finally:
        if not stopped:
            placer.stop()
        if sleep is not None:
            sleep.kill()
            sleep.wait()
    assert IDLE_TIMEOUT >= 30 and took < 5, took   # woken, not timed out
    assert placer._thread is None
