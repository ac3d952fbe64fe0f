"""Issue #15 item 15 (a signal during start-up) and the lock file of a failed start.

`governor run` is started for real, in a subprocess, held at the ``daemon.start``
failpoint (handlers installed, lock taken, set-up not begun), and signalled there.  The
cgroup root is a plain directory, so the start then fails on the host as everywhere:
"not on a cgroup2 filesystem", exit 2, which is what a start that survived the signal
reports.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from governor.security import AlreadyRunning, InstanceLock

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path) -> Path:
    (tmp_path / "cg").mkdir()
    (tmp_path / "state").mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[governor]
state_dir = "{tmp_path}/state"
cgroup_root = "{tmp_path}/cg"
cgroup_driver = "cgroupfs"
policy = "{REPO}/examples/policy.d"
log_format = "keyvalue"
[database]
url = "sqlite:///{tmp_path}/state/governor.db"
[exporter]
listen = "127.0.0.1:1"
""")
    return cfg


def _start(tmp_path: Path, hold: float) -> tuple[subprocess.Popen[bytes], list[bytes]]:
    """`governor run` held ``hold`` seconds at the daemon.start failpoint; returns once it
    is there (its stderr says so)."""
    env = {**os.environ, "GOVERNOR_FAILPOINTS": f"daemon.start=sleep({hold})"}
    proc = subprocess.Popen([sys.executable, "-m", "governor.cli", "run", "--config",
                             str(_config(tmp_path))], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    out: list[bytes] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + 60
    while b"failpoint daemon.start hit 1" not in b"".join(out):
        assert time.monotonic() < deadline and proc.poll() is None, b"".join(out)
        if sel.select(0.1):
            out.append(proc.stderr.read() or b"")
    sel.close()
    return proc, out


def _finish(proc: subprocess.Popen[bytes], out: list[bytes]) -> str:
    os.set_blocking(proc.stderr.fileno(), True)  # type: ignore[union-attr]
    rest, err = proc.communicate(timeout=120)
    return (b"".join(out) + err + rest).decode(errors="replace")


def test_sighup_during_startup_does_not_kill_the_daemon(tmp_path: Path) -> None:
    proc, out = _start(tmp_path, hold=3)
    proc.send_signal(signal.SIGHUP)
    text = _finish(proc, out)
    # it went on with its start-up (not killed: returncode -1), which then failed for its
    # own reason
    assert proc.returncode == 2, text
    assert "not on a cgroup2 filesystem" in text and "Traceback" not in text


def test_sigterm_during_startup_is_a_clean_exit(tmp_path: Path) -> None:
    proc, out = _start(tmp_path, hold=3)
    proc.send_signal(signal.SIGTERM)
    text = _finish(proc, out)
    # not killed mid-start (returncode -15), nor going on to start (2 here): a clean 0
    assert proc.returncode == 0, text
    assert "stop requested during start-up" in text and "Traceback" not in text
    assert not list((tmp_path / "state").glob("*.lock"))


def test_sigusr1_dumps_every_thread_and_changes_nothing(tmp_path: Path) -> None:
    """``kill -USR1``: the stack of every thread on stderr (the main thread's shows where it
    is held: the failpoint's sleep), and the daemon goes on as if nothing happened."""
    proc, out = _start(tmp_path, hold=3)
    proc.send_signal(signal.SIGUSR1)
    text = _finish(proc, out)
    assert proc.returncode == 2 and "not on a cgroup2 filesystem" in text, text
    dump = text[text.index("failpoint daemon.start hit 1"):]
    assert "Current thread" in dump and "(most recent call first)" in dump, text
    assert 'in failpoint' in dump, text


def test_lock_file_not_left_by_a_failed_start(tmp_path: Path) -> None:
    proc, out = _start(tmp_path, hold=0.01)
    text = _finish(proc, out)
    assert proc.returncode == 2 and "not on a cgroup2 filesystem" in text, text
    assert not list((tmp_path / "state").glob("*.lock"))


def test_lock_file_removed_on_release_and_retaken_after(tmp_path: Path) -> None:
    a = InstanceLock(tmp_path, "governor.slice")
    a.acquire()
    assert a.path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(AlreadyRunning):
        InstanceLock(tmp_path, "governor.slice").acquire()
    a.release(remove=True)
    assert not a.path.exists()
    b = InstanceLock(tmp_path, "governor.slice")
    b.acquire()
    assert b.path.exists()
    b.release()
    assert b.path.exists()  # without remove: left (empty) as before


def test_lock_on_an_unlinked_file_is_retaken_on_the_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A starter that opened the lock file just before its holder stopped (and removed it)
    must not end up holding a lock on the removed file: a third start would then take the
    path's new file and two would run."""
    import fcntl

    import governor.security

    holder = InstanceLock(tmp_path, "s")
    holder.acquire()
    real_flock = fcntl.flock
    calls = []

    def flock(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            holder.release(remove=True)  # the holder stops between our open and flock
        real_flock(fd, op)

    monkeypatch.setattr(governor.security.fcntl, "flock", flock)
    late = InstanceLock(tmp_path, "s")
    late.acquire()
    monkeypatch.setattr(governor.security.fcntl, "flock", real_flock)
    try:
        assert len(calls) == 2  # went back to the path once
        with pytest.raises(AlreadyRunning):
            InstanceLock(tmp_path, "s").acquire()
    finally:
        late.release(remove=True)
