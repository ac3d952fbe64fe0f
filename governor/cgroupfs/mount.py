"""Finding the cgroup v2 hierarchy, and explaining precisely when there is none.

The mount is found in ``/proc/self/mountinfo`` (an injectable path) and verified with
statfs (CGROUP2_SUPER_MAGIC): a path that merely looks right is not trusted.  A hybrid host
(cgroup v1 controllers plus an empty cgroup2 at ``/sys/fs/cgroup/unified``) is refused with
the list of controllers cgroup v1 holds and where.

:func:`favor_dynmods` is the one place that changes the mount: an opt-in remount that adds
the ``favordynmods`` option (``[placement] favordynmods``), keeping every other option.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from governor.cgroupfs.files import CGROUP2_SUPER_MAGIC, statfs_type
from governor.cgroupfs.managed import MANAGED_CONTROLLERS
from governor.cgroupfs.parse import MountEntry, parse_list, parse_mountinfo
from governor.errors import MountError, NotCgroup2Error

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


# -- favordynmods ---------------------------------------------------------------------------
#
# Every write to cgroup.procs takes cgroup_threadgroup_rwsem for writing.  That is a percpu
# rwsem: without `favordynmods` each writer waits for an RCU grace period to switch it to
# its slow mode (measured in the sandbox VM, Linux 6.1: 16 ms per move; 0.8 ms with the
# option).  `favordynmods` keeps the rwsem in its slow mode for good, which makes fork and
# exit a little more expensive.  Kernel: Documentation/admin-guide/cgroup-v2.rst, "Mounting";
# commit 6a010a49b63a ("cgroup: Make !percpu threadgroup_rwsem operations optional"), 6.0.

FAVORDYNMODS = "favordynmods"
#: the first kernel with the option
FAVORDYNMODS_SINCE = (6, 0)

# mount(2) flags (<linux/mount.h>) for the per-mount options mountinfo shows in field 6
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
_MOUNT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                "nosymfollow": MS_NOSYMFOLLOW, "noatime": MS_NOATIME,
                "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}

#: ``(target, flags, data)`` -> None, raising OSError: mount(2) with MS_REMOUNT in ``flags``
Remount = Callable[[str, int, str], None]


def sys_remount(target: str, flags: int, data: str) -> None:
    """mount(2) through libc: ``mount(NULL, target, NULL, flags, data)``."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_char_p)
    if libc.mount(None, os.fsencode(target), None, flags, data.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


def kernel_version(release: str | None = None) -> tuple[int, int] | None:
    """``6.1.0-18-amd64`` -> ``(6, 1)``; None when the release string is not a version."""
    m = re.match(r"(\d+)\.(\d+)", platform.release() if release is None else release)
    return (int(m[1]), int(m[2])) if m else None


def cgroup2_mount_of(path: str | os.PathLike[str],
                     mountinfo: str | os.PathLike[str] = "/proc/self/mountinfo") -> MountEntry:
    """The cgroup2 mount that holds ``path`` (the mount point itself, or a group below it,
    as ``cgroup_root`` may be): the longest mount point that is a prefix, the last listed
    (the topmost) on a tie."""
    want = os.path.normpath(os.fspath(path))
    best: MountEntry | None = None
    for m in parse_mountinfo(Path(mountinfo).read_text()):
        mp = os.path.normpath(m.mount_point)
        holds = want == mp or want.startswith(mp.rstrip("/") + "/")
        if m.fstype == "cgroup2" and holds and (
                best is None or len(mp) >= len(os.path.normpath(best.mount_point))):
            best = m
    if best is None:
        raise NotCgroup2Error(f"{want} is on no cgroup2 mount listed in {os.fspath(mountinfo)}")
    return best


def remount_flags(entry: MountEntry) -> int:
    """MS_REMOUNT plus the entry's per-mount flags: a legacy remount replaces the per-mount
    flags (nosuid, nodev, noexec, ...) with the ones passed, so they are passed back.  The
    atime flags are kept by the kernel when none is given, and are passed anyway."""
    flags = MS_REMOUNT
    for opt in entry.mount_options:
        flags |= _MOUNT_FLAGS.get(opt, 0)
    if "ro" in entry.super_options:
        flags |= MS_RDONLY
    return flags


def merge_options(super_options: Iterable[str], *, add: Iterable[str] = (),
                  drop: Iterable[str] = ()) -> tuple[str, ...]:
    """The superblock options to pass to a cgroup2 remount: every current one (in order,
    without ``rw``/``ro``, which travel as MS_RDONLY), minus ``drop``, plus ``add``.

    cgroup2's reconfigure (apply_cgroup_root_flags in kernel/cgroup/cgroup.c) sets every
    root flag to what the remount names: one not named (nsdelegate, memory_localevents,
    memory_recursiveprot, ...) is cleared.  So the remount names them all again.
    """
    gone = set(drop) | {"rw", "ro", ""}
    out: list[str] = []
    for opt in [*super_options, *add]:
        if opt not in gone and opt not in out:
            out.append(opt)
    return tuple(out)


def _shown(entry: MountEntry, data: tuple[str, ...]) -> str:
    """The options tried, as mount(8) would take them: ``remount,nosuid,...,favordynmods``."""
    per_mount = [o for o in entry.mount_options if o in _MOUNT_FLAGS]
    return ",".join(["remount", *per_mount, *data])


def remount_fix(err: int | None, release: str | None = None) -> str:
    """What to do when the kernel refused a favordynmods remount with ``err``."""
    release = platform.release() if release is None else release
    if err in (errno.EPERM, errno.EACCES):
        return ("run the daemon as root (CAP_SYS_ADMIN in the initial user namespace; a "
                "container needs to be privileged); favordynmods also needs Linux 6.0+")
    if err == errno.EINVAL:
        v = kernel_version(release)
        if v is not None and v >= FAVORDYNMODS_SINCE:
            return (f"this kernel ({release}) should know favordynmods (Linux 6.0+): dmesg "
                    "names the option it refused (\"cgroup2: Unknown parameter\")")
        return (f"favordynmods needs Linux 6.0+ (this kernel: {release}) and root; on an older "
                "kernel set [placement] favordynmods = false")
    return f"favordynmods needs Linux 6.0+ (this kernel: {release}) and root"


def remount_cgroup2(path: str | os.PathLike[str], options: Iterable[str], *,
                    mountinfo: str | os.PathLike[str] = "/proc/self/mountinfo",
                    remount: Remount | None = None) -> MountEntry:
    """Remount the cgroup2 mount holding ``path`` with exactly the superblock ``options``
    (its per-mount flags unchanged); the entry as mountinfo shows it afterwards.
    ``remount`` defaults to :func:`sys_remount` (mount(2)); tests pass a fake.

    Raises :class:`MountError` (mount point, options tried, errno, fix) when the kernel
    refuses.  The caller checks that the options took: see :func:`favor_dynmods`.
    """
    entry = cgroup2_mount_of(path, mountinfo)
    data = merge_options(options)
    try:
        (remount or sys_remount)(entry.mount_point, remount_flags(entry), ",".join(data))
    except OSError as e:
        raise MountError(entry.mount_point, _shown(entry, data), err=e.errno,
                         fix=remount_fix(e.errno)) from e
    return cgroup2_mount_of(entry.mount_point, mountinfo)


def favor_dynmods(path: str | os.PathLike[str], *,
                  mountinfo: str | os.PathLike[str] = "/proc/self/mountinfo",
                  remount: Remount | None = None) -> bool:
    """Turn on ``favordynmods`` on the cgroup2 mount holding ``path``, keeping every other
    superblock option and the per-mount flags.

    Returns False (and does nothing) when it is already on, True when this call turned it
    on and mountinfo now shows it with every option shown before.  Raises
    :class:`MountError` when the kernel refuses (before 6.0: EINVAL, "Unknown parameter";
    not root: EPERM) or when mountinfo does not show the result afterwards.
    """
    entry = cgroup2_mount_of(path, mountinfo)
    if FAVORDYNMODS in entry.super_options:
        return False
    data = merge_options(entry.super_options, add=[FAVORDYNMODS])
    after = remount_cgroup2(entry.mount_point, data, mountinfo=mountinfo, remount=remount)
    lost = [o for o in entry.super_options if o not in after.super_options]
    if FAVORDYNMODS not in after.super_options:
        # apply_cgroup_root_flags changes the root flags only when called from the initial
        # cgroup namespace: elsewhere the remount succeeds and changes nothing
        raise MountError(entry.mount_point, _shown(entry, data),
                         problem="the kernel accepted the remount but mountinfo does not "
                                 f"show {FAVORDYNMODS} (now: {','.join(after.super_options)})",
                         fix="cgroup2 root options change only from the initial cgroup "
                             "namespace: run the daemon in the host's cgroup namespace "
                             "(a container needs cgroupns=host); it also needs Linux 6.0+ "
                             "and root")
    if lost:
        raise MountError(entry.mount_point, _shown(entry, data),
                         problem=f"the remount dropped {','.join(lost)} "
                                 f"(now: {','.join(after.super_options)})",
                         fix="remount by hand with every option it had (mount -o "
                             f"remount,{','.join(data)} {entry.mount_point})")
    return True
