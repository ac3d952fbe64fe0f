"""The sandbox guest itself, checked from inside it (these run only in the VM)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from governor.sandbox.detect import CGROUP2_SUPER_MAGIC, in_sandbox, statfs_type

pytestmark = pytest.mark.kernel


def test_marked_as_sandbox() -> None:
    assert os.environ["GOVERNOR_SANDBOX"] == "1"
    assert in_sandbox()


def test_pure_cgroup2_with_the_controllers_governor_needs(cgroup2_mount: Path) -> None:
    assert statfs_type(cgroup2_mount) == CGROUP2_SUPER_MAGIC
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    cg = [m for m in mounts if m[1] == "/sys/fs/cgroup"]
    assert len(cg) == 1, cg
    assert cg[0][2] == "cgroup2"
    opts = cg[0][3].split(",")
    assert "nsdelegate" in opts
    assert "memory_recursiveprot" in opts
    # no cgroup v1 hierarchy anywhere: the guest is pure v2
    assert not [m for m in mounts if m[2] == "cgroup"]
    controllers = (cgroup2_mount / "cgroup.controllers").read_text().split()
    for c in ("cpu", "io", "memory", "pids"):
        assert c in controllers


def test_scratch_subtree_gets_the_controllers(scratch_subtree: Path) -> None:
    assert scratch_subtree.parent == Path("/sys/fs/cgroup")
    assert scratch_subtree.name.startswith("gtest-")
    enabled = set((scratch_subtree / "cgroup.controllers").read_text().split())
    assert {"cpu", "io", "memory", "pids"} <= enabled
    assert (scratch_subtree / "memory.max").read_text().strip() == "max"


def test_scratch_subtree_teardown_kills_and_removes(cgroup2_mount: Path) -> None:
    # drive the fixture's teardown by hand: a child group with a live process in it
    from tests.conftest import SCRATCH_CONTROLLERS, _enable_controllers, remove_subtree

    _enable_controllers(cgroup2_mount, SCRATCH_CONTROLLERS)
    top = cgroup2_mount / "gtest-teardown"
    child = top / "a" / "b"
    (top / "a").mkdir(parents=True)
    (top / "cgroup.subtree_control").write_text("+pids")
    (top / "a" / "cgroup.subtree_control").write_text("+pids")
    child.mkdir()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f'echo $$ > {child}/cgroup.procs && exec sleep 600'],
    )
    try:
        for _ in range(200):
            if (child / "cgroup.procs").read_text().split():
                break
            time.sleep(0.05)
        assert (child / "cgroup.procs").read_text().split() == [str(proc.pid)]
        remove_subtree(top)
        assert proc.wait(timeout=10) == -9
        assert not top.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_scratch_disk_is_a_block_device() -> None:
    st = os.stat("/dev/vda")
    assert stat.S_ISBLK(st.st_mode)
    size_sectors = int(Path("/sys/block/vda/size").read_text())
    assert size_sectors * 512 >= 64 * 1024 * 1024
    with open("/dev/vda", "r+b") as dev:
        dev.write(b"governor")
        dev.seek(0)
        assert dev.read(8) == b"governor"


def test_pid_namespace_gives_pid_1() -> None:
    r = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", "echo $$; ps -e | wc -l"],
        capture_output=True, text=True, check=True,
    )
    pid, nprocs = r.stdout.split()
    assert pid == "1"
    assert int(nprocs) <= 4  # header, sh, ps, wc: nothing of the guest outside


def test_tmp_is_a_writable_tmpfs() -> None:
    mounts = {m.split()[1]: m.split()[2] for m in Path("/proc/mounts").read_text().splitlines()}
    assert mounts["/tmp"] == "tmpfs"
    p = Path("/tmp") / f"sandbox-probe-{os.getpid()}"
    p.write_text("x")
    assert p.read_text() == "x"
    p.unlink()


def test_dev_kmsg_is_readable() -> None:
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        record = os.read(fd, 8192).decode(errors="replace")
    finally:
        os.close(fd)
    # "<prio>,<seq>,<usec>,<flags>;message": the first record is the kernel banner
    assert ";Linux version" in record


def test_root_is_read_only_underneath_and_writable_on_top() -> None:
    mounts = {m.split()[1]: m.split()[2] for m in Path("/proc/mounts").read_text().splitlines()}
    assert mounts["/"] == "overlay"
    # the project tree comes from the host: this very file is there
    assert Path(__file__).is_file()
    assert Path(sys.executable).exists()
