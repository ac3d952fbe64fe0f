"""governor as systemd runs it: the shipped unit, the systemd driver, tenants that outlive
every stop, restart, crash and upgrade of the governor (runs with systemd as PID 1, in
``governor sandbox exec --systemd``; scripts/test.sh boots once for every systemd test).

One world for the module, built once (each governor CLI start costs ~25 s under TCG):
two tenants (one with a dash, to exercise systemd's escaping), twenty processes placed by
rules from a container-like scope in ``workload.slice``, and two ``governor launch``
workloads (a CPU burner capped at half a CPU, and a sleeper).  The tests then run in file
order against it: lifecycle events, systemd's own reloads, what systemd tools show, the
database down at start, and last the bill against the kernel's counters.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from governor.store.models import Group, IntervalUsageRow, Sample

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy/systemd/governor.service"
CG = Path("/sys/fs/cgroup")
ETC = Path("/etc/governor")
DBDIR = Path("/var/lib/governor/db")
DB = f"sqlite:///{DBDIR}/g.db"
BIN = Path("/var/lib/gvtest/bin")
PORT = 9717
WORKERS = 10  # of each tenant: 20 placed by rules

POLICY = """
[tenants.acme]
memory.max = "512M"
cpu.weight = 200
[tenants.acme.groups.web]
memory.max = "256M"
memory.high = "224M"
cpu.max = "0.5"
pids.max = 200
[[tenants.acme.groups.web.match]]
comm = "acme-worker"

[tenants.blue-team]
memory.max = "384M"
[tenants.blue-team.groups."batch@night"]
memory.max = "128M"
cpu.weight = 50
pids.max = 100
[[tenants.blue-team.groups."batch@night".match]]
comm = "blue-worker"
"""
#: the groups' slices (systemd's escaping: '-' is \x2d, '@' is \x40)
SLICES = {
    "acme": "governor.slice/governor-acme.slice",
    "acme/web": "governor.slice/governor-acme.slice/governor-acme-web.slice",
    "blue-team": "governor.slice/governor-blue\\x2dteam.slice",
    "blue-team/batch@night": ("governor.slice/governor-blue\\x2dteam.slice/"
                              "governor-blue\\x2dteam-batch\\x40night.slice"),
}
LIMIT_FILES = ("memory.max", "memory.high", "cpu.max", "cpu.weight", "pids.max")


def run(*argv: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{argv}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 120.0,
             explain: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{explain()}")
        time.sleep(0.2)


def journal() -> str:
    return run("journalctl", "-u", "governor", "--no-pager", "-n", "60", check=False).stdout


def show(unit: str, prop: str) -> str:
    return run("systemctl", "show", "-P", prop, unit).stdout.strip()


def main_pid() -> int:
    return int(show("governor.service", "MainPID") or 0)


def cgroup_of(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    return next((line[3:] for line in text.splitlines() if line.startswith("0::")), None)


def tenant_procs() -> dict[int, str]:
    """Every process in governor's slices: pid -> its cgroup."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            cg = cgroup_of(int(d.name))
            if cg is not None and cg.startswith("/governor.slice/"):
                out[int(d.name)] = cg
    return out


def limits() -> dict[str, str]:
    out = {}
    for rel, path in SLICES.items():
        for f in LIMIT_FILES:
            with contextlib.suppress(OSError):
                out[f"{rel} {f}"] = (CG / path / f).read_text().strip()
        unit = path.rsplit("/", 1)[1]
        for prop in ("MemoryMax", "MemoryHigh", "CPUQuotaPerSecUSec", "CPUWeight", "TasksMax"):
            out[f"{unit} {prop}"] = show(unit, prop)
    return out


def healthz() -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def active() -> bool:
    return show("governor.service", "ActiveState") == "active" and main_pid() > 0


@dataclass
class World:
    workers: subprocess.Popen[bytes]
    launches: list[subprocess.Popen[bytes]] = field(default_factory=list)
    burner: int = 0
    events: list[str] = field(default_factory=list)


def install(wrapper_pythonpath: str | None = None) -> None:
    """The installed governor: /usr/local/bin/governor (the unit's ExecStart) runs this
    checkout's interpreter, or, after an upgrade, another copy of the package."""
    env = f"PYTHONPATH={wrapper_pythonpath} " if wrapper_pythonpath else ""
    w = Path("/usr/local/bin/governor")
    tmp = w.with_suffix(".new")
    tmp.write_text(f"#!/bin/sh\nexec env {env}{sys.executable} -m governor \"$@\"\n")
    tmp.chmod(0o755)
    tmp.replace(w)


def gov(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("/usr/local/bin/governor", *args, "--config", str(ETC / "config.toml"),
               check=check)


def write_policy(text: str) -> None:
    p = ETC / "policy.d" / "tenants.toml"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(p)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    (ETC / "policy.d").mkdir(parents=True, exist_ok=True, mode=0o700)
    (ETC / "config.toml").write_text(
        f'[governor]\nsubtree = "governor.slice"\npolicy = "{ETC}/policy.d"\nnode = "vm"\n'
        f'[database]\nurl = "{DB}"\n[sampling]\ninterval = "2s"\n'
        f'[enforce]\nreconcile_interval = "2s"\n[exporter]\nlisten = "127.0.0.1:{PORT}"\n')
    (ETC / "config.toml").chmod(0o600)
    write_policy(POLICY)
    install()
    DBDIR.mkdir(parents=True, exist_ok=True)
    gov("db", "upgrade")
    shutil.copy(UNIT, "/etc/systemd/system/governor.service")
    run("systemctl", "daemon-reload")
    run("systemctl", "start", "governor")  # Type=notify: returns once READY=1
    assert active(), journal()
    BIN.mkdir(parents=True, exist_ok=True)
    for name in ("acme-worker", "blue-worker"):
        with contextlib.suppress(FileNotFoundError):
            (BIN / name).unlink()
        (BIN / name).symlink_to(shutil.which("sleep") or "/bin/sleep")
    # a container-like scope outside the excluded system and user slices
    loop = (f"for i in $(seq {WORKERS}); do {BIN}/acme-worker 100000 & "
            f"{BIN}/blue-worker 100000 & done; wait")
    workers = subprocess.Popen(["systemd-run", "--scope", "--quiet", "--slice=workload.slice",
                                "sh", "-c", loop])
    w = World(workers)
    cfg = str(ETC / "config.toml")
    w.launches = [
        subprocess.Popen(["/usr/local/bin/governor", "launch", "--config", cfg, "-t", "acme",
                          "-g", "web", "--", "sh", "-c", "while :; do :; done"]),
        subprocess.Popen(["/usr/local/bin/governor", "launch", "--config", cfg, "-t",
                          "blue-team", "-g", "batch@night", "--", "sleep", "100000"]),
    ]

    def comm(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""

    def ready() -> bool:
        procs = tenant_procs()
        comms = [comm(p) for p in procs]
        return (comms.count("acme-worker") == WORKERS
                and comms.count("blue-worker") == WORKERS
                and sum("launch" in cg for cg in procs.values()) >= 4)

    wait_for("20 placed workers and 2 launched workloads", ready, 300,
             lambda: f"{tenant_procs()}\n{journal()}")
    w.burner = next(p for p, cg in tenant_procs().items()
                    if "governor-acme-web-launch" in cg
                    and Path(f"/proc/{p}/comm").read_text().strip() == "sh")
    try:
        yield w
    finally:
        for p in w.launches:
            p.kill()
        workers.kill()
        for pid in tenant_procs():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run("systemctl", "stop", "governor", check=False)


def assert_untouched(before: dict[int, str], lim: dict[str, str], what: str) -> None:
    after = tenant_procs()
    lost = {p: cg for p, cg in before.items() if after.get(p) != cg}
    assert not lost, f"{what}: tenant processes gone or moved: " + ", ".join(
        f"{p} {cg} -> {after.get(p)}" for p, cg in lost.items())
    now = limits()
    changed = {k: (v, now.get(k)) for k, v in lim.items() if now.get(k) != v}
    assert not changed, f"{what}: limits changed: {changed}"


def daemon_in_its_unit() -> None:
    pid = main_pid()
    assert cgroup_of(pid) == "/system.slice/governor.service", (pid, cgroup_of(pid))


def test_placed_and_launched_where_the_policy_says(world: World) -> None:
    procs = tenant_procs()
    for pid, cg in procs.items():
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        if comm == "acme-worker":
            assert cg == "/" + SLICES["acme/web"] + "/governor-acme-web-placed.scope"
        elif comm == "blue-worker":
            assert cg == "/" + SLICES["blue-team/batch@night"] + \
                "/governor-blue\\x2dteam-batch\\x40night-placed.scope"
    lim = limits()
    assert lim["acme/web memory.max"] == str(256 << 20)
    assert lim["acme/web cpu.max"] == "50000 100000"
    assert lim["governor-acme-web.slice CPUQuotaPerSecUSec"] == "500ms"
    assert lim["blue-team/batch@night pids.max"] == "100"
    assert lim["governor-blue\\x2dteam-batch\\x40night.slice TasksMax"] == "100"
    daemon_in_its_unit()


def _restart() -> None:
    run("systemctl", "restart", "governor")


def _stop_start() -> None:
    run("systemctl", "stop", "governor")
    assert show("governor.service", "ActiveState") == "inactive"
    time.sleep(3)  # tenants alone for a while
    run("systemctl", "start", "governor")


def _kill9() -> None:
    old = main_pid()
    os.kill(old, signal.SIGKILL)
    wait_for("Restart= to bring governor back", lambda: active() and main_pid() != old, 120,
             journal)


def _upgrade() -> None:
    """Install another copy of the package (the new version's files), then restart."""
    new = Path("/opt/governor-upgrade")
    shutil.rmtree(new, ignore_errors=True)
    shutil.copytree(REPO / "governor", new / "governor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (new / "governor" / "UPGRADED").write_text("1")
    install(str(new))
    run("systemctl", "restart", "governor")
    environ = Path(f"/proc/{main_pid()}/environ").read_bytes().split(b"\0")
    assert f"PYTHONPATH={new}".encode() in environ  # the new files run


@pytest.mark.parametrize(("what", "event"), [
    ("systemctl restart", _restart), ("systemctl stop, then start", _stop_start),
    ("kill -9 of the main PID", _kill9), ("upgrade, then restart", _upgrade)])
def test_tenants_outlive_the_governor(world: World, what: str,
                                      event: Callable[[], None]) -> None:
    before, lim = tenant_procs(), limits()
    old = main_pid()
    event()
    wait_for("governor active again", active, 120, journal)
    assert main_pid() != old
    assert_untouched(before, lim, what)
    daemon_in_its_unit()
    world.events.append(what)


def test_systemd_reloads_change_no_limit(world: World) -> None:
    run("systemctl", "stop", "governor")  # nobody to restore what systemd might reset
    before, lim = tenant_procs(), limits()
    run("systemctl", "daemon-reload")
    run("systemctl", "set-property", "--runtime", "systemd-journald.service", "CPUWeight=90")
    run("systemctl", "set-property", "--runtime", "workload.slice", "MemoryMax=1G")
    time.sleep(2)
    assert_untouched(before, lim, "daemon-reload and set-property on other units")
    run("systemctl", "start", "governor")


def test_systemd_tools_show_the_truth(world: World) -> None:
    cgls = run("systemd-cgls", "--no-pager", "--full", "/governor.slice").stdout
    for rel in SLICES:
        unit = SLICES[rel].rsplit("/", 1)[1]
        assert unit in cgls, (unit, cgls)
    launch_scopes = {cg.rsplit("/", 1)[1] for cg in tenant_procs().values() if "launch" in cg}
    assert len(launch_scopes) == 2
    for scope in launch_scopes:
        assert scope in cgls
    for pid, cg in tenant_procs().items():
        head = run("systemctl", "status", "--no-pager", "--lines=0", str(pid),
                   check=False).stdout.splitlines()
        tenant = "acme" if "governor-acme" in cg else "blue\\x2dteam"
        assert head and re.search(rf"governor-{re.escape(tenant)}-\S+\.scope", head[0]), \
            (pid, cg, head[:2])
    daemon_in_its_unit()


def test_drift_is_restored_and_groups_come_and_go_as_slices(world: World) -> None:
    web = CG / SLICES["acme/web"]
    (web / "memory.max").write_text(str(64 << 20))  # by hand, behind systemd's back
    wait_for("reconcile to restore memory.max through systemd",
             lambda: (web / "memory.max").read_text().strip() == str(256 << 20), 60, journal)
    api = CG / "governor.slice/governor-acme.slice/governor-acme-api.slice"
    write_policy(POLICY + '[tenants.acme.groups.api]\npids.max = 7\n')
    wait_for("the new group's slice", lambda: (api / "pids.max").exists()
             and (api / "pids.max").read_text().strip() == "7", 60, journal)
    assert show("governor-acme-api.slice", "TasksMax") == "7"
    write_policy(POLICY)
    wait_for("the empty group's slice stopped", lambda: not api.exists(), 60, journal)
    assert show("governor-acme-api.slice", "ActiveState") == "inactive"


def test_cpuset_is_allowed_cpus_on_the_slice(world: World) -> None:
    """cpuset.cpus through systemd: AllowedCPUs= on the group's slice (systemd >= 244
    enables the cpuset controller for it), reset when the key leaves the policy."""
    pin = CG / "governor.slice/governor-acme.slice/governor-acme-pin.slice"
    unit = "governor-acme-pin.slice"
    write_policy(POLICY + '[tenants.acme.groups.pin]\ncpuset.cpus = "1"\npids.max = 9\n')
    wait_for("the pinned group's slice", lambda: (pin / "cpuset.cpus").exists()
             and (pin / "cpuset.cpus").read_text().strip() == "1", 60, journal)
    assert show(unit, "AllowedCPUs") == "1"
    assert (pin / "cpuset.cpus.effective").read_text().strip() == "1"
    r = gov("status", "--format", "json", "--interval", "500ms")
    assert '"cpus": "1"' in r.stdout, r.stdout
    write_policy(POLICY + '[tenants.acme.groups.pin]\npids.max = 9\n')
    wait_for("AllowedCPUs= reset", lambda: show(unit, "AllowedCPUs") == "", 60, journal)
    # systemd may also stop enabling cpuset for the slice (nothing asks for it): then the
    # files are gone, and the tasks have every CPU either way
    cpus, effective = pin / "cpuset.cpus", pin / "cpuset.cpus.effective"
    assert not cpus.exists() or cpus.read_text().strip() == ""
    assert not effective.exists() or effective.read_text().strip() == \
        Path("/sys/devices/system/cpu/online").read_text().strip()
    write_policy(POLICY)
    wait_for("the pinned group's slice stopped", lambda: not pin.exists(), 60, journal)


def test_limits_in_force_with_the_database_down(world: World) -> None:
    run("systemctl", "stop", "governor")
    away = DBDIR.with_name("db.away")
    DBDIR.rename(away)
    DBDIR.write_text("")  # a file where the database's directory was: it cannot be opened
    try:
        write_policy(POLICY.replace('memory.max = "256M"', 'memory.max = "300M"'))
        run("systemctl", "start", "governor")  # READY=1: the policy is applied
        web = CG / SLICES["acme/web"]
        wait_for("the new memory.max with the database down",
                 lambda: (web / "memory.max").read_text().strip() == str(300 << 20), 2.0 + 2,
                 journal)
        code, body = healthz()
        assert code == 503 and "database" in body, (code, body)
    finally:
        DBDIR.unlink()
        away.rename(DBDIR)
    wait_for("the spool to drain into the database", lambda: healthz()[0] == 200, 180,
             lambda: f"{healthz()}\n{journal()}")


def test_bill_equals_the_kernels_counters(world: World) -> None:
    os.kill(world.burner, signal.SIGSTOP)
    web = CG / SLICES["acme/web"]
    stopped_at = time.time()
    engine = create_engine(DB)

    def metered_after(ts: float) -> bool:
        # the metered intervals, not only the raw samples: they are written every
        # [sampling] write_every passes (docs/operations.md), so a bill lags the samples
        # by up to that many passes
        with engine.connect() as c:
            last = c.execute(select(func.max(IntervalUsageRow.end_ts)).join(
                Group, Group.id == IntervalUsageRow.group_id)
                .where(Group.path == "acme/web")).scalar()
        return last is not None and last.timestamp() > ts

    wait_for("intervals metered up to two sampling passes after the burner stopped",
             lambda: metered_after(stopped_at + 3), 120, journal)
    kernel = int(next(line.split()[1] for line in (web / "cpu.stat").read_text().splitlines()
                      if line.startswith("usage_usec")))
    with engine.connect() as c:
        billed = c.execute(select(func.coalesce(func.sum(IntervalUsageRow.cpu_usec), 0))
                           .join(Group, Group.id == IntervalUsageRow.group_id)
                           .where(Group.path == "acme/web")).scalar_one()
        incarnations = c.execute(select(func.count()).select_from(Group)
                                 .where(Group.path == "acme/web")).scalar_one()
        from_creation = c.execute(select(func.count()).select_from(IntervalUsageRow)
                                  .join(Group, Group.id == IntervalUsageRow.group_id)
                                  .where(Group.path == "acme/web",
                                         IntervalUsageRow.from_creation)).scalar_one()
        first = c.execute(select(Sample.cpu_usage_usec).join(
            Group, Group.id == Sample.group_id).where(Group.path == "acme/web")
            .order_by(Sample.ts).limit(1)).scalar_one()
        dup_samples = c.execute(select(func.count()).select_from(
            select(Sample.group_id, Sample.ts).group_by(Sample.group_id, Sample.ts)
            .having(func.count() > 1).subquery())).scalar_one()
        dup_intervals = c.execute(select(func.count()).select_from(
            select(IntervalUsageRow.group_id, IntervalUsageRow.start_ts)
            .group_by(IntervalUsageRow.group_id, IntervalUsageRow.start_ts)
            .having(func.count() > 1).subquery())).scalar_one()
    engine.dispose()
    os.kill(world.burner, signal.SIGCONT)
    assert incarnations == 1  # every restart adopted the same slice
    assert world.events == ["systemctl restart", "systemctl stop, then start",
                            "kill -9 of the main PID", "upgrade, then restart"]
    expected = kernel if from_creation else kernel - int(first or 0)
    assert billed == expected, (billed, kernel, first, from_creation)
    assert billed > 10_000_000  # the burner ran for real (>10 s of CPU at half a CPU)
    assert dup_samples == 0 and dup_intervals == 0
