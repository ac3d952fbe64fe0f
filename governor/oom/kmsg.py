"""OOM victims from the kernel log (``/dev/kmsg``): pid, command and RSS of each kill.

``memory.events`` says *how many* tasks a group lost; only the kernel log says *which*.
On a memcg OOM kill Linux 6.1 logs (mm/oom_kill.c ``dump_oom_summary`` and
``__oom_kill_process``, the second line at KERN_ERR)::

    oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,
        oom_memcg=/governor.slice/acme/web,task_memcg=/governor.slice/acme/web,
        task=python3,pid=4242,uid=0
    Memory cgroup out of memory: Killed process 4242 (python3) total-vm:110284kB,
        anon-rss:98304kB, file-rss:4096kB, shmem-rss:0kB, UID:0 pgtables:260kB
        oom_score_adj:0

(each one line in the log).  The first names the cgroup; with ``memory.oom.group`` the
kernel logs "Tasks in /path are going to be killed due to memory.oom.group set" and then one
"Killed process" line per member, without a new summary: those victims belong to the group
of that line.  The counter is raised *before* the log line is printed, so the watcher waits a
moment for the victims of a kill it saw in ``memory.events``.

``/dev/kmsg`` records are ``PRIO,SEQ,USEC,FLAGS;MESSAGE`` (Documentation/ABI/testing/
dev-kmsg); the reader opens it non-blocking and seeks to the end (``SEEK_END``) so only new
records are read; EPIPE means records were overwritten before we read them (skipped).
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass

log = logging.getLogger("governor.oom.kmsg")

KMSG = "/dev/kmsg"

_KILLED = re.compile(
    r"Memory cgroup out of memory: Killed process (?P<pid>\d+) \((?P<comm>.*)\) "
    r"total-vm:(?P<vm>\d+)kB, anon-rss:(?P<anon>\d+)kB, file-rss:(?P<file>\d+)kB, "
    r"shmem-rss:(?P<shmem>\d+)kB(?:, UID:(?P<uid>\d+))?")
_SUMMARY = re.compile(r"oom-kill:constraint=(?P<constraint>[A-Z_]+),.*?"
                      r"oom_memcg=(?P<oom_memcg>[^,]*),task_memcg=(?P<task_memcg>[^,]*),"
                      r"task=(?P<task>.*),pid=(?P<pid>\d+),uid=(?P<uid>\d+)\s*$")
_GROUP = re.compile(r"Tasks in (?P<path>\S+) are going to be killed due to memory\.oom\.group")


@dataclass(frozen=True, slots=True)
class Victim:
    """A task killed by a memcg OOM, as the kernel logged it."""

    pid: int
    comm: str
    #: cgroup path of the task (absolute in the cgroup hierarchy), None if not logged
    cgroup: str | None
    #: the memcg whose limit was hit (``oom_memcg``)
    oom_cgroup: str | None
    anon_rss_kb: int
    file_rss_kb: int
    shmem_rss_kb: int
    total_vm_kb: int
    uid: int | None
    #: kernel timestamp (microseconds since boot) of the log record, None if unknown
    usec: int | None = None

    @property
    def rss_bytes(self) -> int:
        return (self.anon_rss_kb + self.file_rss_kb + self.shmem_rss_kb) * 1024


def split_record(raw: str) -> tuple[int, int | None, str] | None:
    """``"3,812,1234567,-;msg"`` -> ``(facility/priority, usec, message)`` (None: not one)."""
    head, sep, msg = raw.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    if len(fields) < 3 or not fields[0].isdigit():
        return None
    usec = int(fields[2]) if fields[2].isdigit() else None
    # continuation lines (" KEY=value" dictionary entries) follow after a newline
    return int(fields[0]), usec, msg.split("\n", 1)[0]


class OomLogParser:
    """Feeds on kernel log messages; returns a :class:`Victim` per "Killed process" line."""

    def __init__(self) -> None:
        self._summary: dict[str, str] | None = None
        self._group_path: str | None = None

    def feed(self, message: str, usec: int | None = None) -> Victim | None:
        m = _SUMMARY.search(message)
        if m is not None:
            self._summary = m.groupdict()
            self._group_path = None
            return None
        m = _GROUP.search(message)
        if m is not None:
            self._group_path = m["path"]
            return None
        m = _KILLED.search(message)
        if m is None:
            return None
        pid = int(m["pid"])
        s = self._summary
        cgroup = oom_cgroup = None
        if s is not None:
            oom_cgroup = s["oom_memcg"] or None
            if s["pid"] == m["pid"]:
                cgroup = s["task_memcg"] or None
            elif self._group_path is not None:
                cgroup = None  # another member of an oom.group kill: somewhere below it
        if cgroup is None and self._group_path is not None:
            cgroup = self._group_path
        return Victim(pid=pid, comm=m["comm"], cgroup=cgroup, oom_cgroup=oom_cgroup,
                      anon_rss_kb=int(m["anon"]), file_rss_kb=int(m["file"]),
                      shmem_rss_kb=int(m["shmem"]), total_vm_kb=int(m["vm"]),
                      uid=int(m["uid"]) if m["uid"] is not None else None, usec=usec)


class KmsgReader:
    """Non-blocking reader of ``/dev/kmsg`` from its end; :meth:`read` returns new victims.

    ``fileno()`` is pollable (POLLIN when a record is ready).  Reading ``/dev/kmsg`` needs
    CAP_SYSLOG (or ``kernel.dmesg_restrict=0``): without it :meth:`open` returns False and
    events simply carry no victim details.
    """

    def __init__(self, path: str = KMSG, *, from_end: bool = True) -> None:
        self.path = path
        self.from_end = from_end
        self.fd: int | None = None
        self.parser = OomLogParser()
        self.lost = 0

    def open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            log.warning("kernel log unreadable: OOM events will have no victim details",
                        extra={"path": self.path, "error": e.strerror})
            return False
        if self.from_end:
            os.lseek(fd, 0, os.SEEK_END)  # only records logged from now on
        self.fd = fd
        return True

    def fileno(self) -> int:
        if self.fd is None:
            raise ValueError("kmsg reader is not open")
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self) -> list[Victim]:
        out: list[Victim] = []
        if self.fd is None:
            return out
        while True:
            try:
                chunk = os.read(self.fd, 8192)  # one record per read(2) on /dev/kmsg
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten before we read it: skip ahead
                    self.lost += 1
                    continue
                if e.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                break
            for raw in chunk.decode(errors="replace").splitlines():
                rec = split_record(raw)
                if rec is None:
                    continue
                v = self.parser.feed(rec[2], rec[1])
                if v is not None:
                    out.append(v)
        return out
