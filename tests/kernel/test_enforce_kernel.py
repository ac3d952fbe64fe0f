"""Policy enforcement on a real cgroup v2 kernel: values land, limits hold, drift is undone.

Each test gets a fresh scratch subtree of the VM's cgroup2 root and treats it as the
governor's subtree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from governor.cgroupfs import parse
from governor.cgroupfs.files import CgroupFS
from governor.enforce.keeper import Enforcer

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]

TWO_TENANTS = """
[tenants.acme]
memory.max = "256M"
cpu.weight = 300
pids.max = 200
[tenants.acme.groups.web]
memory.max = "128M"
memory.high = "96M"
memory.low = "16M"
memory.min = "8M"
memory.swap.max = "0"
cpu.weight = 200
cpu.max = "1.5"
io.weight = 150
pids.max = 64
[tenants.acme.groups.batch]
memory.max = "64M"
cpu.shares = 512
cpus = 0.5
pids.max = "max"
oom.group_kill = true
[tenants.globex]
memory.max = "128M"
[tenants.globex.groups.api]
memory.max = "32M"
"cpu.max.burst" = "10ms"
cpu.max = "50000 100000"
io.max = { "/dev/vda" = { wbps = "2M", riops = 500 } }
"""


@pytest.fixture
def mount(cgroup2_mount: Path) -> Iterator[CgroupFS]:
    with CgroupFS(cgroup2_mount) as fs:
        yield fs


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policy.d"
    d.mkdir()
    return d


def write_policy(d: Path, text: str, name: str = "10-main.toml") -> Path:
    p = d / name
    tmp = d / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(p)  # atomic, as configuration management does
    return p


def enforcer(mount: CgroupFS, scratch: Path, policy_dir: Path) -> Enforcer:
    return Enforcer(mount, scratch.name, str(policy_dir))


def read(scratch: Path, rel: str, file: str) -> str:
    return (scratch / rel / file).read_text().strip()


def in_group(scratch: Path, rel: str, argv: list[str], *, cpu: int | None = None,
             **kw: object) -> subprocess.Popen[bytes]:
    """Start ``argv`` already inside the group (the child joins it before exec)."""
    procs = str(scratch / rel / "cgroup.procs")

    def pre() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return subprocess.Popen(argv, preexec_fn=pre, **kw)  # type: ignore[call-overload]  # noqa: PLW1509


def events(scratch: Path, rel: str, file: str = "memory.events") -> dict[str, int]:
    return parse.parse_flat_keyed((scratch / rel / file).read_text())


def usage_usec(scratch: Path, rel: str) -> int:
    return events(scratch, rel, "cpu.stat")["usage_usec"]


def apply_policy(mount: CgroupFS, scratch: Path, policy_dir: Path, text: str) -> Enforcer:
    write_policy(policy_dir, text)
    e = enforcer(mount, scratch, policy_dir)
    assert e.reload(trigger="test")
    assert e.write_errors == 0
    return e


def test_two_tenants_every_file_reads_back(mount: CgroupFS, scratch_subtree: Path,
                                           policy_dir: Path) -> None:
    e = apply_policy(mount, scratch_subtree, policy_dir, TWO_TENANTS)
    s = scratch_subtree
    st = os.stat("/dev/vda")
    dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    expect = {
        ("acme", "memory.max"): "268435456", ("acme", "cpu.weight"): "300",
        ("acme", "pids.max"): "200",
        ("acme/web", "memory.max"): "134217728", ("acme/web", "memory.high"): "100663296",
        ("acme/web", "memory.low"): "16777216", ("acme/web", "memory.min"): "8388608",
        ("acme/web", "memory.swap.max"): "0", ("acme/web", "cpu.weight"): "200",
        ("acme/web", "cpu.max"): "150000 100000", ("acme/web", "io.weight"): "default 150",
        ("acme/web", "pids.max"): "64",
        ("acme/batch", "memory.max"): "67108864", ("acme/batch", "cpu.weight"): "59",
        ("acme/batch", "cpu.max"): "50000 100000", ("acme/batch", "pids.max"): "max",
        ("acme/batch", "memory.oom.group"): "1",
        ("globex", "memory.max"): "134217728",
        ("globex/api", "memory.max"): "33554432", ("globex/api", "cpu.max"): "50000 100000",
        ("globex/api", "cpu.max.burst"): "10000",
        ("globex/api", "io.max"): f"{dev} rbps=max wbps=2097152 riops=500 wiops=max",
    }
    for (rel, file), want in expect.items():
        assert read(s, rel, file) == want, (rel, file)
    for tenant in ("acme", "globex"):
        assert set(read(s, tenant, "cgroup.subtree_control").split()) == {
            "cpu", "io", "memory", "pids"}
    # nothing left to do: a reconcile pass makes zero writes
    assert e.plan().writes == []
    assert e.reconcile() == [] and sum(e.drift.values()) == 0


def test_memory_max_oom_kills(mount: CgroupFS, scratch_subtree: Path,
                              policy_dir: Path) -> None:
    apply_policy(mount, scratch_subtree, policy_dir, """
[tenants.t]
[tenants.t.groups.g]
memory.max = "32M"
memory.swap.max = "0"
""")
    p = in_group(scratch_subtree, "t/g", [sys.executable, "-c",
                                          "b = b'x' * (96 << 20)\nprint('survived')"],
                 stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL and b"survived" not in out
    ev = events(scratch_subtree, "t/g")
    assert ev["oom_kill"] >= 1 and ev["max"] >= 1


def test_memory_high_throttles_without_kill(mount: CgroupFS, scratch_subtree: Path,
                                            policy_dir: Path) -> None:
    apply_policy(mount, scratch_subtree, policy_dir, """
[tenants.t]
[tenants.t.groups.g]
memory.high = "16M"
""")
    # buffered reads of the scratch disk fill the page cache, charged to the group
    p = in_group(scratch_subtree, "t/g", ["dd", "if=/dev/vda", "of=/dev/null", "bs=1M",
                                          "count=96"], stderr=subprocess.DEVNULL)
    assert p.wait(timeout=120) == 0
    ev = events(scratch_subtree, "t/g")
    assert ev["high"] > 0 and ev["oom_kill"] == 0 and ev["max"] == 0
    peak = int(read(scratch_subtree, "t/g", "memory.peak"))
    assert peak < 48 << 20, peak  # held near 16M: 96M were read through the group


BURN = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"


def test_cpu_weight_shares_one_busy_cpu(mount: CgroupFS, scratch_subtree: Path,
                                        policy_dir: Path) -> None:
    apply_policy(mount, scratch_subtree, policy_dir, """
[tenants.t]
[tenants.t.groups.light]
cpu.weight = 100
[tenants.t.groups.heavy]
cpu.weight = 300
""")
    s = scratch_subtree
    procs = [in_group(s, g, [sys.executable, "-c", BURN.format(s=30)], cpu=0)
             for g in ("t/light", "t/heavy")]
    try:
        time.sleep(2.0)  # both running and competing
        a0, b0 = usage_usec(s, "t/light"), usage_usec(s, "t/heavy")
        time.sleep(6.0)
        a1, b1 = usage_usec(s, "t/light"), usage_usec(s, "t/heavy")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    ratio = (b1 - b0) / (a1 - a0)
    assert 3 * 0.85 <= ratio <= 3 * 1.15, f"heavy/light = {ratio:.2f}, want 3 +/- 15%"


def test_cpu_max_caps(mount: CgroupFS, scratch_subtree: Path, policy_dir: Path) -> None:
    apply_policy(mount, scratch_subtree, policy_dir, """
[tenants.t]
[tenants.t.groups.g]
cpu.max = "0.2"
""")
    s = scratch_subtree
    p = in_group(s, "t/g", [sys.executable, "-c", BURN.format(s=30)])
    try:
        time.sleep(1.5)
        u0, t0, th0 = usage_usec(s, "t/g"), time.monotonic(), events(s, "t/g", "cpu.stat")
        time.sleep(5.0)
        u1, t1, th1 = usage_usec(s, "t/g"), time.monotonic(), events(s, "t/g", "cpu.stat")
    finally:
        p.kill()
        p.wait()
    cores = (u1 - u0) / 1e6 / (t1 - t0)
    assert 0.15 <= cores <= 0.25, f"used {cores:.3f} cores under a 0.2 cap"
    assert th1["nr_throttled"] > th0["nr_throttled"]


def test_pids_max_refuses_forks(mount: CgroupFS, scratch_subtree: Path,
                                policy_dir: Path) -> None:
    apply_policy(mount, scratch_subtree, policy_dir, """
[tenants.t]
[tenants.t.groups.g]
pids.max = 5
""")
    code = ("import os, time\nok = 0\nfor i in range(10):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        continue\n    if pid == 0:\n        time.sleep(3)\n"
            "        os._exit(0)\n    ok += 1\nprint(ok)\n")
    p = in_group(scratch_subtree, "t/g", [sys.executable, "-c", code], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=120)
    assert int(out) == 4  # the parent plus four children make five
    assert events(scratch_subtree, "t/g", "pids.events")["max"] >= 6


def test_io_max_holds_write_rate(mount: CgroupFS, scratch_subtree: Path,
                                 policy_dir: Path) -> None:
    apply_policy(mount, scratch_subtree, policy_dir, """
[tenants.t]
[tenants.t.groups.g]
io.max = { "/dev/vda" = { wbps = "2M" } }
""")
    t0 = time.monotonic()
    p = in_group(scratch_subtree, "t/g", ["dd", "if=/dev/zero", "of=/dev/vda", "bs=64k",
                                          "count=128", "oflag=direct"],
                 stderr=subprocess.DEVNULL)
    assert p.wait(timeout=120) == 0
    rate = (8 << 20) / (time.monotonic() - t0)
    assert (2 << 20) * 0.8 <= rate <= (2 << 20) * 1.2, f"{rate / (1 << 20):.2f} MiB/s"


def test_io_weight_splits_bandwidth_under_iocost(mount: CgroupFS, scratch_subtree: Path,
                                                 policy_dir: Path, cgroup2_mount: Path) -> None:
    st = os.stat("/dev/vda")
    dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    # a fixed cost model makes the device "saturated" at a known rate (2 MiB/s, well below
    # what the emulated disk does even at queue depth 1), so the budget, not the latency,
    # is what the two groups share by weight (cgroup-v2.rst, io.cost.model / io.cost.qos)
    (cgroup2_mount / "io.cost.model").write_text(
        f"{dev} ctrl=user model=linear rbps=2097152 rseqiops=4096 rrandiops=4096 "
        "wbps=2097152 wseqiops=4096 wrandiops=4096")
    (cgroup2_mount / "io.cost.qos").write_text(
        f"{dev} enable=1 ctrl=user rpct=0 rlat=0 wpct=0 wlat=0 min=100 max=100")
    try:
        apply_policy(mount, scratch_subtree, policy_dir, """
[tenants.t]
[tenants.t.groups.light]
io.weight = 100
[tenants.t.groups.heavy]
io.weight = 300
""")
        s = scratch_subtree
        # two writers per group keep both backlogged
        ps = [in_group(s, g, ["timeout", "15", "dd", "if=/dev/zero", "of=/dev/vda", "bs=64k",
                              f"seek={seek}", "count=900", "oflag=direct"],
                       stderr=subprocess.DEVNULL)
              for g, seek in (("t/light", 0), ("t/light", 1000), ("t/heavy", 2000),
                              ("t/heavy", 3000))]
        time.sleep(3)
        w0 = [parse.parse_io_stat(read(s, g, "io.stat")).get(dev, {}).get("wbytes", 0)
              for g in ("t/light", "t/heavy")]
        time.sleep(8)
        w1 = [parse.parse_io_stat(read(s, g, "io.stat")).get(dev, {}).get("wbytes", 0)
              for g in ("t/light", "t/heavy")]
        for p in ps:
            p.kill()
            p.wait()
    finally:
        (cgroup2_mount / "io.cost.qos").write_text(f"{dev} enable=0")
    light, heavy = w1[0] - w0[0], w1[1] - w0[1]
    assert light > 0, "the light writer made no progress"
    ratio = heavy / light
    assert 3 * 0.75 <= ratio <= 3 * 1.25, f"heavy/light = {ratio:.2f}, want 3 +/- 25%"


def test_broken_reload_keeps_everything_and_drift_is_restored(
        mount: CgroupFS, scratch_subtree: Path, policy_dir: Path) -> None:
    e = apply_policy(mount, scratch_subtree, policy_dir, TWO_TENANTS)
    s = scratch_subtree

    def snapshot() -> dict[str, str]:
        return {str(p.relative_to(s)): p.read_text() for p in sorted(s.rglob("*"))
                if p.is_file() and p.name.split(".")[0] in ("memory", "cpu", "io", "pids")
                and p.name.endswith((".max", ".high", ".low", ".min", ".weight", ".burst",
                                     ".group"))}

    before = snapshot()
    write_policy(policy_dir, TWO_TENANTS.replace('memory.max = "32M"', 'memory.max = "12XB"')
                 + "\n[tenants.acme.groups.web.extra]\n")
    assert not e.reload(trigger="test")
    assert e.reloads["invalid"] == 1 and snapshot() == before
    # a hand-edited limit is put back by the next reconcile, and counted
    (s / "acme/web/memory.max").write_text("max")
    (s / "acme/web/cpu.weight").write_text("1")
    outcomes = e.reconcile()
    assert {o.action.file for o in outcomes} == {"memory.max", "cpu.weight"}
    assert e.drift["memory.max"] == 1 and e.drift["cpu.weight"] == 1
    assert snapshot() == before
    # a group removed behind governor's back is re-created with its limits
    os.rmdir(s / "globex/api")
    e.reconcile()
    assert snapshot() == before


def test_group_left_policy_removed_when_empty_kept_when_busy(
        mount: CgroupFS, scratch_subtree: Path, policy_dir: Path) -> None:
    e = apply_policy(mount, scratch_subtree, policy_dir, TWO_TENANTS)
    s = scratch_subtree
    sleeper = in_group(s, "acme/batch", ["sleep", "60"])
    try:
        write_policy(policy_dir, TWO_TENANTS.split("[tenants.acme.groups.batch]", maxsplit=1)[0]
                     + "[tenants.globex]\n")
        assert e.reload(trigger="test")
        assert not (s / "globex/api").exists()           # empty: removed
        assert (s / "acme/batch").exists()               # busy: kept, limits untouched
        assert read(s, "acme/batch", "memory.max") == "67108864"
        assert sleeper.poll() is None                    # and its process left alone
    finally:
        sleeper.kill()
        sleeper.wait()
    deadline = time.monotonic() + 10
    while (s / "acme/batch").exists() and time.monotonic() < deadline:
        e.reconcile()
        time.sleep(0.2)
    assert not (s / "acme/batch").exists()


def _wait(cond: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_daemon_reloads_on_change_and_sighup_and_restores_drift(
        scratch_subtree: Path, policy_dir: Path, tmp_path: Path) -> None:
    from governor.store.db import upgrade

    s = scratch_subtree
    write_policy(policy_dir, TWO_TENANTS)
    upgrade(f"sqlite:///{tmp_path}/g.db")  # the daemon refuses a database without the schema
    (tmp_path / "config.toml").write_text(f'[governor]\nstate_dir = "{tmp_path}/state"\n')
    log = (tmp_path / "daemon.log").open("w+")
    d = subprocess.Popen([sys.executable, "-m", "governor", "run", "--config",
                          str(tmp_path / "config.toml"), "--cgroup-root",
                          "/sys/fs/cgroup", "--subtree", s.name, "--policy", str(policy_dir),
                          "--database", f"sqlite:///{tmp_path}/g.db",
                          "--reconcile-interval", "1s"], stderr=log, cwd=REPO)
    try:
        assert _wait(lambda: (s / "globex/api/cpu.max.burst").exists()
                     and read(s, "globex/api", "cpu.max.burst") == "10000", 120)
        # a change to the files is picked up by the watcher
        write_policy(policy_dir, TWO_TENANTS.replace("cpu.weight = 300", "cpu.weight = 400"))
        assert _wait(lambda: read(s, "acme", "cpu.weight") == "400")
        # a broken version is rejected on SIGHUP; limits stay
        write_policy(policy_dir, TWO_TENANTS.replace("cpu.weight = 300", "cpu.weight = 0"))
        d.send_signal(signal.SIGHUP)
        assert _wait(lambda: "policy rejected" in Path(log.name).read_text())
        assert read(s, "acme", "cpu.weight") == "400"
        # drift is restored by the reconcile job
        (s / "acme/web/memory.max").write_text("max")
        assert _wait(lambda: read(s, "acme/web", "memory.max") == "134217728", 30)
        assert "drift corrected" in Path(log.name).read_text()
    finally:
        d.send_signal(signal.SIGTERM)
        rc = d.wait(timeout=60)
    assert rc == 0, Path(log.name).read_text()[-2000:]
    assert "governor stopped" in Path(log.name).read_text()
