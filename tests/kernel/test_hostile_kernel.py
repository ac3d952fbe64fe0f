"""Issue #15 items 1 and 3 on a real cgroup v2 kernel: hostile directory names are sampled
under their keys, and a plan removes only the directories governor made.

Each test gets a fresh scratch subtree of the VM's cgroup2 root as the governor's subtree."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.names import escape_name
from governor.cgroupfs.tree import MANAGED_XATTR
from governor.enforce.keeper import Enforcer
from governor.metering.sampler import Sampler
from tests.unit.cgroupfs_fake import READ_PATHS

pytestmark = pytest.mark.kernel

DOCKER = "docker-" + "0123456789abcdef" * 4 + ".scope"

V1 = """
[tenants.acme]
memory.max = "256M"
[tenants.acme.groups.web]
memory.max = "128M"
[tenants.acme.groups.old]
memory.max = "64M"
[tenants.globex]
memory.max = "128M"
"""
#: acme/old and globex dropped
V2 = """
[tenants.acme]
memory.max = "256M"
[tenants.acme.groups.web]
memory.max = "128M"
"""


@pytest.fixture
def mount(cgroup2_mount: Path) -> Iterator[CgroupFS]:
    with CgroupFS(cgroup2_mount) as fs:
        yield fs


def policy(d: Path, text: str) -> str:
    d.mkdir(exist_ok=True)
    (d / "10-main.toml").write_text(text)
    return str(d)


def test_plan_removes_only_what_governor_made(mount: CgroupFS, scratch_subtree: Path,
                                              tmp_path: Path) -> None:
    top = scratch_subtree
    e = Enforcer(mount, top.name, policy(tmp_path / "p", V1))
    assert e.reload(trigger="start") and e.last_failed == 0
    for rel in ("acme", "acme/web", "acme/old", "globex"):  # marked at mkdir, on cgroup2
        assert os.getxattr(top / rel, MANAGED_XATTR) == top.name.encode(), rel
    # what others make: a runtime's scope below a group, a directory made by hand, and a
    # second instance's subtree nested in this one (marked by that instance)
    (top / "acme/web" / DOCKER).mkdir()
    (top / "acme/by-hand").mkdir()
    second = Enforcer(mount, f"{top.name}/second.slice",
                      policy(tmp_path / "p2", "[tenants.t1]\n[tenants.t1.groups.g1]\n"))
    assert second.reload(trigger="start") and second.last_failed == 0
    assert (top / "second.slice/t1/g1").is_dir()

    policy(tmp_path / "p", V2)
    plan_notes_before = [a.reason for a in e.plan().actions if a.kind == "note"]
    assert e.reload(trigger="reload") and e.last_failed == 0
    assert not (top / "acme/old").exists() and not (top / "globex").exists()
    for kept in (f"acme/web/{DOCKER}", "acme/by-hand", "second.slice/t1/g1", "acme/web"):
        assert (top / kept).is_dir(), kept
    assert any("acme/by-hand not in the policy, left as it is" in r and
               "not created by governor" in r for r in plan_notes_before)
    assert any("second.slice not in the policy, left as it is" in r
               for r in plan_notes_before)
    e.reconcile()  # and again: nothing of theirs goes, nothing fails
    assert e.last_failed == 0 and (top / "second.slice/t1/g1").is_dir()


@pytest.mark.parametrize("accelerated", READ_PATHS)
def test_sampling_pass_over_hostile_names(mount: CgroupFS, scratch_subtree: Path,
                                          tmp_path: Path, accelerated: bool) -> None:
    top = scratch_subtree
    e = Enforcer(mount, top.name, policy(tmp_path / "p", V2))
    assert e.reload(trigger="start") and e.last_failed == 0
    raw = {  # made with bytes names, as a runtime or a tenant with delegation could
        b"acme/web 2": "acme/web\\x202",
        b"acme/\xff\xfe": "acme/\\xff\\xfe",
        DOCKER.encode(): escape_name(DOCKER),
    }
    for name in raw:
        os.mkdir(os.fsencode(top) + b"/" + name)
    s = Sampler(mount, top.name, "vm", accelerated=accelerated)
    # the first pass (every group's slow tier), then a round of 6: each group's slow tier
    # once (Python), the other passes the fast tier (the C loop when built)
    for _ in range(7):
        p = s.sample()
        assert p.errors == [] and p.gone == []
        got = {x.path: x for x in p.samples}
        assert set(got) == {"acme", "acme/web", *raw.values()}
        assert got["acme/web"].memory_current is not None
        for name, key in raw.items():
            assert got[key].cgroup_id == os.stat(os.fsencode(top) + b"/" + name).st_ino
            assert got[key].pids_current == 0
    s.close()
    e.reconcile()  # the plan over them goes on, and leaves them
    assert e.last_failed == 0
    assert all(os.path.isdir(os.fsencode(top) + b"/" + n) for n in raw)
