"""The daemon's own safety: one instance per subtree, strict file modes, self-protection.

* :class:`InstanceLock`: an exclusive ``flock`` on ``<state_dir>/<subtree>.lock`` holding
  the owner's pid; a second start names the holder.  The daemon removes the file when it
  stops, and when its start fails.
* :func:`check_strict_modes`: running as root, a configuration or policy file (or the
  policy directory) that someone other than root can change is refused, as sshd's
  StrictModes does: whoever can write the policy could otherwise steer a root daemon.
* :func:`protect_self`: the governor moves itself into its own cgroup outside the tenants'
  subtree, with ``memory.min`` and a high ``cpu.weight``, and sets ``oom_score_adj`` to
  -1000 when root, so a tenant's fork bomb or memory blow-up does not starve it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from pathlib import Path

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.names import check_relpath
from governor.cgroupfs.tree import create
from governor.cgroupfs.tree import move as move_to
from governor.errors import CgroupError, GovernorError

log = logging.getLogger("governor.security")


class AlreadyRunning(GovernorError):
    """Another governor holds the lock of this subtree."""


class UnsafeFile(GovernorError):
    """A configuration or policy file that others than root could change (root only)."""


class UnsafeStateDir(GovernorError):
    """The state directory, one of its parents or a file in it could be changed by
    someone else than governor's user (or root), or is a symlink: refused."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        super().__init__(f"state directory {path}: {problem}; governor refuses a state "
                         f"directory that others could plant files in (fix: {fix})")


def _trusted_owner(uid: int, euid: int) -> bool:
    return uid in (0, euid)


class StateDir:
    """``state_dir`` opened safely, for the files governor writes there as root (the
    instance lock, the spool): issue #15 item 11, "a symlink planted there makes root
    truncate any file".

    The path is walked from ``/`` one component at a time with ``O_DIRECTORY|O_NOFOLLOW``
    (a symlink on the way, such as ``/var/run``, is followed only when root or governor's
    user owns it), each directory judged on its open descriptor (``fstat``: no race
    between the check and the use) as sshd's StrictModes and sudo do: owned by root or by
    governor's user, and not writable by group or others -- except a parent that is
    sticky and root's (``/tmp``: others cannot rename or remove what is not theirs, and
    the next component is checked in turn).  The state directory itself must not be
    writable by others at all; missing components are created (mode 0700) beneath a
    checked parent.  Files are then opened *relative to the directory's descriptor* with
    ``O_NOFOLLOW``: a symlink there is refused, and so is a file that is not a regular
    file of ours with one link (a planted hard link would make root truncate its target).
    """

    def __init__(self, path: str | os.PathLike[str], *, euid: int | None = None,
                 create: bool = True) -> None:
        self.euid = os.geteuid() if euid is None else euid
        self.path = os.path.abspath(os.fspath(path))
        self.fd = -1
        try:
            self.fd = self._walk(create)
        except OSError as e:
            where = e.filename or self.path
            raise UnsafeStateDir(
                self.path, f"cannot be opened or created: "
                f"[{errno.errorcode.get(e.errno or 0, e.errno)}] {e.strerror}"
                + (f" ({where})" if where != self.path else ""),
                f"create {self.path} owned by root, mode 0700, or choose another state_dir"
                ) from e

    def _judge(self, fd: int, path: str, *, last: bool) -> None:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not _trusted_owner(st.st_uid, self.euid):
            raise UnsafeStateDir(path, f"owned by uid {st.st_uid}, not root or uid "
                                 f"{self.euid}", f"chown root {path} && chmod go-w {path}, "
                                 f"or choose another state_dir")
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            sticky_parent = not last and st.st_mode & stat.S_ISVTX and st.st_uid == 0
            if not sticky_parent:
                raise UnsafeStateDir(path, f"writable by group or others (mode {mode:04o})",
                                     f"chmod go-w {path}")

    def _walk(self, create: bool) -> int:
        """The directory's descriptor, every component checked (see the class docs).  A
        symlink on the way is followed only when it belongs to root or governor's user
        (its directory was checked already, so nobody else could have planted it)."""
        todo = [p for p in self.path.split("/") if p]
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        here = "/"
        links = 0
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._judge(fd, here, last=not todo)
            while todo:
                name = todo.pop(0)
                if name == ".":
                    continue
                if name == "..":
                    here = os.path.dirname(here)
                    nxt = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    os.close(fd)
                    fd = nxt
                    continue
                path = os.path.join(here, name)
                try:
                    nxt = os.open(name, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(name, 0o700, dir_fd=fd)
                        nxt = os.open(name, flags, dir_fd=fd)
                    except OSError as e:
                        raise OSError(e.errno, e.strerror, path) from None
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise OSError(e.errno, e.strerror, path) from None
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise UnsafeStateDir(path, "not a directory",
                                             f"remove {path} or choose another state_dir"
                                             ) from None
                    links += 1
                    if not _trusted_owner(st.st_uid, self.euid) or links > 40:
                        raise UnsafeStateDir(
                            path, f"a symlink owned by uid {st.st_uid}, not root or uid "
                            f"{self.euid}" if links <= 40 else "too many symlinks",
                            f"remove {path} or choose another state_dir") from None
                    target = os.readlink(name, dir_fd=fd)
                    if target.startswith("/"):
                        os.close(fd)
                        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                        here = "/"
                    todo[:0] = [p for p in target.split("/") if p]
                    continue
                os.close(fd)
                fd = nxt
                here = path
                self._judge(fd, here, last=not todo)
        except BaseException:
            os.close(fd)
            raise
        self.path = here
        return fd

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """``os.open`` of the file ``name`` in the state directory, never through a
        symlink; an existing file must be a regular file of ours with one link."""
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a file name: {name!r}")
        where = os.path.join(self.path, name)
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeStateDir(where, "a symlink, which governor never follows in its "
                                     "state directory", f"remove {where}") from None
            raise
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif not _trusted_owner(st.st_uid, self.euid):
            problem = f"owned by uid {st.st_uid}, not root or uid {self.euid}"
        elif st.st_nlink != 1:
            problem = f"has {st.st_nlink} hard links (another name for some other file)"
        if problem:
            os.close(fd)
            raise UnsafeStateDir(where, problem, f"remove {where}")
        return fd

    def stat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def exists(self, name: str) -> bool:
        try:
            self.stat(name)
        except FileNotFoundError:
            return False
        return True

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.close()


class InstanceLock:
    def __init__(self, state_dir: str | os.PathLike[str], subtree: str) -> None:
        self.path = Path(state_dir) / (subtree.replace("/", "_") + ".lock")
        self._fd: int | None = None
        self._dir: StateDir | None = None

    def acquire(self) -> None:
        d = self._dir = self._dir or StateDir(self.path.parent)
        while True:
            fd = d.open(self.path.name, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise AlreadyRunning(
                        f"another governor (pid {holder}) is running for this subtree: it "
                        f"holds {self.path}; stop it first (one instance per subtree)"
                        ) from None
                raise
            # the holder removes the file when it stops (release(remove=True)): a lock
            # taken on a file it just unlinked is no lock; open the path again
            try:
                same = os.path.samestat(os.fstat(fd), d.stat(self.path.name))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self, *, remove: bool = False) -> None:
        """Drop the lock; ``remove``: and the lock file (unlinked while still held, so
        no other process can have it in between)."""
        if self._fd is not None:
            if remove:
                with contextlib.suppress(OSError):
                    d = self._dir
                    if d is not None and os.path.samestat(os.fstat(self._fd),
                                                          d.stat(self.path.name)):
                        d.unlink(self.path.name)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _unsafe_reason(st: os.stat_result) -> str | None:
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_strict_modes(*paths: str | os.PathLike[str], euid: int | None = None) -> None:
    """Refuse (as root) files and directories that others could change.

    For a directory, the directory itself and every ``*.toml`` in it are checked; for a
    file, the file and its directory.  Symlinks are judged by what they point to, and the
    link's directory too.  Does nothing when not running as root.
    """
    if (os.geteuid() if euid is None else euid) != 0:
        return
    problems: list[str] = []
    for p in map(Path, paths):
        targets: list[Path] = []
        if p.is_dir():
            targets = [p, *sorted(p.glob("*.toml"))]
        elif p.exists():
            targets = [p, p.resolve().parent]
        for t in targets:
            try:
                st = t.stat()
            except OSError:
                continue
            why = _unsafe_reason(st)
            if why:
                fix = f"chown root {t} && chmod go-w {t}"
                problems.append(f"{t}: {why}; governor runs as root and refuses files that "
                                f"others can change (fix: {fix})")
    if problems:
        raise UnsafeFile("\n".join(problems))


def protect_self(fs: CgroupFS, self_cgroup: str, *, memory_min: int, cpu_weight: int,
                 pid: int | None = None, move: bool = True) -> list[str]:
    """Move this process into ``self_cgroup`` (relative to the mount) with protections.

    With ``move`` False (the systemd driver: the daemon stays in its unit, protected by the
    unit's own properties) only ``oom_score_adj`` is lowered.  Returns what could not be
    done (each a readable reason); never raises for a missing permission: a governor in a
    delegated, unprivileged subtree runs without it.
    """
    pid = os.getpid() if pid is None else pid
    check_relpath(self_cgroup)
    left: list[str] = []
    if move:
        try:
            create(fs, self_cgroup, ["cpu", "memory", "pids"])
            fs.write(self_cgroup, "memory.min", str(memory_min))
            fs.write(self_cgroup, "cpu.weight", str(cpu_weight))
            move_to(fs, self_cgroup, pid)
        except CgroupError as e:
            left.append(f"own cgroup {self_cgroup}: {e}")
    if os.geteuid() == 0:
        try:
            Path(f"/proc/{pid}/oom_score_adj").write_text("-1000")
        except OSError as e:
            left.append(f"oom_score_adj: {e.strerror}")
    else:
        left.append("oom_score_adj not lowered: not root")
    return left
