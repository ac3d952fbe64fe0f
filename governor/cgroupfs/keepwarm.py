"""Keeping moves fast: no-op migrations after a move (:class:`MigrationWarmer`, the
placement listener's ``keep_warm``), from the calling thread or from the writer thread of
the optional C accelerator ``governor/cgroupfs/_keepwarm.c``; and the calling thread's own
cgroup (:func:`own_cgroup`), where those writes go.
"""

from __future__ import annotations

import errno
import os
import threading
import time

from governor.accel import load
from governor.cgroupfs.files import CgroupFS, explain
from governor.errors import CgroupError

#: keep_warm's writer thread in C (governor/cgroupfs/_keepwarm.c), or None
_warm = load("governor.cgroupfs._keepwarm")


def own_cgroup(proc_file: str = "/proc/thread-self/cgroup") -> str:
    """The cgroup2 path of the calling thread, relative to the mount (``""``: the root),
    from its ``0::`` line (as the kernel wrote it: not checked against the policy's name
    rules; :meth:`CgroupFS.open_reported` opens it)."""
    try:
        with open(proc_file) as f:
            text = f.read()
    except OSError as e:
        raise CgroupError("read", proc_file, None, e.errno or 0,
                          hint="cannot read this thread's cgroup") from e
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip().strip("/")
    raise CgroupError("read", proc_file, None, errno.ENOENT,
                      hint="no cgroup2 line (0::) in it: is a cgroup2 hierarchy mounted?")


class MigrationWarmer:
    """No-op migrations that keep the kernel ready for the next move.

    Every write of a pid to ``cgroup.procs`` (or of a tid to ``cgroup.threads``) takes the
    kernel's ``cgroup_threadgroup_rwsem`` for writing.  Without the mount option
    ``favordynmods`` that is a percpu rwsem whose readers (fork, exit) take a per-CPU fast
    path, and a writer first switches them to the slow path, which waits for an RCU grace
    period (``rcu_sync_enter``): measured on Linux 6.1, a move took 16 ms of wall time for
    under a millisecond of work.  The switch back happens one grace period after the last
    writer leaves, and a writer that comes before then does not wait at all.

    :meth:`touch` is such a writer that changes nothing: it writes the calling thread's tid
    to the ``cgroup.threads`` of the cgroup that thread is in.  The kernel takes the rwsem,
    finds the thread already there and moves nothing.  Repeated at an interval shorter than a
    grace period after a move, it keeps the next moves from waiting (what ``favordynmods``
    does for good, only while moves are coming).  It can never move the daemon: should the
    thread be elsewhere by now, ``cgroup.threads`` refuses to move a thread to another
    resource domain (EOPNOTSUPP), and the path is looked up once more.

    The rwsem taken for writing holds up forks and exits on the whole host for as long as
    the write takes (microseconds: nothing is migrated), as every move does.

    Two ways to write: :meth:`touch` from the calling thread, or, with the C accelerator,
    :meth:`start_background` once and :meth:`moved` after each move: a POSIX thread of
    ``_keepwarm`` (one per process) then writes its own tid every interval until the
    deadline, without the GIL, and :meth:`stats` reports its writes and refusals.
    """

    def __init__(self, fs: CgroupFS, *, proc_file: str = "/proc/thread-self/cgroup") -> None:
        self.fs = fs
        self.proc_file = proc_file
        self.rel: str | None = None
        self._fd = -1
        self.writes = 0
        self.background = False  # the C thread writes (start_background)
        self._retried = False
        self._writes_at_retry = 0
        self._refused_seen = 0
        self._base: tuple[int, int] = (0, 0)
        #: time.monotonic() of the end of the window, and of the last move or no-op write
        self.until = 0.0
        self.last_write = 0.0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.rel = None

    # -- background mode: a thread of the C accelerator writes ---------------------------
    def start_background(self, interval: float, *, _retry: bool = False) -> bool:
        """Hand the writes to a POSIX thread of the C accelerator (it never takes the GIL);
        :meth:`moved` then opens a window.  False without the accelerator (the caller
        writes with :meth:`touch`); CgroupError when the cgroup cannot be opened."""
        if _warm is None:
            return False
        fd = self._open()  # every thread of this process is in this cgroup
        rel = self.rel
        try:
            _warm.warm_start(fd, max(1, int(interval * 1e9)))
        finally:
            self.close()  # the thread keeps its own dup
        self.rel = rel  # where it writes
        if not _retry:  # counts from here (the thread is one per process)
            self._base = _warm.warm_stats()[:2]
            self._refused_seen = self._base[1]
            self._retried = False
        self.background = True
        return True

    def moved(self, until: float) -> None:
        """A move was just made: write until ``until`` (time.monotonic seconds)."""
        self.until = until
        self.last_write = time.monotonic()
        if _warm is not None and self.background:
            _warm.warm_until(int(until * 1e9))

    def stats(self, interval: float) -> tuple[int, int, CgroupError | None]:
        """The background thread's ``(writes, refused, error)``: ``error`` is set once per
        new refusal (None otherwise).  A write refused because this process's cgroup
        changed (EOPNOTSUPP, ENODEV, ENOENT) is first retried at the cgroup read again, as
        :meth:`touch` does; only a refusal there is an error."""
        if _warm is None or not self.background:
            return self.writes, 0, None
        writes, refused, err, tid = _warm.warm_stats()
        result = (writes - self._base[0], refused - self._base[1])
        if writes > self._writes_at_retry:
            self._retried = False  # it wrote since: a later refusal gets its retry
        new = refused > self._refused_seen
        self._refused_seen = refused
        if not new or not err:
            return (*result, None)
        if err in (errno.EOPNOTSUPP, errno.ENODEV, errno.ENOENT) and not self._retried:
            self._retried = True
            self._writes_at_retry = writes
            try:
                self.start_background(interval, _retry=True)  # read again, a new fd
            except CgroupError as e:
                return (*result, e)
            if self.until > time.monotonic():  # the refusal closed the window: reopen
                _warm.warm_until(int(self.until * 1e9))
            return (*result, None)
        return (*result, CgroupError(
            "write", str(self.fs.root / (self.rel or "")), "cgroup.threads", err,
            value=str(tid), hint=explain("write", "cgroup.threads", err)))

    def stop_background(self) -> None:
        if _warm is not None and self.background:
            _warm.warm_stop()
        self.background = False

    def _error(self, e: OSError, rel: str, value: str | None = None) -> CgroupError:
        err = e.errno or 0
        return CgroupError("write", str(self.fs.root / rel), "cgroup.threads", err,
                           value=value, hint=explain("write", "cgroup.threads", err))

    def _open(self) -> int:
        rel = self.rel = own_cgroup(self.proc_file)
        try:
            self._fd = self.fs.open_reported(rel, "cgroup.threads", os.O_WRONLY)
        except OSError as e:
            self.rel = None
            raise self._error(e, rel) from e
        return self._fd

    def touch(self) -> None:
        """One no-op write (this thread into its own cgroup); CgroupError when the kernel
        refuses it twice (the second time after the thread's cgroup was looked up again)."""
        data = str(threading.get_native_id()).encode()
        for last in (False, True):
            fd = self._fd if self._fd >= 0 else self._open()
            try:
                os.write(fd, data)
                self.writes += 1
                self.last_write = time.monotonic()
                return
            except OSError as e:
                rel = self.rel or ""
                self.close()  # moved or removed since: look again
                if last or e.errno not in (errno.EOPNOTSUPP, errno.ENODEV, errno.ENOENT):
                    raise self._error(e, rel, data.decode()) from e
