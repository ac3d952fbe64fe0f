"""The C accelerator governor.cgroupfs._keepwarm (keep_warm's writer thread) and its
pure-Python twin, MigrationWarmer.touch (the listener writes itself).

Skipped, saying so, when the extension is not built.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from governor.cgroupfs import tree

pytestmark = pytest.mark.skipif(
    tree._warm is None, reason="governor.cgroupfs._keepwarm not in use (not built: "
    "pip install -e .; or GOVERNOR_PURE_PYTHON=1)")


def test_warm_thread_writes_its_tid_until_the_deadline(tmp_path: Path) -> None:
    """The background writer of MigrationWarmer: a thread of this process (its own tid,
    listed in /proc/self/task) writes each interval after moved() and stops at the
    deadline; a refused write is reported once, with errno and path, and stops the writes."""
    import threading
    import time

    from governor.cgroupfs.files import CgroupFS
    from governor.cgroupfs.tree import MigrationWarmer

    cg = tmp_path / "cg"
    (cg / "daemon").mkdir(parents=True)
    threads = cg / "daemon" / "cgroup.threads"
    threads.write_text("")
    me = tmp_path / "self-cgroup"
    me.write_text("0::/daemon\n")
    w = MigrationWarmer(CgroupFS(cg, verify=False), proc_file=str(me))
    assert w.start_background(0.002) is True and w.background and w.rel == "daemon"
    try:
        time.sleep(0.05)
        assert w.stats(0.002) == (0, 0, None) and threads.read_text() == ""  # no move yet
        w.moved(time.monotonic() + 0.1)
        time.sleep(0.3)
        writes, refused, err = w.stats(0.002)
        text = threads.read_text()
        assert refused == 0 and err is None and 10 <= writes <= 0.1 / 0.002 + 1
        tid = text[: len(text) // writes]
        assert text == tid * writes  # one tid, written `writes` times, on the one fd
        assert int(tid) != threading.get_native_id()
        assert (Path("/proc/self/task") / tid).is_dir()  # a thread of this process
        time.sleep(0.05)
        assert w.stats(0.002)[0] == writes  # the deadline passed: no more writes

        # a refused write: an fd it cannot write (O_RDONLY: EBADF, not a moved thread)
        fs = w.fs
        real = fs.open_reported
        fs.open_reported = lambda p, f, _flags: real(p, f, os.O_RDONLY)  # type: ignore
        w.start_background(0.002)  # counts start again from here
        w.moved(time.monotonic() + 0.1)
        time.sleep(0.05)
        _writes, refused, err = w.stats(0.002)
        assert refused == 1 and err is not None and err.errno == errno.EBADF
        assert err.file == "cgroup.threads" and str(cg / "daemon") in str(err)
        assert err.value == tid  # the writer thread's tid, as written
        assert w.stats(0.002) == (0, 1, None)  # reported once; the writes stopped
    finally:
        w.stop_background()
    assert not w.background


def test_warm_thread_never_closes_a_descriptor_it_does_not_own(tmp_path: Path) -> None:
    """Regression: the writer's state once started with fd 0, so the first warm_start
    closed the process's stdin, and the number was later closed twice (the daemon's lock
    file got EBADF at exit).  In a fresh process (the thread is one per process): stdin
    and every other descriptor survive a start, a restart and a stop."""
    import subprocess
    import sys

    target = tmp_path / "threads"
    target.write_text("")
    code = (
        "import os, sys\n"
        "from governor.cgroupfs import _keepwarm as c\n"
        "before = sorted(int(x) for x in os.listdir('/proc/self/fd'))\n"
        f"fd = os.open({str(target)!r}, os.O_WRONLY)\n"
        "c.warm_start(fd, 1_000_000); c.warm_start(fd, 1_000_000); c.warm_stop()\n"
        "os.close(fd)\n"
        "after = sorted(int(x) for x in os.listdir('/proc/self/fd'))\n"
        "os.fstat(0)\n"
        "print(before == after, before, after)\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("True"), r.stdout


def _warmer(tmp_path: Path) -> tuple[tree.MigrationWarmer, Path]:
    from governor.cgroupfs.files import CgroupFS

    cg = tmp_path / "cg"
    (cg / "daemon").mkdir(parents=True)
    threads = cg / "daemon" / "cgroup.threads"
    threads.write_text("")
    me = tmp_path / "self-cgroup"
    me.write_text("0::/daemon\n")
    return tree.MigrationWarmer(CgroupFS(cg, verify=False), proc_file=str(me)), threads


def test_the_thread_and_touch_write_the_same_file(tmp_path: Path) -> None:
    """Parity: the C thread and the Python twin (touch) both write a tid, once per write,
    to the cgroup.threads of the cgroup this process is in."""
    w, threads = _warmer(tmp_path)
    w.touch()  # the twin: the calling thread's tid
    w.close()
    py = threads.read_text()
    assert py and py.isdigit()
    assert w.writes == 1
    threads.write_text("")
    assert w.start_background(0.002)
    try:
        w.moved(time.monotonic() + 0.03)
        time.sleep(0.1)
        c = threads.read_text()
        writes = w.stats(0.002)[0]
        assert writes >= 1 and c == c[: len(c) // writes] * writes
        assert c[: len(c) // writes].isdigit()
    finally:
        w.stop_background()


_BLOCKED = """
import fcntl, os, sys, threading, time
from governor.cgroupfs import _keepwarm as c
path = sys.argv[1]
os.mkfifo(path)
fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
try:
    while True:
        os.write(fd, b"x" * 4096)  # fill the pipe: the thread's next write(2) blocks
except BlockingIOError:
    pass
fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
c.warm_start(fd, 1_000_000)
c.warm_until(time.monotonic_ns() + 10**9)
time.sleep(0.1)  # the thread is in its write(2) now, and stays there
t = time.monotonic()
for _ in range(100):
    c.warm_until(time.monotonic_ns() + 10**9)
    stats = c.warm_stats()
waited = time.monotonic() - t
rd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
def drain():
    while True:
        try:
            if not os.read(rd, 1 << 16):
                return
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            return
threading.Thread(target=drain, daemon=True).start()
c.warm_stop()  # waits for the write under way (unblocked by the drain), then joins
print(waited < 0.5, waited, stats)
"""


def test_the_mutex_is_not_held_across_the_write(tmp_path: Path) -> None:
    """warm_until and warm_stats (the listener's calls, with the GIL held) return while
    the thread is stuck in a write(2): here to a full pipe, in the kernel a write that
    waits for the threadgroup rwsem.  They once waited on a mutex held across the write.
    In a fresh process, with a timeout: a regression hangs there, not here."""
    r = subprocess.run([sys.executable, "-c", _BLOCKED, str(tmp_path / "fifo")],
                       check=False, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("True"), r.stdout


def test_warm_start_refuses_a_bad_interval_and_fd() -> None:
    assert tree._warm is not None
    with pytest.raises(ValueError, match="interval"):
        tree._warm.warm_start(0, 0)
    with pytest.raises(OSError, match="Bad file descriptor"):
        tree._warm.warm_start(1 << 20, 1000)
