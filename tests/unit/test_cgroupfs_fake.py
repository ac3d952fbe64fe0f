"""The choke point, the reader and the tree operations on a fake cgroupfs (tmp_path).

Only what a plain directory can show is tested here: path confinement, error shapes,
missing-vs-zero, fd caching.  What only the kernel can show is in tests/kernel/.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS, explain
from governor.cgroupfs.reader import StatReader, read_stats_reopen
from governor.cgroupfs.tree import ancestors, create, enable_controllers
from governor.errors import CgroupError, GroupGone, InvalidName, NotCgroup2Error
from tests.unit.cgroupfs_fake import (
    LEAF_FILES,
    READ_PATHS,
    create_child,
    create_file_with_content,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "governor.slice"
    r.mkdir()
    for k, v in LEAF_FILES.items():
        create_file_with_content(r, k, v)
    return r


@pytest.fixture
def fs(root: Path) -> CgroupFS:
    return CgroupFS(root, verify=False)


def test_verify_refuses_non_cgroup2(tmp_path: Path) -> None:
    with pytest.raises(NotCgroup2Error, match="CGROUP2_SUPER_MAGIC"):
        CgroupFS(tmp_path)


def test_read_write_roundtrip(fs: CgroupFS, root: Path) -> None:
    create_child(root, "acme")
    fs.write("acme", "memory.max", "536870912")
    assert fs.read("acme", "memory.max") == "536870912"


def test_names_checked_before_any_path(fs: CgroupFS, root: Path) -> None:
    for bad in ("..", "../x", "acme/../../etc", "a\0b"):
        with pytest.raises(InvalidName):
            fs.write(bad, "memory.max", "1")
    with pytest.raises(ValueError, match="interface file"):
        fs.read("", "../passwd")


def test_symlink_escape_refused(fs: CgroupFS, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "memory.max").write_text("untouched")
    os.symlink(outside, root / "evil")
    with pytest.raises(CgroupError) as ei:
        fs.write("evil", "memory.max", "1")
    assert ei.value.errno in (errno.ELOOP, errno.EXDEV)
    assert (outside / "memory.max").read_text() == "untouched"
    # a symlinked interface file inside a real group is refused too
    g = create_child(root, "g")
    (g / "memory.high").unlink()
    os.symlink(outside / "memory.max", g / "memory.high")
    with pytest.raises(CgroupError):
        fs.write("g", "memory.high", "1")
    assert (outside / "memory.max").read_text() == "untouched"


def test_error_carries_path_file_value_errno(fs: CgroupFS, root: Path) -> None:
    create_child(root, "acme", files={})
    with pytest.raises(CgroupError) as ei:
        fs.write("acme", "memory.max", "123")
    e = ei.value
    assert e.path == str(root / "acme") and e.file == "memory.max" and e.value == "123"
    assert e.errno == errno.ENOENT and isinstance(e.__cause__, OSError)
    assert "controller is not enabled" in str(e) and "'123'" in str(e)


def test_missing_group_is_gone(fs: CgroupFS) -> None:
    with pytest.raises(GroupGone, match="does not exist"):
        fs.read("nope", "cpu.stat")


@pytest.mark.parametrize(("op", "file", "err", "words"), [
    ("write", "cgroup.subtree_control", errno.EBUSY, "no-internal-process"),
    ("write", "cgroup.procs", errno.EBUSY, "leaf group"),
    ("write", "cgroup.procs", errno.ESRCH, "exited"),
    ("write", "memory.max", errno.EINVAL, "out of range"),
    ("write", "cpu.max", errno.EOPNOTSUPP, "not supported"),
    ("write", "memory.max", errno.ENOENT, "controller is not enabled"),
    ("write", "cgroup.subtree_control", errno.ENOENT, "cgroup.controllers"),
    ("rmdir", None, errno.EBUSY, "processes or child"),
    ("write", "memory.max", errno.EACCES, "delegate"),
])
def test_explain(op: str, file: str | None, err: int, words: str) -> None:
    hint = explain(op, file, err)
    assert hint is not None and words in hint


def test_mkdir_rmdir_children_inode(fs: CgroupFS, root: Path) -> None:
    fs.mkdir("t1")
    fs.mkdir("t1/g1")
    assert fs.children("") == ["t1"] and fs.children("t1") == ["g1"]
    assert fs.inode("t1/g1") == os.stat(root / "t1" / "g1").st_ino
    fs.rmdir("t1/g1")
    assert fs.children("t1") == []
    with pytest.raises(ValueError, match="root"):
        fs.rmdir("")


def test_ancestors() -> None:
    assert ancestors("a/b/c") == ["", "a", "a/b"]
    assert ancestors("a") == [""]


def test_enable_controllers_names_missing(fs: CgroupFS, root: Path) -> None:
    (root / "cgroup.controllers").write_text("cpu memory\n")
    with pytest.raises(CgroupError, match="io, pids are not in"):
        enable_controllers(fs, "", ["cpu", "io", "memory", "pids"])
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    assert enable_controllers(fs, "", ["memory", "cpu"]) == ["cpu", "memory"]
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory"


def test_failed_create_removes_what_it_made(fs: CgroupFS, root: Path) -> None:
    # the tenant directory is made, but it offers no controllers: the create must fail
    # and leave no half-made tenant behind
    with pytest.raises(CgroupError):
        create(fs, "acme/web", ["cpu"])
    assert not (root / "acme").exists()


def test_reader_pread_sees_changes_and_missing_is_none(fs: CgroupFS, root: Path) -> None:
    g = create_child(root, "g")
    (g / "memory.peak").unlink()          # e.g. a kernel before 5.19
    (g / "io.stat").unlink()              # io controller not enabled here
    with StatReader(fs) as r:
        s1 = r.read("g", slow=True)
        assert s1.cpu is not None and s1.cpu["usage_usec"] == 52083
        assert s1.memory_peak is None and s1.io is None       # missing, not zero
        assert s1.memory_stat is not None and s1.memory_stat["anon"] == 126976
        assert s1.psi["io"].some.total == 24
        assert s1.cgroup_id == os.stat(g).st_ino
        # rewrite in place (same inode) as the kernel would: the cached fd sees it
        with open(g / "cpu.stat", "r+") as f:
            f.write(LEAF_FILES["cpu.stat"].replace("52083", "99999"))
        s2 = r.read("g")
        assert s2.cpu is not None and s2.cpu["usage_usec"] == 99999
        assert s2.memory_stat is None  # slow tier not asked
        assert r.open_groups == 1


def test_reader_group_gone(fs: CgroupFS, root: Path) -> None:
    # (ENODEV on an fd kept open across the removal is a kernel behaviour: tests/kernel/)
    create_child(root, "g")
    assert read_stats_reopen(fs, "g").pids_current == 1
    shutil.rmtree(root / "g")
    with StatReader(fs) as r:
        with pytest.raises(GroupGone):
            r.read("g")
        assert r.open_groups == 0


def test_reader_fd_budget_falls_back_to_reopen(fs: CgroupFS, root: Path) -> None:
    for i in range(3):
        create_child(root, f"g{i}")
    with StatReader(fs, max_fds=5) as r:
        full = [r.read(f"g{i}", slow=True) for i in range(3)]
        assert r.open_fds <= 5 + 3  # the budget, plus one directory fd per group
        again = [r.read(f"g{i}", slow=True) for i in range(3)]
        assert full == again and full[2].cpu is not None
        assert full[2].memory_stat is not None and full[2].psi["io"].some.total == 24
        open_now = len(os.listdir("/proc/self/fd"))
        r.read("g2")
        assert len(os.listdir("/proc/self/fd")) == open_now  # nothing leaked
    assert r.open_fds == 0


@pytest.mark.parametrize("accelerated", READ_PATHS)
def test_reader_fast_path_errors_and_changes(fs: CgroupFS, root: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             accelerated: bool) -> None:
    import errno

    g = create_child(root, "g")
    (g / "memory.peak").unlink()
    with StatReader(fs, accelerated=accelerated) as r:
        first = r.read("g")
        assert r.read("g") == first  # the second read takes the fast path
        with open(g / "cpu.pressure", "r+") as f:  # changed text: parsed again
            f.write(LEAF_FILES["cpu.pressure"].replace("total=1523", "total=1777"))
        assert r.read("g").psi["cpu"].some.total == 1777
        (g / "memory.peak").write_text("4096\n")
        assert r.read("g").memory_peak is None  # absent stays absent...
        r.refresh()
        assert r.read("g").memory_peak == 4096  # ...until refresh()
        real = os.pread
        io_fd = r._groups["g"].fds["io.stat"]

        def gone(fd: int, n: int, off: int) -> bytes:
            if fd == io_fd:
                raise OSError(errno.ENODEV, "No such device")
            return real(fd, n, off)

        monkeypatch.setattr(os, "pread", gone)
        if accelerated:
            # the C path's own pread fails too (EISDIR on a directory put in io.stat's
            # place): the per-file Python path reads again and reports the file
            d = os.open(g, os.O_RDONLY | os.O_DIRECTORY)
            os.dup2(d, io_fd)
            os.close(d)
        with pytest.raises(GroupGone) as e:
            r.read("g")
        assert e.value.file == "io.stat" and r.open_groups == 0 and r.open_fds == 0


def test_group_lister_keeps_the_listing_until_a_directory_changes(tmp_path: Path) -> None:
    """The sampler's listing: reused while inotify reports nothing, listed again after a
    group or tenant is made, removed or renamed (a tmp dir gets the same events as
    cgroup2's mkdir/rmdir; the kernel test shows cgroup2 itself)."""
    from governor.cgroupfs.tree import GroupLister, managed_groups

    sub = tmp_path / "gov"
    (sub / "a" / "web").mkdir(parents=True)
    (sub / "a" / "cgroup.procs").write_text("")  # files are not groups
    fs = CgroupFS(tmp_path, verify=False)
    lister = GroupLister(fs, "gov")
    assert lister.list() == ["a", "a/web"] and lister.relists == 1
    assert lister.list() == ["a", "a/web"] and lister.relists == 1  # nothing changed
    (sub / "a" / "db").mkdir()
    assert lister.list() == ["a", "a/db", "a/web"] and lister.relists == 2
    (sub / "b").mkdir()
    assert lister.list() == ["a", "a/db", "a/web", "b"]
    (sub / "b" / "x").mkdir()  # in a tenant that appeared after the last listing
    assert lister.list() == ["a", "a/db", "a/web", "b", "b/x"]
    (sub / "a" / "web").rename(sub / "a" / "www")
    (sub / "a" / "db").rmdir()
    assert lister.list() == ["a", "a/www", "b", "b/x"]
    n = lister.relists
    (sub / "a" / "cgroup.procs").write_text("1")  # a file written: not a change of groups
    assert lister.list() == managed_groups(fs, "gov") and lister.relists == n
    (sub / "b" / "x").rmdir()
    (sub / "b").rmdir()
    assert lister.list() == ["a", "a/www"]
    lister.close()
    assert lister.list() == ["a", "a/www"]  # without inotify: lists every time
    fs.close()


def test_group_lister_without_subtree_lists_empty_then_finds_it(tmp_path: Path) -> None:
    from governor.cgroupfs.tree import GroupLister

    fs = CgroupFS(tmp_path, verify=False)
    lister = GroupLister(fs, "gov")
    assert lister.list() == []
    (tmp_path / "gov" / "t" / "g").mkdir(parents=True)
    assert lister.list() == ["t", "t/g"]
    lister.close()
    fs.close()
