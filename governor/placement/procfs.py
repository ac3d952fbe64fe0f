"""Reading what placement needs about a process from procfs (the root is injectable).

Parsers are pure functions tested on real ``/proc`` contents; :class:`Proc` reads lazily
(only the files a rule asks about) and caches per instance, so classifying one process
costs a few small reads.  As in psutil's ``_pslinux.py``: ``/proc/PID/stat`` is split on
the *last* ``)`` (a comm may hold spaces and parentheses), a vanished process
(ENOENT/ESRCH on any read) becomes :class:`ProcessGone` at this one boundary, and bulk
scans skip pids that vanish.
"""

from __future__ import annotations

import errno
import os
import re
import select
import types
from dataclasses import dataclass
from typing import Final, NamedTuple

from governor.accel import load
from governor.errors import GovernorError
from governor.policy.patterns import CMDLINE_MAX

#: the reads of every exec in C (governor/placement/_fastproc.c), or None
_c: types.ModuleType | None = load("governor.placement._fastproc")
#: are the per-exec reads done by the C accelerator?
ACCELERATED: Final = _c is not None

#: task flag of kernel threads (include/linux/sched.h PF_KTHREAD), /proc/PID/stat field 9
PF_KTHREAD: Final = 0x00200000
#: kthreadd: every kernel thread is it or its child
KTHREADD_PID: Final = 2


class ProcessGone(GovernorError):
    """The process exited (or its pid was reused) while it was being read."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        super().__init__(f"process {pid} is gone")


class Stat(NamedTuple):
    """The fields of ``/proc/PID/stat`` placement uses (a tuple: made on every exec
    event, from the C reader's tuple without a Python-level constructor)."""

    comm: str
    state: str
    ppid: int
    flags: int
    starttime: int  # clock ticks after boot (field 22): with the pid, a process's identity
    num_threads: int = 1  # field 20

    @property
    def kthread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


#: what the kernel separates procfs fields with (``str.split()`` would also take \t, \r,
#: \x1c... and ``int()`` "+5", "1_0" or other scripts' digits: the C reader does not)
_SEP: Final = re.compile("[ \n]+")
_STATE: Final = re.compile("[^ \n]+")
_NUM: Final = re.compile("-?[0-9]+")
_LLONG_MAX: Final = (1 << 63) - 1


def _num(s: str, what: str) -> int:
    """A decimal field as the kernel prints it (a long long), else ValueError."""
    if _NUM.fullmatch(s) is None or abs(v := int(s)) > _LLONG_MAX:
        raise ValueError(f"{what}: not a decimal field: {s[:40]!r}")
    return v


def parse_stat(text: str) -> Stat:
    """``/proc/PID/stat``: ``pid (comm) state ppid ... flags(9) ... starttime(22) ...``.

    Fields are separated by spaces (or newlines); text not in that layout raises
    ValueError, exactly where the C reader (``_fastproc.proc_stat``) does."""
    open_, close = text.find("("), text.rfind(")")
    if open_ < 0 or close < open_ or close + 2 > len(text) or text[close + 1] != " ":
        raise ValueError(f"not the kernel's /proc/PID/stat layout: {text[:200]!r}")
    rest = text[close + 2:].lstrip(" ")
    state = _STATE.match(rest)
    # fields from 4 (ppid) on: field N is fields[N - 4]
    fields = [f for f in _SEP.split(rest[state.end():]) if f] if state else []
    if state is None or len(fields) < 19:
        raise ValueError(f"not the kernel's /proc/PID/stat layout: {text[:200]!r}")
    return Stat(comm=text[open_ + 1:close], state=state[0], ppid=_num(fields[0], "stat"),
                flags=_num(fields[5], "stat"), starttime=_num(fields[18], "stat"),
                num_threads=_num(fields[16], "stat"))


@dataclass(frozen=True, slots=True)
class Status:
    """The fields of ``/proc/PID/status`` placement uses."""

    uid: int        # real uid (the first of Uid's four values), as cgrulesengd uses
    euid: int
    gid: int        # real gid
    egid: int
    nspid: tuple[int, ...]  # the pid in each pid namespace, outermost first


def _status_field(text: str, key: str) -> list[str]:
    start = text.find(key)
    if start < 0:
        return []
    end = text.find("\n", start + 1)
    return text[start + len(key):end if end >= 0 else None].split()


def parse_status(text: str) -> Status:
    """``Uid:``, ``Gid:`` and ``NSpid:`` of ``/proc/PID/status`` (found by search, not a
    line-by-line parse: this runs on every exec event)."""
    uids = _status_field(text, "\nUid:")
    gids = _status_field(text, "\nGid:")
    nspid = tuple(int(x) for x in _status_field(text, "\nNSpid:"))
    return Status(int(uids[0]) if uids else -1, int(uids[1]) if len(uids) > 1 else -1,
                  int(gids[0]) if gids else -1, int(gids[1]) if len(gids) > 1 else -1, nspid)


def parse_cgroup(text: str) -> str | None:
    """The cgroup v2 path (the ``0::`` line) of ``/proc/PID/cgroup``; None when there is
    none (a cgroup v1 only host)."""
    for line in text.split("\n"):  # (not splitlines: a path may hold \r or \x1c)
        if line.startswith("0::"):
            return line[3:]
    return None


def parse_ns_link(target: str) -> int:
    """``pid:[4026531836]`` (the target of ``/proc/PID/ns/pid``) -> 4026531836; ValueError
    for any other text (digits only between the first ``[`` and the last ``]``)."""
    start, end = target.find("["), target.rfind("]")
    inner = target[start + 1:end]
    if start < 0 or end <= start + 1 or re.fullmatch("[0-9]+", inner) is None \
            or int(inner) >= 1 << 64:
        raise ValueError(f"not a namespace link: {target[:200]!r}")
    return int(inner)


def parse_children(data: bytes) -> list[int]:
    """``/proc/PID/task/TID/children``: pids separated by spaces; ValueError for any other
    text (as ``_fastproc.proc_children``)."""
    return [_num(f, "children") for f in _SEP.split(data.decode("utf-8", "surrogateescape"))
            if f]


def parse_cmdline(data: bytes) -> str:
    """The NUL-separated arguments joined by single spaces (what ``ps -o args`` shows).

    A process that rewrote its argv into one NUL-less string (setproctitle) reads as is.
    """
    return data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "surrogateescape")


_READ_SIZE: Final = 65536
#: the most ``stat`` and ``cgroup`` may hold (as the C reader's MAX_FILE): a file this
#: large raises OSError(EFBIG) naming it, it is never read truncated
PROC_FILE_MAX: Final = 1 << 20


def _gone(e: OSError) -> bool:
    return e.errno in (errno.ENOENT, errno.ESRCH)


class Proc:
    """One process seen through ``root`` (``/proc`` or a fake tree), read lazily.

    Every accessor raises :class:`ProcessGone` when the process vanished; ``exe`` is None
    when the link cannot be read (kernel threads, permission), ``comm`` comes from
    ``/proc/PID/comm``.
    """

    __slots__ = ("_cgroup", "_cmdline", "_comm", "_exe", "_pidfd", "_pidns", "_stat",
                 "_status", "base", "pid", "root")

    def __init__(self, root: str, pid: int) -> None:
        self.pid = pid
        self.root = root
        self.base = f"{root}/{pid}"
        self._pidfd: int | None = None  # set by pin(); -1: pinning unavailable
        self._stat: Stat | None = None
        self._status: Status | None = None
        self._cgroup: str | None = None
        self._exe: str | None = None
        self._comm: str | None = None
        self._cmdline: str | None = None
        self._pidns: int | None = None

    def _read(self, name: str, limit: int | None = None, *, head: int | None = None) -> bytes:
        """The whole file (any length; ``limit``: OSError(EFBIG) at that many bytes), or
        with ``head`` at most that many bytes from its start, in one read(2)."""
        try:
            fd = os.open(f"{self.base}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            if _gone(e):
                raise ProcessGone(self.pid) from e
            raise
        try:
            # one read(2) gets a whole procfs file (seq_file hands out a complete record;
            # cmdline fills the buffer); a full buffer means there may be more
            b = os.read(fd, _READ_SIZE if head is None else head)
            if head is not None or len(b) < _READ_SIZE:
                return b
            chunks = [b]
            total = len(b)
            while True:
                if limit is not None and total >= limit:
                    raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), f"{self.base}/{name}")
                b = os.read(fd, _READ_SIZE)
                if not b:
                    break
                chunks.append(b)
                total += len(b)
            return b"".join(chunks)
        except OSError as e:
            if _gone(e):
                raise ProcessGone(self.pid) from e
            if e.filename is None:  # read(2)'s errors name no file: say which one
                raise OSError(e.errno, e.strerror, f"{self.base}/{name}") from e
            raise
        finally:
            os.close(fd)

    # -- identity ------------------------------------------------------------------------
    def pin(self) -> None:
        """Hold the process by a pidfd (Linux 5.3+, ``pidfd_open``) before anything about
        it is read: as long as that process has not exited its pid cannot be reused, so
        :meth:`same_process` is then one ``poll`` instead of a second read of ``stat``.
        Only for the live ``/proc`` (a pidfd names a process of the running kernel); a
        kernel or sandbox without pidfds falls back to comparing start times."""
        if self._pidfd is not None:
            return
        if self.root != "/proc":
            self._pidfd = -1
            return
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise ProcessGone(self.pid) from e
            self._pidfd = -1  # ENOSYS (old kernel), EPERM (seccomp), EINVAL (a thread)

    def probe(self) -> Stat:
        """:meth:`pin`, then :meth:`pidns` and :meth:`stat`: what placement reads first
        about every exec'd process (pinned before anything is read)."""
        self.pin()
        self.pidns()
        return self.stat()

    def same_process(self, starttime: int) -> bool:
        """Is ``pid`` still the process that was read (started at ``starttime``)?  Checked
        just before a move: the process read may have exited and its pid been reused.
        With a pin: its pidfd is not readable (the process has not exited, so the pid is
        still its own); else the start time in ``stat`` is read again and compared."""
        fd = self._pidfd
        if fd is not None and fd >= 0:
            if _c is not None:
                return not _c.pidfd_exited(fd)
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return not poller.poll(0)
        try:
            return self.fresh_starttime() == starttime
        except ProcessGone:
            return False

    def close(self) -> None:
        """Release the pin (the cached facts stay readable)."""
        fd, self._pidfd = self._pidfd, None
        if fd is not None and fd >= 0:
            os.close(fd)

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- facts -----------------------------------------------------------------------------
    def _read_stat(self) -> Stat:
        if _c is not None:
            t = _c.proc_stat(f"{self.base}/stat")
            if t is None:
                raise ProcessGone(self.pid)
            return tuple.__new__(Stat, t)
        data = self._read("stat", PROC_FILE_MAX)
        if not data:  # a zombie being reaped reads empty on some kernels
            raise ProcessGone(self.pid)
        return parse_stat(data.decode("utf-8", "surrogateescape"))

    def stat(self) -> Stat:
        if self._stat is None:
            self._stat = self._read_stat()
        return self._stat

    def fresh_starttime(self) -> int:
        """The start time read again now (pid-reuse check just before a move)."""
        return self._read_stat().starttime

    def status(self) -> Status:
        if self._status is None:
            self._status = parse_status(self._read("status").decode("utf-8",
                                                                    "surrogateescape"))
        return self._status

    def cgroup(self) -> str:
        """The cgroup v2 path, fresh each call (it is what moves change); "" when the
        file has no ``0::`` line."""
        if _c is not None:
            got = _c.proc_cgroup(f"{self.base}/cgroup")
            if got is False:
                raise ProcessGone(self.pid)
            path = got
        else:
            path = parse_cgroup(self._read("cgroup", PROC_FILE_MAX).decode(
                "utf-8", "surrogateescape"))
        self._cgroup = path if path is not None else ""
        return self._cgroup

    def cached_cgroup(self) -> str:
        return self._cgroup if self._cgroup is not None else self.cgroup()

    def exe(self) -> str | None:
        if self._exe is None:
            try:
                self._exe = os.readlink(f"{self.base}/exe")
            except OSError as e:
                if e.errno == errno.ESRCH:
                    raise ProcessGone(self.pid) from e
                if e.errno == errno.ENOENT and not os.path.exists(self.base):
                    raise ProcessGone(self.pid) from e
                self._exe = ""  # kernel thread, zombie or no permission: matches no glob
        return self._exe or None

    def comm(self) -> str:
        """The kernel's name of the process: that of ``stat`` when it has been read (the
        kernel prints the same ``task->comm`` in both files, unescaped), else
        ``/proc/PID/comm``."""
        if self._comm is None:
            if self._stat is not None:
                self._comm = self._stat.comm
            else:
                self._comm = self._read("comm").decode("utf-8", "surrogateescape").rstrip("\n")
        return self._comm

    def cmdline(self) -> str:
        """The first :data:`~governor.policy.patterns.CMDLINE_MAX` bytes of the command
        line, as :func:`parse_cmdline` joins it: a tenant's megabyte of arguments costs
        one small read (issue 15; ``cmdline`` rules match no further)."""
        if self._cmdline is None:
            self._cmdline = parse_cmdline(self._read_head("cmdline", CMDLINE_MAX))
        return self._cmdline

    def _read_head(self, name: str, size: int) -> bytes:
        """At most ``size`` bytes from the start of a procfs file, in one read(2)."""
        return self._read(name, head=size)

    def pidns(self) -> int:
        if self._pidns is None:
            if _c is not None:
                ino: int | None = _c.proc_ns(f"{self.base}/ns/pid")
                if ino is None:
                    raise ProcessGone(self.pid)
                self._pidns = ino
                return ino
            try:
                self._pidns = parse_ns_link(os.readlink(f"{self.base}/ns/pid"))
            except OSError as e:
                if _gone(e):
                    raise ProcessGone(self.pid) from e
                raise
        return self._pidns

    def children(self) -> list[int]:
        """Child pids of every thread (``/proc/PID/task/TID/children``, Linux 4.2+).  A
        process whose ``stat`` (already read) counts one thread has only its own file to
        read; one that grew threads since then forks from them after that read, and those
        forks are followed by their fork events."""
        out: list[int] = []
        if self._stat is not None and self._stat.num_threads == 1:
            tids = [str(self.pid)]
        else:
            try:
                tids = os.listdir(f"{self.base}/task")
            except OSError as e:
                if _gone(e):
                    return out
                raise
        for tid in tids:
            if _c is not None:
                kids = _c.proc_children(f"{self.base}/task/{tid}/children")
                if kids is not None:  # (None: the thread or the process exited meanwhile)
                    out.extend(kids)
                continue
            try:
                out.extend(parse_children(self._read(f"task/{tid}/children")))
            except ProcessGone:  # the thread (or the process) exited meanwhile
                continue
        return out


def pids(root: str) -> list[int]:
    """Every process (thread group leader) listed in ``root``, ascending."""
    return sorted(int(n) for n in os.listdir(root) if n.isdigit())


def pidns_of(root: str, pid: int | str) -> int:
    """The pid namespace inode of ``root/PID`` (``"self"`` and ``1`` work too)."""
    return parse_ns_link(os.readlink(f"{root}/{pid}/ns/pid"))


def host_pidns(root: str) -> int:
    """The pid namespace placement calls "the host": that of pid 1 as this procfs shows it
    (the governor may itself run in a pid namespace: its pid 1 is then its own init).  When
    pid 1's link cannot be read (EACCES: pid 1 belongs to another user namespace, as in
    some container runtimes), the governor's own namespace, which is then the same one."""
    try:
        return pidns_of(root, 1)
    except PermissionError:
        return pidns_of(root, "self")


def boot_time(root: str) -> float:
    """Seconds since the epoch at boot (``btime`` of ``/proc/stat``)."""
    with open(f"{root}/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise ValueError(f"{root}/stat has no btime line")


CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
