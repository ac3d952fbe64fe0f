"""``favordynmods`` on a real cgroup2 mount (runs inside the sandbox VM, Linux 6.1).

The remount changes the whole hierarchy of the VM boot, so the test puts the original
options back in a ``finally`` block and checks that it did: the kernel tests that run after
it in the same boot see the mount as the guest's init made it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.mount import (
    FAVORDYNMODS,
    cgroup2_mount_of,
    favor_dynmods,
    merge_options,
    remount_cgroup2,
)
from governor.placement.placer import Placer
from governor.policy.loader import parse_policy

pytestmark = pytest.mark.kernel


def test_favordynmods_keeps_every_option_and_is_undone(cgroup2_mount: Path,
                                                       scratch_subtree: Path) -> None:
    before = cgroup2_mount_of(cgroup2_mount)
    assert FAVORDYNMODS not in before.super_options, (
        f"the guest's cgroup2 mount already has {FAVORDYNMODS}: {before.super_options}")
    assert "nsdelegate" in before.super_options  # what a lost option would look like
    try:
        assert favor_dynmods(cgroup2_mount) is True
        on = cgroup2_mount_of(cgroup2_mount)
        assert FAVORDYNMODS in on.super_options
        missing = [o for o in before.super_options if o not in on.super_options]
        assert not missing, f"lost {missing}: before {before}, after {on}"
        assert on.mount_options == before.mount_options
        assert on.mount_id == before.mount_id
        # a second call sees it on and changes nothing
        assert favor_dynmods(cgroup2_mount / scratch_subtree.name) is False
        assert cgroup2_mount_of(cgroup2_mount) == on
        # moves still work with it (the write it speeds up)
        a, b = scratch_subtree / "a", scratch_subtree / "b"
        a.mkdir()
        b.mkdir()
        child = subprocess.Popen(["sleep", "60"])
        try:
            t0 = time.monotonic()
            for i in range(10):
                (a if i % 2 == 0 else b).joinpath("cgroup.procs").write_text(str(child.pid))
            per_move = (time.monotonic() - t0) / 10
            assert str(child.pid) in (b / "cgroup.procs").read_text().split()
            print(f"{per_move * 1000:.2f} ms per move with {FAVORDYNMODS}")
        finally:
            child.kill()
            child.wait()
        # a Placer asked to keep moves warm sees the option and does not (nothing to gain)
        (scratch_subtree / "t" / "g").mkdir(parents=True)
        pol = parse_policy([("p.toml", '[tenants.t.groups.g]\n[[tenants.t.groups.g.match]]\n'
                                       'comm = "sleep"\n')])
        with CgroupFS(cgroup2_mount) as fs:
            placer = Placer(fs, scratch_subtree.name, lambda: pol, exclude=(), keep_warm=1.0)
            assert placer.start() is True
            child = subprocess.Popen(["sleep", "60"])
            try:
                want = f"0::/{scratch_subtree.name}/t/g"
                deadline = time.monotonic() + 60
                while (Path(f"/proc/{child.pid}/cgroup").read_text().strip() != want
                       and time.monotonic() < deadline):
                    time.sleep(0.02)
                assert Path(f"/proc/{child.pid}/cgroup").read_text().strip() == want
                time.sleep(0.2)
            finally:
                placer.stop()
                child.kill()
                child.wait()
            assert placer.keep_warm == 0.0 and placer.counters.placements["moved"] >= 1
            assert placer.counters.keep_warm_writes == 0
    finally:
        restored = remount_cgroup2(cgroup2_mount,
                                   merge_options(before.super_options, drop=[FAVORDYNMODS]))
    assert restored.super_options == before.super_options, (before, restored)
    assert restored.mount_options == before.mount_options
    assert cgroup2_mount_of(cgroup2_mount) == before
