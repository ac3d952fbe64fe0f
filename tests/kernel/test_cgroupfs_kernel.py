"""The cgroupfs core on a real cgroup v2 kernel (runs inside the sandbox VM)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.cgroupfs import parse
from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.managed import MANAGED_CONTROLLERS
from governor.cgroupfs.mount import find_cgroup2
from governor.cgroupfs.reader import StatReader
from governor.cgroupfs.tree import (
    GroupLister,
    ProcsWriter,
    create,
    move,
    populated,
    procs,
    remove,
)
from governor.errors import CgroupError, GroupBusy, GroupGone

pytestmark = pytest.mark.kernel

BURN = "import time\nt=time.time()\nwhile time.time()-t<60: pass\n"


@pytest.fixture
def fs(scratch_subtree: Path) -> Iterator[CgroupFS]:
    with CgroupFS(scratch_subtree) as f:  # verify=True: statfs must say cgroup2
        yield f


def spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cgroup_of(pid: int) -> str:
    got = parse.parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text()).unified
    assert got is not None
    return got


def test_mount_is_found_and_verified() -> None:
    assert find_cgroup2() == Path("/sys/fs/cgroup")


def test_create_enables_controllers_top_down(fs: CgroupFS, scratch_subtree: Path) -> None:
    made = create(fs, "acme/web", MANAGED_CONTROLLERS)
    assert made == ["acme", "acme/web"]
    assert set(parse.parse_list(fs.read("acme", "cgroup.subtree_control"))) >= set(
        MANAGED_CONTROLLERS)
    assert set(parse.parse_list(fs.read("acme/web", "cgroup.controllers"))) >= set(
        MANAGED_CONTROLLERS)
    # every interface file of every managed controller is there and parses
    assert parse.parse_limit(fs.read("acme/web", "memory.max")) == parse.MAX
    assert parse.parse_cpu_max(fs.read("acme/web", "cpu.max")).period == 100000
    assert parse.parse_io_weight(fs.read("acme/web", "io.weight")).default == 100
    assert parse.parse_flat_keyed(fs.read("acme/web", "memory.events"))["oom_kill"] == 0
    assert "usage_usec" in parse.parse_flat_keyed(fs.read("acme/web", "cpu.stat"))
    assert "anon" in parse.parse_flat_keyed(fs.read("acme/web", "memory.stat"))
    assert parse.parse_flat_keyed(fs.read("acme/web", "pids.events")) == {"max": 0}
    assert parse.parse_psi(fs.read("acme/web", "memory.pressure")).some.total >= 0
    assert parse.parse_io_stat(fs.read("acme/web", "io.stat")) is not None
    # idempotent: creating again makes nothing
    assert create(fs, "acme/web") == []


@pytest.mark.parametrize(("file", "value", "expect"), [
    ("memory.max", "67108864", "67108864"),
    ("memory.high", "50331648", "50331648"),
    ("memory.low", "8388608", "8388608"),
    ("memory.min", "4194304", "4194304"),
    ("memory.swap.max", "0", "0"),
    ("cpu.weight", "300", "300"),
    ("cpu.max", "20000 100000", "20000 100000"),
    ("pids.max", "10", "10"),
    ("io.weight", "default 200", "default 200"),
    ("memory.oom.group", "1", "1"),
])
def test_set_and_read_back(fs: CgroupFS, file: str, value: str, expect: str) -> None:
    create(fs, "t/g")
    fs.write("t/g", file, value)
    assert fs.read("t/g", file).strip() == expect


def test_io_max_on_scratch_disk(fs: CgroupFS) -> None:
    create(fs, "t/g")
    st = os.stat("/dev/vda")
    dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    fs.write("t/g", "io.max", f"{dev} wbps=2097152 riops=1000")
    got = parse.parse_nested_keyed(fs.read("t/g", "io.max"))
    assert got[dev] == {"rbps": "max", "wbps": 2097152, "riops": 1000, "wiops": "max"}


@pytest.mark.parametrize(("file", "value", "err"), [
    ("memory.max", "banana", errno.EINVAL), ("cpu.weight", "0", errno.ERANGE),
    ("cpu.weight", "10001", errno.ERANGE), ("pids.max", "-5", errno.EINVAL),
    ("cpu.max", "500 100000", errno.EINVAL),
])
def test_bad_value_is_explained(fs: CgroupFS, file: str, value: str, err: int) -> None:
    create(fs, "t/g")
    with pytest.raises(CgroupError) as ei:
        fs.write("t/g", file, value)
    e = ei.value
    assert e.errno == err and e.value == value and e.file == file
    assert "out of range" in str(e) and e.path.endswith("/t/g")
    assert isinstance(e.__cause__, OSError)


def test_ebusy_no_internal_process_rule(fs: CgroupFS) -> None:
    create(fs, "t/g")  # t enables controllers for its children: it is an inner node
    p = spawn(["sleep", "30"])
    try:
        with pytest.raises(CgroupError) as ei:
            move(fs, "t", p.pid)
        assert ei.value.errno == errno.EBUSY and "no-internal-process" in str(ei.value)
        move(fs, "t/g", p.pid)
        # a group with processes cannot enable controllers for children
        with pytest.raises(CgroupError) as ei2:
            fs.write("t/g", "cgroup.subtree_control", "+memory")
        assert ei2.value.errno == errno.EBUSY and "no-internal-process" in str(ei2.value)
    finally:
        p.kill()
        p.wait()


def test_move_in_and_out_and_remove(fs: CgroupFS, scratch_subtree: Path) -> None:
    create(fs, "t/a")
    create(fs, "t/b")
    p = spawn(["sleep", "30"])
    try:
        move(fs, "t/a", p.pid)
        base = "/" + scratch_subtree.name
        assert cgroup_of(p.pid) == f"{base}/t/a" and procs(fs, "t/a") == [p.pid]
        assert populated(fs, "t/a") and populated(fs, "t")
        move(fs, "t/b", p.pid)
        assert cgroup_of(p.pid) == f"{base}/t/b" and procs(fs, "t/a") == []
        with pytest.raises(GroupBusy, match="still has processes"):
            remove(fs, "t")
        remove(fs, "t/a")
        assert not (scratch_subtree / "t" / "a").exists()
    finally:
        p.kill()
        p.wait()
    # the last task has exited: remove (with EBUSY retry) takes the whole tenant
    remove(fs, "t")
    assert not (scratch_subtree / "t").exists()


def test_move_of_exited_process_is_esrch(fs: CgroupFS) -> None:
    create(fs, "t/g")
    p = spawn(["true"])
    p.wait()
    with pytest.raises(CgroupError) as ei:
        move(fs, "t/g", p.pid)
    assert ei.value.errno == errno.ESRCH and "exited" in str(ei.value)


def test_procs_writer_keeps_fds_and_follows_a_recreated_group(fs: CgroupFS,
                                                               scratch_subtree: Path) -> None:
    """The placer's writer keeps one cgroup.procs fd per group; the fd of a removed group
    answers ENODEV and the writer opens the re-created group of the same name."""
    create(fs, "t/a")
    create(fs, "t/b")
    w = ProcsWriter(fs)
    base = "/" + scratch_subtree.name
    p = spawn(["sleep", "60"])
    q = spawn(["sleep", "60"])
    try:
        w.move("t/a", p.pid)
        w.move("t/a", q.pid)
        assert sorted(procs(fs, "t/a")) == sorted([p.pid, q.pid]) and len(w._fds) == 1
        first_id = fs.inode("t/a")
        w.move("t/b", p.pid)
        w.move("t/b", q.pid)
        remove(fs, "t/a")  # the writer still holds the old group's fd
        create(fs, "t/a")
        assert fs.inode("t/a") != first_id
        w.move("t/a", p.pid)
        assert cgroup_of(p.pid) == f"{base}/t/a" and procs(fs, "t/a") == [p.pid]
        with pytest.raises(CgroupError) as ei:  # an exited process: ESRCH, as move()
            dead = spawn(["true"])
            dead.wait()
            w.move("t/a", dead.pid)
        assert ei.value.errno == errno.ESRCH
    finally:
        for x in (p, q):
            x.kill()
            x.wait()
        w.close()
    with pytest.raises(GroupGone):
        w.move("t/none", os.getpid())


def test_group_lister_sees_mkdir_and_rmdir_on_cgroup2(fs: CgroupFS,
                                                      scratch_subtree: Path) -> None:
    """cgroup2 sends inotify IN_CREATE / IN_DELETE for mkdir / rmdir of groups, and no
    directory event for writes to interface files or processes moving: the sampler's
    listing is reused exactly while the tree is unchanged."""
    create(fs, "t/a", MANAGED_CONTROLLERS)
    root = CgroupFS(scratch_subtree.parent)  # as the sampler: subtree below the mount
    lister = GroupLister(root, scratch_subtree.name)
    try:
        assert lister.list() == ["t", "t/a"] and lister.relists == 1
        fs.write("t/a", "memory.max", str(64 << 20))
        p = spawn(["sleep", "30"])
        move(fs, "t/a", p.pid)
        p.kill()
        p.wait()
        assert lister.list() == ["t", "t/a"] and lister.relists == 1
        create(fs, "t/b")
        assert lister.list() == ["t", "t/a", "t/b"] and lister.relists == 2
        create(fs, "u/c")
        assert lister.list() == ["t", "t/a", "t/b", "u", "u/c"]
        remove(fs, "t/a")
        assert lister.list() == ["t", "t/b", "u", "u/c"]
        n = lister.relists
        assert lister.list() == ["t", "t/b", "u", "u/c"] and lister.relists == n
    finally:
        lister.close()
        root.close()


def test_pread_reader_sees_counters_change(fs: CgroupFS) -> None:
    create(fs, "t/g")
    p = spawn([sys.executable, "-c", BURN])
    try:
        move(fs, "t/g", p.pid)
        with StatReader(fs) as r:
            s1 = r.read("t/g", slow=True)
            assert s1.cpu is not None and s1.pids_current == 1
            # read, not missing (it may be 0: memory charged before the move stays with the
            # old group in cgroup v2, and a busy loop allocates nothing new)
            assert s1.memory_current is not None and s1.memory_current >= 0
            assert s1.memory_stat is not None and "anon" in s1.memory_stat
            assert set(s1.psi) == {"cpu", "memory", "io"}
            assert s1.cgroup_id == os.stat(fs.path("t/g")).st_ino
            time.sleep(0.5)
            s2 = r.read("t/g")
            assert s2.cpu is not None
            assert s2.cpu["usage_usec"] > s1.cpu["usage_usec"]
    finally:
        p.kill()
        p.wait()


def test_reader_enodev_after_removal(fs: CgroupFS) -> None:
    create(fs, "t/g")
    with StatReader(fs) as r:
        r.read("t/g")
        assert r.open_groups == 1
        remove(fs, "t/g")
        with pytest.raises(GroupGone) as ei:
            r.read("t/g")
        assert ei.value.errno == errno.ENODEV
        assert r.open_groups == 0
        # re-created under the same name: a new incarnation with a new cgroup id
        old = ei.value
        create(fs, "t/g")
        s = r.read("t/g")
        assert s.cgroup_id == os.stat(fs.path("t/g")).st_ino
        assert old.path.endswith("t/g")


def test_missing_controller_reads_none(fs: CgroupFS, scratch_subtree: Path) -> None:
    create(fs, "t/g", ["memory"])  # only memory enabled for t's children
    fs.write("t", "cgroup.subtree_control", "-pids -io -cpu")
    with StatReader(fs) as r:
        s = r.read("t/g")
        assert s.memory_current is not None
        assert s.pids_current is None and s.io is None  # missing, not zero
        assert s.cpu is not None  # cpu.stat always exists (core accounting)
    with pytest.raises(CgroupError) as ei:
        fs.write("t/g", "pids.max", "5")
    assert ei.value.errno == errno.ENOENT and "controller is not enabled" in str(ei.value)


def test_doctor_passes_in_sandbox(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  scratch_subtree: Path) -> None:
    from governor.cli import main

    policy = Path(__file__).resolve().parents[2] / "examples" / "policy.d"
    rc = main([
        "doctor", "--policy", str(policy), "--database", f"sqlite:///{tmp_path}/g.db",
        "--subtree", f"{scratch_subtree.name}/governor.slice"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "[OK  ] cgroup2 mount: /sys/fs/cgroup" in out and "all checks passed" in out
