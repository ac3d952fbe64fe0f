from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from governor.security import AlreadyRunning, InstanceLock, UnsafeFile, check_strict_modes


def test_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    with InstanceLock(tmp_path, "governor.slice"):
        code = ("import sys; from governor.security import InstanceLock\n"
                f"InstanceLock({str(tmp_path)!r}, 'governor.slice').acquire()\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=False)
        assert r.returncode != 0
        assert f"pid {os.getpid()}" in r.stderr and "governor.slice.lock" in r.stderr
        # another subtree is another instance
        with InstanceLock(tmp_path, "other/sub"):
            pass
    # released: a new holder gets it
    with InstanceLock(tmp_path, "governor.slice") as lock:
        assert lock.path.read_text().strip() == str(os.getpid())


def test_lock_in_process_twice_refused(tmp_path: Path) -> None:
    a = InstanceLock(tmp_path, "s")
    a.acquire()
    try:
        with pytest.raises(AlreadyRunning, match="one instance per subtree"):
            InstanceLock(tmp_path, "s").acquire()
    finally:
        a.release()


@pytest.mark.skipif(os.geteuid() != 0, reason="strict modes apply when running as root")
def test_strict_modes_refuse_files_others_can_change(tmp_path: Path) -> None:
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    f = d / "10-acme.toml"
    f.write_text("[tenants.acme]\n")
    f.chmod(0o644)
    check_strict_modes(d, euid=0)               # fine: root-owned, not group/other-writable
    f.chmod(0o666)
    with pytest.raises(UnsafeFile) as ei:
        check_strict_modes(d, euid=0)
    assert "10-acme.toml" in str(ei.value) and "0666" in str(ei.value)
    assert "chmod go-w" in str(ei.value)
    f.chmod(0o644)
    d.chmod(0o777)
    with pytest.raises(UnsafeFile, match=r"policy\.d: writable by group or others"):
        check_strict_modes(d, euid=0)
    d.chmod(0o755)
    os.chown(f, 1000, 1000)
    with pytest.raises(UnsafeFile, match="owned by uid 1000"):
        check_strict_modes(f, euid=0)
    check_strict_modes(f, euid=1000)            # not root: not enforced


@pytest.mark.skipif(os.geteuid() != 0, reason="strict modes apply when running as root")
def test_rejected_reload_keeps_policy(tmp_path: Path) -> None:
    from governor.cgroupfs.files import CgroupFS
    from governor.enforce.keeper import Enforcer
    from tests.unit.cgroupfs_fake import create_child

    root = tmp_path / "cg"
    root.mkdir()
    create_child(root, "governor.slice")
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    f = d / "a.toml"
    f.write_text('[tenants.acme]\ncpu.weight = 300\n')
    e = Enforcer(CgroupFS(root, verify=False), "governor.slice", str(d),
                 sys_block=str(tmp_path / "none"))
    f.chmod(0o644)
    assert e.reload() and e.policy is not None
    digest = e.policy.digest
    f.write_text('[tenants.acme]\ncpu.weight = 400\n')
    f.chmod(0o646)
    assert not e.reload()
    assert e.policy.digest == digest and e.reloads["invalid"] == 1
