"""The processes of governor's groups, for ``governor ps``: pid, user, command, pid
namespace and start time of each process of each managed group."""

from __future__ import annotations

import pwd
from dataclasses import dataclass
from datetime import UTC, datetime

from governor.cgroupfs import tree
from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.layout import Layout, as_layout
from governor.placement.procfs import CLK_TCK, Proc, ProcessGone, boot_time, host_pidns
from governor.policy import Policy


@dataclass(frozen=True)
class PsRow:
    group: str
    pid: int
    user: str
    command: str
    pidns: int
    container: bool
    since: str  # ISO 8601 UTC start time


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def ps_rows(fs: CgroupFS, subtree: Layout | str, policy: Policy, *,
            tenant: str | None = None,
            proc_root: str = "/proc") -> list[PsRow]:
    """The processes of each managed group (groups of the policy, in policy order)."""
    layout = as_layout(subtree)
    host_ns = host_pidns(proc_root)
    btime = boot_time(proc_root)
    rows: list[PsRow] = []
    for g in policy.groups():
        if tenant is not None and g.tenant != tenant:
            continue
        rel = layout.path(g.path)
        if not fs.exists(rel):
            continue
        for pid in tree.procs_below(fs, rel):
            p = Proc(proc_root, pid)
            try:
                st = p.stat()
                ns = p.pidns()
                cmd = p.cmdline() or f"[{st.comm}]"
                user = _user(p.status().uid)
            except ProcessGone:
                continue
            since = datetime.fromtimestamp(btime + st.starttime / CLK_TCK, UTC)
            rows.append(PsRow(g.path, pid, user, cmd, ns, ns != host_ns,
                              since.isoformat(timespec="seconds")))
    return rows
