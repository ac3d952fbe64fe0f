"""The one choke point through which governor opens, reads and writes a cgroup filesystem.

Modelled on runc's ``fs2``/``file.go``: every path is resolved *below* the governor's root
directory with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)``
(Linux 5.6+), so no name, however hostile, and no symlink planted in the tree can make a
write land outside it.  Where openat2 is missing (ENOSYS, old kernels or seccomp), the
fallback walks the path one component at a time with ``O_NOFOLLOW``.

Errors carry the path, the file, the value written and the errno, are raised ``from`` the
``OSError``, and explain the cases an operator meets (see :func:`explain`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

from governor.cgroupfs import accel
from governor.cgroupfs.names import check_relpath, display_path
from governor.errors import CgroupError, GroupBusy, GroupGone, NotCgroup2Error

# the optional C accelerator (see reader.py): a listing without an object per file
_fast = accel.fastread()
_c_subdirs: Callable[[int], list[str]] | None = _fast.subdirs if _fast is not None else None

CGROUP2_SUPER_MAGIC = 0x63677270

# openat2(2): struct open_how and RESOLVE_* flags (include/uapi/linux/openat2.h)
_SYS_OPENAT2 = 437  # same number on every architecture (added after the syscall table merge)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_openat2_ok: bool | None = None  # None: not tried yet
_lock = threading.Lock()


def _openat2(dirfd: int, path: str, flags: int) -> int:
    """openat2 confined beneath ``dirfd``; raises OSError like os.open."""
    global _openat2_ok
    if _openat2_ok is not False:
        how = _OpenHow(flags | os.O_CLOEXEC, 0,
                       RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how),
                           ctypes.sizeof(how))
        if fd >= 0:
            _openat2_ok = True
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM) or _openat2_ok:
            raise OSError(err, os.strerror(err), path)
        with _lock:
            _openat2_ok = False  # seccomp filters answer EPERM/ENOSYS: use the fallback
    return _walk_open(dirfd, path, flags)


def _walk_open(dirfd: int, path: str, flags: int) -> int:
    """Fallback: open each component with O_NOFOLLOW relative to the previous one."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise OSError(errno.EXDEV, "path escapes the cgroup root", path)
    if not parts:
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=dirfd)
    cur = dirfd
    try:
        for p in parts[:-1]:
            nxt = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=cur)
            if cur != dirfd:
                os.close(cur)
            cur = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
    finally:
        if cur != dirfd:
            os.close(cur)


def statfs_type(path: str | os.PathLike[str]) -> int:
    """f_type of statfs(2) for ``path`` (os.statvfs does not expose it)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    # f_type is the first member (__fsword_t, a long) on every Linux ABI
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


def explain(op: str, file: str | None, err: int) -> str | None:
    """What an errno means for this operation, in an operator's words (cgroup-v2.rst)."""
    if err in (errno.EACCES, errno.EPERM):
        return ("permission denied: run as root, or delegate this subtree to the governor "
                "(systemd Delegate=yes, or chown of the subtree and its cgroup.procs, "
                "cgroup.subtree_control, cgroup.threads)")
    if file == "cgroup.subtree_control":
        if err == errno.EBUSY:
            return ("no-internal-process rule: this group has processes of its own, so it "
                    "cannot enable controllers for children; move them into a leaf group")
        if err == errno.ENOENT:
            return ("controller not available here: it is not in this group's "
                    "cgroup.controllers (enable it in the parent's cgroup.subtree_control "
                    "first, or it is held by cgroup v1)")
        if err == errno.EINVAL:
            return "unknown controller name, or '+'/'-' missing"
        if err == errno.EOPNOTSUPP:
            return "this controller cannot be enabled here (threaded subtree?)"
    if file == "cgroup.procs":
        if err == errno.EBUSY:
            return ("no-internal-process rule: the target has controllers enabled for its "
                    "children (cgroup.subtree_control), so it cannot hold processes; "
                    "use a leaf group")
        if err == errno.ESRCH:
            return "no such process: it exited before the move"
        if err == errno.EINVAL:
            return ("the kernel refused this task: a kernel thread, a task still being "
                    "created, or a threaded-mode mismatch")
        if err == errno.EOPNOTSUPP:
            return "the target group is in an invalid (threaded) state for processes"
    if op == "rmdir" and err == errno.EBUSY:
        return "the group still has processes or child groups"
    if op == "mkdir" and err == errno.EEXIST:
        return "the group already exists"
    if err == errno.EINVAL:
        return "the kernel rejected the value: out of range or malformed for this file"
    if err == errno.ERANGE:
        return "the kernel rejected the value: out of range for this file"
    if err == errno.EOPNOTSUPP:
        return ("not supported: this kernel or this group cannot take this setting "
                "(e.g. a limit on the root group)")
    if err == errno.ENOENT and file is not None:
        return ("no such interface file: its controller is not enabled for this group "
                "(parent's cgroup.subtree_control) or the kernel lacks it")
    if err == errno.ENODEV:
        return "the group was removed"
    if err == errno.E2BIG:
        return "value too long"
    return None


class CgroupFS:
    """A cgroup v2 tree rooted at ``root`` (the governor's own subtree, or a fake for tests).

    Every path argument is relative to ``root`` ("" is the root itself) and is checked with
    :func:`~governor.cgroupfs.names.check_relpath` before use.  ``verify=True`` refuses a
    root that is not on a cgroup2 filesystem (statfs CGROUP2_SUPER_MAGIC); tests on a fake
    tree in a temp dir pass ``verify=False``.
    """

    def __init__(self, root: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.root = Path(root)
        if verify:
            try:
                ftype = statfs_type(self.root)
            except OSError as e:
                raise NotCgroup2Error(f"{self.root}: cannot statfs: {e.strerror}") from e
            if ftype != CGROUP2_SUPER_MAGIC:
                raise NotCgroup2Error(
                    f"{self.root} is not on a cgroup2 filesystem (statfs f_type "
                    f"{ftype:#x}, expected CGROUP2_SUPER_MAGIC {CGROUP2_SUPER_MAGIC:#x})")
        try:
            self._rootfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise CgroupError("open", str(self.root), None, e.errno or 0,
                              hint=explain("open", None, e.errno or 0)) from e

    # -- paths ------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / check_relpath(rel) if rel else self.root

    @staticmethod
    def _rel(rel: str, file: str | None = None) -> str:
        check_relpath(rel)
        if file is not None and ("/" in file or file in ("", ".", "..")):
            raise ValueError(f"bad interface file name {file!r}")
        parts = [p for p in (rel, file) if p]
        return "/".join(parts) if parts else "."

    def close(self) -> None:
        if self._rootfd >= 0:
            os.close(self._rootfd)
            self._rootfd = -1

    def __enter__(self) -> CgroupFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, op: str, rel: str, file: str | None, e: OSError,
               value: str | None = None) -> CgroupError:
        err = e.errno or 0
        cls: type[CgroupError] = CgroupError
        if err == errno.ENODEV or (err == errno.ENOENT and not self.exists(rel)):
            cls = GroupGone
        elif op == "rmdir" and err == errno.EBUSY:
            cls = GroupBusy
        hint = explain(op, file, err)
        if cls is GroupGone and err == errno.ENOENT:
            hint = "the group does not exist"
        # a name the kernel reported may hold bytes that are not UTF-8 (issue #15)
        return cls(op, display_path(str(self.path(rel))), file, err, value=value, hint=hint)

    # -- low level: file descriptors ---------------------------------------------------
    def open(self, rel: str, file: str | None, flags: int) -> int:
        """An fd for ``rel/file`` (or the group dir when file is None), beneath the root."""
        return _openat2(self._rootfd, self._rel(rel, file), flags)

    def open_reported(self, path: str, file: str, flags: int) -> int:
        """An fd for ``path/file`` where ``path`` is a cgroup the kernel reported (a
        ``/proc/PID/cgroup`` line, relative to the mount): any name the kernel allows, not
        only the names a policy may use, but never a ``..`` component, and beneath the root
        like every open (openat2 RESOLVE_BENEATH)."""
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts) or "/" in file or file in ("", ".", ".."):
            raise OSError(errno.EXDEV, "path escapes the cgroup root", f"{path}/{file}")
        return _openat2(self._rootfd, "/".join([*parts, file]), flags)

    def exists(self, rel: str) -> bool:
        try:
            fd = _openat2(self._rootfd, self._rel(rel), os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return False
        os.close(fd)
        return True

    # -- reads and writes ------------------------------------------------------------
    def read(self, rel: str, file: str) -> str:
        try:
            fd = self.open(rel, file, os.O_RDONLY)
        except OSError as e:
            raise self._error("read", rel, file, e) from e
        try:
            chunks = []
            while True:
                b = os.read(fd, 65536)
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks).decode()
        except OSError as e:
            raise self._error("read", rel, file, e) from e
        finally:
            os.close(fd)

    def write(self, rel: str, file: str, value: str) -> None:
        """Write ``value`` to ``rel/file`` in one write(2) call, as the kernel expects.
        An empty value is written as a newline, as ``echo > file`` and systemd do: the
        kernel strips it (an empty ``cpuset.cpus`` is "the parent's"), where a write of
        no bytes may never reach the file's handler."""
        data = value.encode() or b"\n"
        try:
            fd = self.open(rel, file, os.O_WRONLY)
        except OSError as e:
            raise self._error("write", rel, file, e, value) from e
        try:
            while True:
                try:
                    os.write(fd, data)
                    return
                except InterruptedError:  # EINTR: retry, the write had no effect
                    continue
        except OSError as e:
            raise self._error("write", rel, file, e, value) from e
        finally:
            os.close(fd)

    def mkdir(self, rel: str) -> None:
        parent, _, name = check_relpath(rel).rpartition("/")
        try:
            pfd = self.open(parent, None, os.O_PATH | os.O_DIRECTORY)
            try:
                os.mkdir(name, 0o755, dir_fd=pfd)
            finally:
                os.close(pfd)
        except OSError as e:
            raise self._error("mkdir", rel, None, e) from e

    def rmdir(self, rel: str) -> None:
        parent, _, name = check_relpath(rel).rpartition("/")
        if not name:
            raise ValueError("refusing to remove the governor's root")
        try:
            pfd = self.open(parent, None, os.O_PATH | os.O_DIRECTORY)
            try:
                os.rmdir(name, dir_fd=pfd)
            finally:
                os.close(pfd)
        except OSError as e:
            raise self._error("rmdir", rel, None, e) from e

    def children(self, rel: str) -> list[str]:
        """Names of the child groups of ``rel`` (sub-directories), sorted."""
        try:
            fd = self.open(rel, None, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise self._error("list", rel, None, e) from e
        try:
            if _c_subdirs is not None:
                return _c_subdirs(fd)
            return scandir_subdirs(fd)
        finally:
            os.close(fd)

    def inode(self, rel: str) -> int:
        """The group directory's inode number: on cgroup2 it is the cgroup id (a new one
        for every incarnation of a group with the same name)."""
        try:
            fd = self.open(rel, None, os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            raise self._error("stat", rel, None, e) from e
        try:
            return os.fstat(fd).st_ino
        finally:
            os.close(fd)


def scandir_subdirs(fd: int) -> list[str]:
    """Sorted names of the sub-directories of the directory open at ``fd`` (the
    pure-Python listing; the C accelerator's ``subdirs`` gives the same)."""
    names = []
    for entry in os.scandir(fd):
        if entry.is_dir(follow_symlinks=False):
            names.append(entry.name)
    return sorted(names)
