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


class InstanceLock:
    def __init__(self, state_dir: str | os.PathLike[str], subtree: str) -> None:
        self.path = Path(state_dir) / (subtree.replace("/", "_") + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
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
                    if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                        self.path.unlink()
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
