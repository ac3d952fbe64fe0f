"""The processes of governor's groups, for ``governor ps``: pid, user, command, pid
namespace and start time of each process of each managed group.

The details come from psutil, which reads the procfs root ``psutil.PROCFS_PATH`` (``/proc``;
a test points it at a fake tree).  As in psutil's ``_pslinux.py`` a process that vanishes
while it is read (:class:`psutil.NoSuchProcess`, a zombie included) is skipped; one whose
pid namespace link this user may not read (:class:`psutil.AccessDenied`: the link needs
ptrace access, proc(5)) is listed with the namespace unknown.  The placer's per-exec reads
stay in :mod:`governor.placement.procfs` (C-accelerated, one small read each).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil

from governor.cgroupfs import tree
from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.layout import Layout, as_layout
from governor.placement.procfs import host_pidns, parse_ns_link
from governor.policy import Policy


@dataclass(frozen=True)
class PsRow:
    group: str
    pid: int
    user: str
    command: str
    pidns: int | None  # None: this user may not read the process's ns/pid link
    container: bool | None  # in a pid namespace other than the host's (None: unknown)
    since: str  # ISO 8601 UTC start time


def _pidns(proc: psutil.Process) -> int | None:
    """The inode of ``/proc/PID/ns/pid`` (psutil has no namespaces): its errors mapped as
    psutil maps them, a vanished process to NoSuchProcess, EACCES to None."""
    try:
        return parse_ns_link(os.readlink(f"{psutil.PROCFS_PATH}/{proc.pid}/ns/pid"))
    except (FileNotFoundError, ProcessLookupError) as e:
        raise psutil.NoSuchProcess(proc.pid) from e
    except PermissionError:
        return None


def _row(group: str, pid: int, host_ns: int) -> PsRow | None:
    """One process's row, None when it vanished meanwhile."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():  # stat and status read once for all the fields below
            argv = proc.cmdline()
            # a kernel thread (or a zombie) has no command line: its name in brackets,
            # as ps(1) shows it
            cmd = " ".join(argv) if argv else f"[{proc.name()}]"
            user = proc.username()  # the uid as a number when no passwd entry names it
            started = proc.create_time()  # boot time + stat field 22 / CLK_TCK
            ns = _pidns(proc)
    except psutil.NoSuchProcess:
        return None
    since = datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")
    return PsRow(group, pid, user, cmd, ns, None if ns is None else ns != host_ns, since)


def ps_rows(fs: CgroupFS, subtree: Layout | str, policy: Policy, *,
            tenant: str | None = None) -> list[PsRow]:
    """The processes of each managed group (groups of the policy, in policy order)."""
    layout = as_layout(subtree)
    host_ns = host_pidns(psutil.PROCFS_PATH)
    rows: list[PsRow] = []
    for g in policy.groups():
        if tenant is not None and g.tenant != tenant:
            continue
        rel = layout.path(g.path)
        if not fs.exists(rel):
            continue
        for pid in tree.procs_below(fs, rel):
            if (row := _row(g.path, pid, host_ns)) is not None:
                rows.append(row)
    return rows
