"""Finding the cgroup v2 hierarchy, and explaining precisely when there is none.

The mount is found in ``/proc/self/mountinfo`` (an injectable path) and verified with
statfs (CGROUP2_SUPER_MAGIC): a path that merely looks right is not trusted.  A hybrid host
(cgroup v1 controllers plus an empty cgroup2 at ``/sys/fs/cgroup/unified``) is refused with
the list of controllers cgroup v1 holds and where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from governor.cgroupfs.files import CGROUP2_SUPER_MAGIC, statfs_type
from governor.cgroupfs.parse import MountEntry, parse_list, parse_mountinfo
from governor.cgroupfs.tree import MANAGED_CONTROLLERS
from governor.errors import NotCgroup2Error

FIX_UNIFIED = (
    "boot with a unified hierarchy: add `systemd.unified_cgroup_hierarchy=1 "
    "cgroup_no_v1=all` to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, "
    "then update-grub and reboot; systemd 247+ defaults to it), or on a container host give "
    "the governor a cgroup2 namespace; meanwhile `governor sandbox exec -- governor ...` "
    "runs it in a throwaway VM with a real cgroup v2 kernel"
)


@dataclass(frozen=True)
class Hierarchy:
    """What the host mounts: the cgroup2 mount (if any) and the v1 controllers."""

    cgroup2: MountEntry | None
    v1: dict[str, str]            # controller -> mount point, for cgroup v1 hierarchies
    cgroup2_controllers: tuple[str, ...]  # cgroup.controllers of the cgroup2 root

    @property
    def missing(self) -> list[str]:
        """Managed controllers the cgroup2 hierarchy does not offer."""
        return [c for c in MANAGED_CONTROLLERS if c not in self.cgroup2_controllers]


_V1_NAMES = {"blkio": "io", "cpu": "cpu", "cpuacct": "cpu", "memory": "memory", "pids": "pids"}


def inspect(mountinfo: str | Path = "/proc/self/mountinfo") -> Hierarchy:
    """Read the mount table and the cgroup2 root's controllers (never writes anything)."""
    entries = parse_mountinfo(Path(mountinfo).read_text())
    v2: MountEntry | None = None
    v1: dict[str, str] = {}
    for m in entries:
        if m.fstype == "cgroup2" and v2 is None:
            v2 = m
        elif m.fstype == "cgroup":
            for opt in m.super_options:
                if opt in ("cpu", "cpuacct", "cpuset", "memory", "blkio", "pids", "devices",
                           "freezer", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma",
                           "misc"):
                    v1[opt] = m.mount_point
    ctrls: tuple[str, ...] = ()
    if v2 is not None:
        try:
            ctrls = tuple(parse_list((Path(v2.mount_point) / "cgroup.controllers").read_text()))
        except OSError:
            ctrls = ()
    return Hierarchy(v2, v1, ctrls)


def explain_hierarchy(h: Hierarchy) -> str:
    """Why this host cannot be governed (empty string when it can)."""
    if h.cgroup2 is None:
        held = ", ".join(f"{c} at {p}" for c, p in sorted(h.v1.items()))
        return ("no cgroup2 filesystem is mounted" + (f"; cgroup v1 holds {held}" if held else "")
                + f". Fix: {FIX_UNIFIED}")
    if not h.missing:
        return ""
    held_v1 = [f"{c} at {p}" for c, p in sorted(h.v1.items())
               if _V1_NAMES.get(c) in h.missing]
    msg = (f"cgroup2 is mounted at {h.cgroup2.mount_point} but its cgroup.controllers lacks "
           f"{', '.join(h.missing)}")
    if held_v1:
        msg += f": cgroup v1 holds {', '.join(held_v1)} (a hybrid host)"
    return msg + f". Fix: {FIX_UNIFIED}"


def find_cgroup2(mountinfo: str | Path = "/proc/self/mountinfo",
                 *, require_controllers: bool = True) -> Path:
    """The cgroup2 mount point, verified with statfs; raises :class:`NotCgroup2Error`
    (with the reason and the fix) when there is none or it lacks the managed controllers."""
    h = inspect(mountinfo)
    if h.cgroup2 is None or (require_controllers and h.missing):
        raise NotCgroup2Error(explain_hierarchy(h))
    path = Path(h.cgroup2.mount_point)
    ftype = statfs_type(path)
    if ftype != CGROUP2_SUPER_MAGIC:
        raise NotCgroup2Error(f"{path} is listed as cgroup2 in {mountinfo} but statfs says "
                              f"f_type {ftype:#x}, not {CGROUP2_SUPER_MAGIC:#x}")
    return path
