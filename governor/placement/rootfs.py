"""The root filesystem of ``governor launch --image``: an overlayfs of the image's layers,
``pivot_root`` into it, a private ``/proc``, a minimal ``/dev``, a read-only ``/sys``.

Runs in the launched child, inside its new mount namespace (propagation already made
private by :func:`governor.placement.launch._child`, so no mount here reaches the host's
table) and, with a pid namespace, as its pid 1 (``/proc`` must be mounted from inside the
namespace it shows).  The sequence (:meth:`Rootfs.enter`):

1. ``mount -t overlay -o lowerdir=TOP:...:BASE,upperdir=U,workdir=W`` on the container's
   ``rootfs/`` (kernel ``Documentation/filesystems/overlayfs.rst``: the first lowerdir is
   the top layer; the whiteouts the store wrote are character devices 0/0 and the
   ``trusted.overlay.opaque`` xattr);
2. ``pivot_root(".", ".")`` from inside it, then ``umount2(".", MNT_DETACH)`` of the old
   root stacked on top (pivot_root(2), "NOTES": the trick runc uses; no put_old directory
   is left in the image);
3. inside the new root, so that a symlink of the image is resolved in the image: ``/dev``
   (a tmpfs with ``null zero full random urandom tty`` made with mknod, ``pts`` a new
   devpts instance, ``shm`` a tmpfs, the ``fd stdin stdout stderr ptmx`` symlinks),
   ``/proc`` (procfs of the pid namespace; ``/proc/sys``, ``sysrq-trigger``, ``irq``,
   ``bus``, ``fs`` bound read-only and ``kcore``, ``keys``, ``timer_list``,
   ``sched_debug`` covered with ``/dev/null``, as runc's default spec does: they are not
   namespaced and would reach the host's kernel), ``/sys`` (a fresh sysfs,
   read-only: it shows the container's own network devices, and a writable one would let
   the container change host-wide kernel and device settings; no cgroupfs under it);
4. the working directory (created when the image lacks it, as runc does), then the user
   and the environment from the image's ``/etc/passwd``, ``/etc/group`` and ``Env``.

A mount point the image has as a symlink or a file is refused (it would send a mount
somewhere else).  Every error is an :class:`RootfsError` naming the step, the path and the
errno.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from governor.errors import GovernorError
from governor.image import runconfig
from governor.placement.identity import User

MS_RDONLY: Final = 1
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_NOEXEC: Final = 8
MS_REMOUNT: Final = 32
MS_BIND: Final = 4096
MS_REC: Final = 0x4000
MNT_DETACH: Final = 2
#: asm/unistd_64.h and asm-generic/unistd.h (arm64, riscv64)
SYS_PIVOT_ROOT: Final = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203,
                         "s390x": 217}
#: the kernel takes mount options of at most one page
MAX_MOUNT_DATA: Final = 4095
#: /dev's device nodes: name -> (major, minor) (Documentation/admin-guide/devices.txt)
DEVICES: Final = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
                  "urandom": (1, 9), "tty": (5, 0)}
DEV_LINKS: Final = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
                    "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
                    "ptmx": "pts/ptmx"}
#: runc's default readonlyPaths and maskedPaths (those of a stock kernel)
PROC_READONLY: Final = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                        "/proc/sysrq-trigger")
PROC_MASKED: Final = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug")
#: the most an image's /etc/passwd or /etc/group may be (a symlink to /dev/zero must not
#: hang the launch)
MAX_ID_FILE: Final = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class RootfsError(GovernorError, OSError):
    """A step of the container's root filesystem failed: ``what`` names it and the path,
    ``errno`` the kernel's answer."""

    def __init__(self, err: int, what: str) -> None:
        name = errno.errorcode.get(err, str(err))
        super().__init__(err, f"{what}: [{name}] {os.strerror(err)}")


def _fs(p: str) -> bytes:
    return os.fsencode(p)


def mount(source: str, target: str, fstype: str | None, flags: int,
          data: str | None = None, *, what: str | None = None) -> None:
    ret = _libc.mount(_fs(source), _fs(target), fstype.encode() if fstype else None, flags,
                      data.encode() if data is not None else None)
    if ret != 0:
        desc = what or f"mount {fstype or 'bind'} {source} on {target}"
        if data:
            desc += f" (options {data})"
        raise RootfsError(ctypes.get_errno(), desc)


def umount2(target: str, flags: int) -> None:
    if _libc.umount2(_fs(target), flags) != 0:
        raise RootfsError(ctypes.get_errno(), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise RootfsError(errno.ENOSYS, f"pivot_root: no syscall number known for "
                          f"{os.uname().machine}")
    if _libc.syscall(nr, _fs(new_root), _fs(put_old)) != 0:
        raise RootfsError(ctypes.get_errno(), f"pivot_root({new_root!r}, {put_old!r})")


def overlay_options(lowers: Sequence[str], upper: str, work: str) -> str:
    """The overlayfs mount data: ``lowers`` top layer first.  A path the option parser
    would split (``,`` ``:`` ``\\``) is refused, as is data longer than a page."""
    for p in (*lowers, upper, work):
        bad = [c for c in ",:\\" if c in p]
        if bad or not os.path.isabs(p):
            raise RootfsError(errno.EINVAL, f"overlay layer path {p!r}: must be absolute "
                              "without ',', ':' or '\\' (overlayfs splits options on them); "
                              "choose a state_dir without them")
    data = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    if len(data) > MAX_MOUNT_DATA:
        raise RootfsError(errno.E2BIG, f"overlay mount options for {len(lowers)} layers are "
                          f"{len(data)} bytes, more than the kernel's {MAX_MOUNT_DATA}; use "
                          "a shorter state_dir or an image with fewer layers")
    return data


def mount_point(path: str, mode: int = 0o755) -> None:
    """``path`` (inside the new root) as a directory to mount on: created when missing;
    a symlink or a file of the image is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.mkdir(path, mode)
        except OSError as e:
            raise RootfsError(e.errno or 0, f"create the mount point {path}") from e
        return
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise RootfsError(errno.ENOTDIR, f"the image's {path} is {kind}: governor mounts "
                          "its own there and needs a directory")


def _read_id_file(path: str) -> str | None:
    """The image's ``/etc/passwd`` or ``/etc/group`` (None when it has none)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ID_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RootfsError(e.errno or 0, f"read the image's {path}") from e
    if len(data) > MAX_ID_FILE:
        raise RootfsError(errno.EFBIG, f"the image's {path} is larger than {MAX_ID_FILE} "
                          "bytes")
    return data.decode("utf-8", "replace")


def mount_proc() -> None:
    mount_point("/proc", 0o555)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for p in PROC_READONLY:
        if not os.path.exists(p):
            continue
        mount(p, p, None, MS_BIND | MS_REC)
        mount(p, p, None, MS_BIND | MS_REC | MS_REMOUNT | MS_RDONLY,
              what=f"remount {p} read-only")
    for p in PROC_MASKED:
        if os.path.isfile(p):
            mount("/dev/null", p, None, MS_BIND, what=f"cover {p} with /dev/null")


def mount_dev() -> None:
    mount_point("/dev")
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
    for name, (major, minor) in DEVICES.items():
        path = f"/dev/{name}"
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(path, 0o666)  # noqa: S103 (the standard mode; mknod honours the umask)
        except OSError as e:
            raise RootfsError(e.errno or 0, f"mknod {path} c {major} {minor}") from e
    for name, target in DEV_LINKS.items():
        try:
            os.symlink(target, f"/dev/{name}")
        except OSError as e:
            raise RootfsError(e.errno or 0, f"symlink /dev/{name} -> {target}") from e
    mount_point("/dev/pts")
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=0620,gid=5")
    mount_point("/dev/shm", 0o1777)
    mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          "mode=1777,size=65536k")


def mount_sys() -> None:
    mount_point("/sys", 0o555)
    mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


@dataclass(frozen=True)
class Rootfs:
    """What the child needs to build the container's root and resolve its user/env."""

    image: str                      # name:tag, for messages
    lowers: tuple[str, ...]         # layer directories, top layer first
    upper: str
    work: str
    merged: str                     # the mount point (the container's / once pivoted)
    workdir: str                    # absolute, inside the container
    user: str                       # config.User or --user ("" = root)
    user_source: str                # "config.User" or "--user", for messages
    image_env: Mapping[str, str] = field(default_factory=dict)
    explicit_env: Mapping[str, str] = field(default_factory=dict)
    caller_env: Mapping[str, str] = field(default_factory=dict)

    def mount_root(self) -> None:
        """Steps 1 and 2: the overlay, then pivot_root into it."""
        mount("overlay", self.merged, "overlay", 0,
              overlay_options(self.lowers, self.upper, self.work),
              what=f"mount the overlay of image {self.image} on {self.merged}")
        try:
            os.chdir(self.merged)
        except OSError as e:
            raise RootfsError(e.errno or 0, f"chdir {self.merged}") from e
        pivot_root(".", ".")
        umount2(".", MNT_DETACH)  # the old root, now stacked on the new one
        os.chdir("/")

    def enter(self) -> tuple[User, dict[str, str]]:
        """The whole sequence (module doc); returns the user to run as and the command's
        environment.  The caller then drops to the user and execs."""
        self.mount_root()
        mount_dev()
        mount_proc()  # after /dev: its masked files are covered with /dev/null
        mount_sys()
        try:
            os.makedirs(self.workdir, 0o755, exist_ok=True)
            os.chdir(self.workdir)
        except OSError as e:
            raise RootfsError(e.errno or 0, f"working directory {self.workdir} (config."
                              f"WorkingDir of {self.image})") from e
        user = runconfig.resolve_user(self.image, self.user, _read_id_file("/etc/passwd"),
                                      _read_id_file("/etc/group"), source=self.user_source)
        env = runconfig.container_env(self.caller_env, user, self.image_env,
                                      self.explicit_env)
        return user, env
