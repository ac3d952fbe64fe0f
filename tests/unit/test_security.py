from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from governor.security import (
    AlreadyRunning,
    InstanceLock,
    StateDir,
    UnsafeFile,
    UnsafeStateDir,
    check_strict_modes,
)


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


# -- issue #15 item 11: state_dir symlinks are not followed --------------------------------



def _private(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d


def test_state_file_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    state = _private(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state / "governor.slice.lock").symlink_to(victim)
    with pytest.raises(UnsafeStateDir, match=r"governor.slice.lock: a symlink.*remove"):
        InstanceLock(state, "governor.slice").acquire()
    assert victim.read_text() == "precious\n"
    from governor.store.spool import Spool
    (state / "s.spool").symlink_to(victim)
    spool = Spool(state / "s.spool", max_samples=10)
    with pytest.raises(UnsafeStateDir, match=r"s\.spool: a symlink"):
        bool(spool)
    assert victim.read_text() == "precious\n"


def test_state_file_hard_link_is_refused(tmp_path: Path) -> None:
    state = _private(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.link(victim, state / "governor.slice.lock")
    with pytest.raises(UnsafeStateDir, match="2 hard links"):
        InstanceLock(state, "governor.slice").acquire()
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("where", ["state", "parent"])
def test_writable_state_dir_or_parent_is_refused(tmp_path: Path, where: str) -> None:
    parent = tmp_path / "p"
    parent.mkdir(mode=0o755)
    state = parent / "state"
    state.mkdir(mode=0o700)
    (state if where == "state" else parent).chmod(0o777)
    bad = state if where == "state" else parent
    with pytest.raises(UnsafeStateDir, match=rf"{bad}: writable by group or others "
                       rf"\(mode 0777\).*chmod go-w {bad}"):
        InstanceLock(state, "s").acquire()
    assert not (state / "s.lock").exists()


def test_sticky_root_parent_is_fine_but_not_as_the_state_dir(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a sticky directory owned by root needs root to make")
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    with InstanceLock(sticky / "state", "s") as lock:
        assert lock.path.exists()
    assert (sticky / "state").stat().st_mode & 0o777 == 0o700
    with pytest.raises(UnsafeStateDir, match="writable by group or others"):
        StateDir(sticky)


def test_symlinked_component_followed_only_when_trusted(tmp_path: Path) -> None:
    real = _private(tmp_path)
    (tmp_path / "link").symlink_to(real)
    d = StateDir(tmp_path / "link")
    assert d.path == str(real)
    d.close()
    if os.geteuid() == 0:
        os.lchown(tmp_path / "link", 65534, 65534)
        with pytest.raises(UnsafeStateDir, match="a symlink owned by uid 65534"):
            StateDir(tmp_path / "link")


def test_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    state = _private(tmp_path)
    with pytest.raises(UnsafeStateDir, match=r"state: owned by uid \d+, not root or uid \d+; "):
        StateDir(state, euid=4242) if os.geteuid() != 0 else _as_owner(state)


def _as_owner(state: Path) -> StateDir:
    os.chown(state, 4242, 4242)
    return StateDir(state, euid=0)


def test_missing_state_dir_is_created_private(tmp_path: Path) -> None:
    with InstanceLock(tmp_path / "a" / "b", "s") as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700


def test_state_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "wall").write_text("a file\n")
    with pytest.raises(UnsafeStateDir, match=r"wall/state: not a directory|wall: not a dir"):
        InstanceLock(tmp_path / "wall" / "state", "s").acquire()


def test_state_dir_in_a_directory_we_cannot_write_is_a_clear_error() -> None:
    """EACCES needs a user the modes bind (root creates directories whatever they say):
    the check runs as nobody in a forked child, in a directory of nobody's, mode 0500."""
    nobody = 65534
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        ro = Path(top) / "ro"
        ro.mkdir(mode=0o500)
        os.chmod(top, 0o755)
        os.chown(ro, nobody, nobody)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            rc = 70
            try:
                os.close(r)
                os.setgid(nobody)
                os.setuid(nobody)
                try:
                    InstanceLock(ro / "state", "s").acquire()
                    msg = "acquired"
                except UnsafeStateDir as e:
                    msg = str(e)
                os.write(w, msg.encode())
                rc = 0
            finally:
                os._exit(rc)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            said = f.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert "cannot be opened or created: [EACCES]" in said, said
    assert str(ro / "state") in said
