"""Project quotas: how a container's writable layer is limited and measured (issue #19).

Every container's directory ``<state_dir>/containers/<id>/`` (its overlayfs ``upper/`` and
``work/``) gets a project id of its own, with the inherit flag, before either is created:
everything the container writes is charged to that project by the filesystem itself.
Then

* **measuring** is one ``quotactl_fd(Q_GETQUOTA, PRJQUOTA)`` per container and pass: the
  filesystem's own running total of the project's bytes (``dqb_curspace``), whatever the
  number of files: no tree walk, ever;
* **limiting** (``storage.max``) is the project's block hard limit: a write past it fails
  with ``EDQUOT`` ("Disk quota exceeded") in the container's process;
* the disk is shared: no per-container filesystem is sized up front.

This is what Docker's overlay2 (``--storage-opt size=`` on XFS) and CRI-O do, and what the
kubelet's ``LocalStorageCapacityIsolationFSQuotaMonitoring`` uses to measure emptyDirs
without ``du``.  It needs the filesystem holding ``containers/`` to have project quotas on:
XFS mounted with ``prjquota`` (``pquota``), or ext4 with the ``project`` and ``quota``
features (``mkfs.ext4 -O quota,project -E quotatype=prjquota``) mounted with ``prjquota``.
:mod:`governor.image.pool` makes such an ext4 on a sparse loop image when the state
directory's filesystem has none.

ext4 lets a process with ``CAP_SYS_RESOURCE`` past a hard limit (``fs/quota/dquot.c``,
``ignore_hardlimit``), and overlayfs writes to the upper layer with the credentials of the
process that *mounted* it; overlayfs takes ``CAP_SYS_RESOURCE`` out of those saved
credentials for exactly this reason (``fs/overlayfs/super.c``, "ovl: drop CAP_SYS_RESOURCE
from saved mounter's credentials"), so the limit holds for a container running as root
(tests/kernel/test_storage_kernel.py writes past it as root).

The kernel interfaces (``include/uapi/linux/quota.h``, ``include/uapi/linux/fs.h``):
``quotactl_fd(2)`` (Linux 5.14) takes any descriptor on the filesystem, so no block device
has to be found; ``FS_IOC_FSGETXATTR``/``FS_IOC_FSSETXATTR`` set a directory's project id
and ``FS_XFLAG_PROJINHERIT``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Final

from governor.errors import GovernorError

#: quotactl_fd(2): include/uapi/asm-generic/unistd.h (443 on every architecture since 5.14)
SYS_QUOTACTL_FD: Final = 443
PRJQUOTA: Final = 2
Q_GETFMT: Final = 0x800004
Q_GETINFO: Final = 0x800005
Q_GETQUOTA: Final = 0x800007
Q_SETQUOTA: Final = 0x800008
SUBCMDSHIFT: Final = 8
#: dqb_valid bits of struct if_dqblk
QIF_BLIMITS: Final = 1
#: the unit of dqb_bhardlimit (QIF_DQBLKSIZE)
QIF_DQBLKSIZE: Final = 1024
#: struct if_dqblk: 8 x __u64 then __u32 dqb_valid (padded to 72 bytes on 64-bit ABIs)
DQBLK: Final = struct.Struct("=QQQQQQQQI4x")
#: struct fsxattr: fsx_xflags, fsx_extsize, fsx_nextents, fsx_projid, fsx_cowextsize,
#: fsx_pad[8]
FSXATTR: Final = struct.Struct("=IIIII8s")
FS_IOC_FSGETXATTR: Final = 0x801C581F  # _IOR('X', 31, struct fsxattr)
FS_IOC_FSSETXATTR: Final = 0x401C5820  # _IOW('X', 32, struct fsxattr)
FS_XFLAG_PROJINHERIT: Final = 0x00000200
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class QuotaError(GovernorError, OSError):
    """A quota operation failed: the message names the operation, the path and the errno,
    and says what to change when the filesystem is the reason."""

    def __init__(self, err: int, what: str, path: str, hint: str = "") -> None:
        name = errno.errorcode.get(err, str(err))
        text = f"{what} on {path}: [{name}] {os.strerror(err)}"
        super().__init__(err, text + (f" ({hint})" if hint else ""))
        self.path = path


NO_PROJECT_QUOTA_HINT: Final = (
    "the filesystem has no project quota turned on: put the state directory's containers/ "
    "on XFS mounted with prjquota, or ext4 made with -O quota,project and mounted with "
    "prjquota; or set [images] pool_size so that governor makes such an ext4 on a loop "
    "image there")


def _qcmd(cmd: int) -> int:
    return (cmd << SUBCMDSHIFT) | PRJQUOTA


def _quotactl(fd: int, cmd: int, qid: int, buf: ctypes.Array[ctypes.c_char] | None) -> int:
    ret: int = _libc.syscall(ctypes.c_long(SYS_QUOTACTL_FD), ctypes.c_uint(fd),
                             ctypes.c_uint(_qcmd(cmd)), ctypes.c_uint(qid), buf)
    return 0 if ret == 0 else ctypes.get_errno()


def _hint(err: int) -> str:
    if err == errno.ENOSYS:
        return "quotactl_fd(2) needs Linux 5.14 or later"
    if err in (errno.ESRCH, errno.ENOTSUP, errno.EINVAL, errno.ENOENT, errno.ENOTTY):
        return NO_PROJECT_QUOTA_HINT
    return ""


def check_supported(fd: int, path: str) -> None:
    """Raise :class:`QuotaError` unless project quotas are on for the filesystem of
    ``fd`` (a descriptor of ``path``)."""
    buf = ctypes.create_string_buffer(4)
    err = _quotactl(fd, Q_GETFMT, 0, buf)
    if err:
        raise QuotaError(err, "quotactl_fd(Q_GETFMT, PRJQUOTA)", path, _hint(err))


def supported(path: str) -> bool:
    """Whether the filesystem of the directory ``path`` has project quotas on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        check_supported(fd, path)
    except QuotaError:
        return False
    finally:
        os.close(fd)
    return True


def set_project(path: str, project: int) -> None:
    """Give the directory ``path`` the project id ``project`` and the inherit flag, so
    that everything created below it belongs to the project."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        buf = bytearray(FSXATTR.size)
        try:
            fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf)
            xflags, extsize, nextents, _, cow, pad = FSXATTR.unpack(buf)
            fcntl.ioctl(fd, FS_IOC_FSSETXATTR,
                        FSXATTR.pack(xflags | FS_XFLAG_PROJINHERIT, extsize, nextents,
                                     project, cow, pad))
        except OSError as e:
            err = e.errno or 0
            raise QuotaError(err, f"set project id {project} (FS_IOC_FSSETXATTR)", path,
                             _hint(err)) from e
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class ProjectUsage:
    """One project's usage and limit as the filesystem keeps them."""

    project: int
    bytes: int
    inodes: int
    #: the block hard limit in bytes; None when there is none
    limit: int | None


def usage(fd: int, project: int, path: str) -> ProjectUsage:
    """The usage of ``project`` on the filesystem of ``fd`` (a descriptor of ``path``)."""
    buf = ctypes.create_string_buffer(DQBLK.size)
    err = _quotactl(fd, Q_GETQUOTA, project, buf)
    if err:
        raise QuotaError(err, f"quotactl_fd(Q_GETQUOTA, PRJQUOTA, {project})", path,
                         _hint(err))
    bhard, _bsoft, space, _ihard, _isoft, inodes, _bt, _it, _valid = DQBLK.unpack(buf.raw)
    return ProjectUsage(project, space, inodes, bhard * QIF_DQBLKSIZE if bhard else None)


def set_limit(fd: int, project: int, limit: int | None, path: str) -> None:
    """Set the block hard limit of ``project`` to ``limit`` bytes (rounded up to the
    quota's 1 KiB unit); ``None`` removes it."""
    blocks = 0 if limit is None else -(-limit // QIF_DQBLKSIZE)
    buf = ctypes.create_string_buffer(DQBLK.pack(blocks, 0, 0, 0, 0, 0, 0, 0, QIF_BLIMITS),
                                      DQBLK.size)
    err = _quotactl(fd, Q_SETQUOTA, project, buf)
    if err:
        what = "none" if limit is None else f"{limit} bytes"
        raise QuotaError(err, f"quotactl_fd(Q_SETQUOTA, PRJQUOTA, {project}): limit {what}",
                         path, _hint(err))
