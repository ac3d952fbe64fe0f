"""The cpuset controller on a real kernel (the VM: 2 CPUs, 1 memory node): a policy's
``cpuset.cpus`` lands, the kernel confines the group's tasks to it, the daemon exports and
``governor status`` shows the effective list, a key that leaves the policy is reset, and a
CPU the host lacks is refused.  Kernel: Documentation/admin-guide/cgroup-v2.rst, "Cpuset".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.enforce.keeper import Enforcer
from tests.kernel.test_daemon_kernel import Gov, daemon_setup, wait
from tests.kernel.test_enforce_kernel import in_group, read, write_policy

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]

ONE_CPU = """
[tenants.t]
[tenants.t.groups.pinned]
cpuset.cpus = "1"
[tenants.t.groups.free]
pids.max = 64
"""
WITHOUT = """
[tenants.t]
[tenants.t.groups.pinned]
[tenants.t.groups.free]
pids.max = 64
"""


@pytest.fixture
def mount(cgroup2_mount: Path) -> Iterator[CgroupFS]:
    with CgroupFS(cgroup2_mount) as fs:
        yield fs


@pytest.fixture
def two_cpus() -> None:
    online = Path("/sys/devices/system/cpu/online").read_text().strip()
    if online != "0-1":
        pytest.fail(f"the VM has CPUs {online}, this test is written for 0-1")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policy.d"
    d.mkdir()
    return d


def apply(mount: CgroupFS, scratch: Path, policy_dir: Path, text: str,
          e: Enforcer | None = None) -> Enforcer:
    write_policy(policy_dir, text)
    e = e or Enforcer(mount, scratch.name, str(policy_dir))
    assert e.reload(trigger="test")
    assert e.write_errors == 0
    return e


def governor(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "governor", *args], cwd=REPO, text=True,
                          capture_output=True, check=False, timeout=timeout)


@pytest.mark.usefixtures("two_cpus")
def test_cpus_land_confine_the_tasks_and_reset(mount: CgroupFS, scratch_subtree: Path,
                                               policy_dir: Path) -> None:
    s = scratch_subtree
    e = apply(mount, s, policy_dir, ONE_CPU)
    # enabled top-down: the subtree and the tenant hand cpuset to their children
    assert "cpuset" in read(s, "", "cgroup.subtree_control").split()
    assert "cpuset" in read(s, "t", "cgroup.subtree_control").split()
    assert read(s, "t/pinned", "cpuset.cpus") == "1"
    assert read(s, "t/pinned", "cpuset.cpus.effective") == "1"
    assert read(s, "t/free", "cpuset.cpus") == ""
    assert read(s, "t/free", "cpuset.cpus.effective") == "0-1"
    # a task placed there runs on CPU 1 only (its affinity is the group's effective set)
    p = in_group(s, "t/pinned", ["sleep", "60"])
    try:
        assert wait(lambda: str(p.pid) in read(s, "t/pinned", "cgroup.procs").split(), 10)
        assert os.sched_getaffinity(p.pid) == {1}
    finally:
        p.kill()
        p.wait()
    # the plan is quiet: the kernel reads back the policy's text
    assert e.plan().writes == []
    # the key leaves the policy: reset to "" (the parent's), effective back to both CPUs
    apply(mount, s, policy_dir, WITHOUT, e)
    assert read(s, "t/pinned", "cpuset.cpus") == ""
    assert read(s, "t/pinned", "cpuset.cpus.effective") == "0-1"
    q = in_group(s, "t/pinned", ["sleep", "60"])
    try:
        assert wait(lambda: str(q.pid) in read(s, "t/pinned", "cgroup.procs").split(), 10)
        assert os.sched_getaffinity(q.pid) == {0, 1}
    finally:
        q.kill()
        q.wait()


@pytest.mark.usefixtures("two_cpus")
def test_drifted_cpus_are_restored(mount: CgroupFS, scratch_subtree: Path,
                                   policy_dir: Path) -> None:
    s = scratch_subtree
    e = apply(mount, s, policy_dir, ONE_CPU)
    (s / "t/pinned/cpuset.cpus").write_text("0-1")
    e.reconcile()
    assert read(s, "t/pinned", "cpuset.cpus") == "1"
    assert e.drift.get("cpuset.cpus") == 1


@pytest.mark.usefixtures("two_cpus")
def test_a_cpu_the_host_lacks_is_refused(tmp_path: Path) -> None:
    pol = tmp_path / "bad.toml"
    pol.write_text('[tenants.t.groups.g]\ncpuset.cpus = "7"\n')
    r = governor("policy", "check", str(pol))
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "tenants.t.groups.g.cpuset.cpus" in out
    assert '"7" names CPU 7, which this host does not have (online: 0-1)' in out
    assert "Traceback" not in out


@pytest.mark.usefixtures("two_cpus")
def test_daemon_exports_and_status_shows_the_effective_cpus(scratch_subtree: Path,
                                                            tmp_path: Path) -> None:
    with daemon_setup(scratch_subtree, tmp_path) as g:
        pol = Path(_config_value(g, "policy"))
        pol.write_text(ONE_CPU)
        port = _config_value(g, "listen").rsplit(":", 1)[1]
        g.start()
        s = scratch_subtree
        assert wait(lambda: (s / "t/pinned/cpuset.cpus").exists()
                    and read(s, "t/pinned", "cpuset.cpus") == "1", 30), g.tail()

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return r.read().decode()

        lines = ('governor_cpuset_cpus{group="pinned",node="vm",tenant="t"} 1',
                 'governor_cpuset_cpus{group="free",node="vm",tenant="t"} 2')
        # read on each group's slow tier (every 6th pass at 1 s, the groups on different
        # passes): within a few rounds
        assert wait(lambda: all(x in metrics() for x in lines), 30), metrics()[-2000:]
        r = governor("status", "--config", str(g.cfg), "--format", "json",
                     "--interval", "500ms")
        assert r.returncode == 0, r.stderr
        rows = {x["path"]: x for x in json.loads(r.stdout)["groups"]}
        assert rows["t/pinned"]["cpus"] == "1"
        assert rows["t/free"]["cpus"] == "0-1"
        assert rows["t/pinned"]["mems"] == "0"
        time.sleep(0.1)
        assert g.stop() == 0, g.tail()
        assert "Traceback" not in g.log.read_text()


def _config_value(g: Gov, key: str) -> str:
    """A value of the daemon's config file (policy path, exporter listen address)."""
    for line in g.cfg.read_text().splitlines():
        name, _, value = line.partition(" = ")
        if name.strip() == key:
            return value.strip().strip('"')
    raise AssertionError(f"{key} not in {g.cfg}")
