"""Where containers' writable layers live, and how each group's are counted (issue #19).

``<state_dir>/containers/`` holds each container's directory (``upper/``, ``work/``,
``rootfs/``: :mod:`governor.placement.container`).  That directory must be on a filesystem
with project quotas (:mod:`governor.image.quota`): each **group** gets one project id, and
every container of the group is created inside it, so

* the group's writable-layer bytes are one ``quotactl`` per group and pass, the
  filesystem's own total (no tree walk);
* ``storage.max`` of the group is the project's hard limit: the group's containers together
  never write more (a write past it fails with ``EDQUOT``), and a policy change reaches
  running containers at the next pass (:mod:`governor.metering.storage`);
* an upper layer kept with ``launch --keep`` stays in its group's project: it still takes
  the disk, so it still counts, until it is removed.

**The pool.** When the filesystem of ``containers/`` has no project quota (the common case:
a stock ext4 root mounted without ``prjquota``) and ``[images] pool_size`` is set, governor
makes one itself, once: a sparse file ``<state_dir>/containers.ext4`` of that size,
``mkfs.ext4 -O quota,project -E quotatype=prjquota`` (e2fsprogs), loop-mounted on
``containers/`` with ``prjquota,nodev`` (``nodev``: a device node a container makes in its
upper layer cannot be opened through it).  Sparse: the size is a ceiling, the disk is used
as containers write.  Later launches (and the daemon at start, after a reboot) mount the
existing file again.  An existing non-empty ``containers/`` is never mounted over (it would
hide what is there).

**Project ids** are kept in ``containers/projects.json`` (group path -> id), allocated
under a lock from ``[images] project_base`` upwards, skipping any id whose project still
holds bytes or inodes (another user of the range, or a directory left behind).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from governor.config import Config
from governor.errors import GovernorError
from governor.image import quota
from governor.image.errors import describe_os_error
from governor.image.fsutil import write_json

#: the default first project id (XFS and ext4 take 32-bit ids; this leaves the small ids
#: operators use in /etc/projid alone)
PROJECT_BASE: Final = 0x4F560000
#: how many ids governor may take from the base
PROJECT_SPAN: Final = 1 << 20
POOL_FILE: Final = "containers.ext4"
PROJECTS_FILE: Final = "projects.json"
#: the tools the pool needs, on PATH
MKFS: Final = "mkfs.ext4"
MOUNT: Final = "mount"
#: the smallest pool: ext4's journal and quota files need a few MiB
MIN_POOL: Final = 16 << 20
TOOL_TIMEOUT: Final = 120.0


class WritableError(GovernorError, OSError):
    """The writable-layer storage cannot be set up or used: the message names the path,
    the errno or the tool's output, and what to change."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True)
class Pool:
    """The containers' directory of one state directory, and its pool settings."""

    state_dir: str
    #: bytes of the loop-mounted ext4 governor may make; None: never make one
    pool_size: int | None = None
    project_base: int = PROJECT_BASE

    @classmethod
    def from_config(cls, cfg: Config) -> Pool:
        """The pool of ``cfg``'s state directory, with its ``[images]`` settings."""
        return cls(cfg.state_dir, cfg.image_pool_size, cfg.image_project_base)

    @property
    def containers(self) -> str:
        return os.path.join(os.path.abspath(self.state_dir), "containers")

    @property
    def image_file(self) -> str:
        return os.path.join(os.path.abspath(self.state_dir), POOL_FILE)

    @property
    def projects_file(self) -> str:
        return os.path.join(self.containers, PROJECTS_FILE)

    # -- set-up ----------------------------------------------------------------------------
    def ready(self) -> bool:
        """Whether ``containers/`` exists on a filesystem with project quotas on."""
        return quota.supported(self.containers)

    def ensure(self, *, create: bool = True) -> None:
        """Make ``containers/`` usable (module doc): nothing when its filesystem has project
        quotas; else mount the pool (made first when missing and ``create``)."""
        try:
            os.makedirs(self.containers, 0o700, exist_ok=True)
        except OSError as e:
            raise WritableError(e.errno or 0, f"cannot create {self.containers}: "
                                f"{describe_os_error(e)}") from e
        if self.ready():
            return
        with self._lock():
            if self.ready():  # another launch mounted it meanwhile
                return
            if self.pool_size is None:
                fstype = _fstype(self.containers)
                raise WritableError(errno.ENOTSUP, (
                    f"{self.containers} is on {fstype} without project quotas, so a "
                    "container's writable layer could be neither limited nor metered: "
                    "set [images] pool_size (e.g. \"20G\") and governor makes a "
                    "loop-mounted ext4 with project quotas there, or mount an XFS "
                    "(prjquota) or ext4 (-O quota,project; prjquota) on it yourself"))
            if not os.path.exists(self.image_file):
                if not create:
                    return
                self._make()
            self._mount()
        if not self.ready():
            raise WritableError(errno.ENOTSUP, f"{self.image_file} is mounted on "
                                f"{self.containers} but project quotas are not on there "
                                f"(check its mount options: {_mount_options(self.containers)})")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        path = os.path.join(os.path.abspath(self.state_dir), ".containers.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise WritableError(e.errno or 0, f"cannot open the lock file {path}: "
                                f"{describe_os_error(e)}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _make(self) -> None:
        size = self.pool_size or 0
        if size < MIN_POOL:
            raise WritableError(errno.EINVAL, f"[images] pool_size {size} bytes is too small "
                                f"for the pool; give at least {MIN_POOL >> 20}M")
        tmp = self.image_file + ".new"
        try:
            with open(tmp, "wb") as f:
                f.truncate(size)  # sparse: blocks are used as containers write
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise WritableError(e.errno or 0, f"cannot create the pool file {tmp}: "
                                f"{describe_os_error(e)}") from e
        try:
            _run([MKFS, "-q", "-F", "-m", "0", "-O", "quota,project",
                  "-E", "quotatype=prjquota,lazy_itable_init=1,lazy_journal_init=1,"
                  "nodiscard", "-L", "governor-pool", tmp], f"make the pool {tmp}")
            os.rename(tmp, self.image_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _mount(self) -> None:
        try:
            left = os.listdir(self.containers)
        except OSError as e:
            raise WritableError(e.errno or 0, f"cannot list {self.containers}: "
                                f"{describe_os_error(e)}") from e
        if left:
            raise WritableError(errno.ENOTEMPTY, (
                f"{self.containers} holds {', '.join(sorted(left)[:5])}: governor will not "
                f"mount its pool {self.image_file} over it (that would hide them); move them "
                "away first"))
        _run([MOUNT, "-t", "ext4", "-o", "loop,prjquota,nodev", self.image_file,
              self.containers], f"mount the pool {self.image_file} on {self.containers}")

    # -- projects --------------------------------------------------------------------------
    def projects(self) -> dict[str, int]:
        """Group path -> project id, as allocated so far."""
        try:
            with open(self.projects_file, "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise WritableError(getattr(e, "errno", 0) or errno.EINVAL,
                                f"{self.projects_file}: cannot be read ({e})") from e
        if not isinstance(doc, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in doc.items()):
            raise WritableError(errno.EINVAL, f"{self.projects_file}: not a JSON object of "
                                "group path -> project id; it is written atomically, so "
                                "something else wrote it")
        return doc

    def project_for(self, group: str) -> int:
        """The project id of ``group`` (``tenant/group``), allocated on first use."""
        with self._lock():
            known = self.projects()
            if group in known:
                return known[group]
            taken = set(known.values())
            fd = self._open()
            try:
                for pid in range(self.project_base, self.project_base + PROJECT_SPAN):
                    if pid in taken:
                        continue
                    u = quota.usage(fd, pid, self.containers)
                    if u.bytes or u.inodes:
                        continue  # someone else's, or left behind: never shared
                    known[group] = pid
                    write_json(self.projects_file, known)
                    return pid
            finally:
                os.close(fd)
        raise WritableError(errno.ENOSPC, f"no free project id in {self.project_base}.."
                            f"{self.project_base + PROJECT_SPAN - 1} ({self.projects_file})")

    def _open(self) -> int:
        try:
            return os.open(self.containers, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise WritableError(e.errno or 0, f"cannot open {self.containers}: "
                                f"{describe_os_error(e)}") from e

    def set_limit(self, project: int, limit: int | None) -> None:
        fd = self._open()
        try:
            quota.set_limit(fd, project, limit, self.containers)
        finally:
            os.close(fd)

    def measurer(self) -> Callable[[str], int | None] | None:
        """A function of a group's path to its writable layers' bytes now, as the daemon's
        pass measures them (0: a group without a project; None: a tenant, or unreadable);
        None when ``containers/`` has no project quotas (nothing to measure)."""
        if not self.ready():
            return None

        def measure(path: str) -> int | None:
            if "/" not in path:
                return None  # a tenant: its groups carry the bytes
            try:
                projects = self.projects()
                if path not in projects:
                    return 0
                u = self.usage({path: projects[path]}).get(path)
            except WritableError:
                return None
            return None if u is None else u.bytes

        return measure

    def usage(self, groups: Mapping[str, int]) -> dict[str, quota.ProjectUsage]:
        """The usage of each group's project (groups whose read fails are left out)."""
        fd = self._open()
        try:
            out = {}
            for g, pid in groups.items():
                with contextlib.suppress(quota.QuotaError):
                    out[g] = quota.usage(fd, pid, self.containers)
            return out
        finally:
            os.close(fd)


def _run(argv: list[str], what: str) -> None:
    exe = shutil.which(argv[0])
    if exe is None:
        raise WritableError(errno.ENOENT, f"cannot {what}: {argv[0]} is not on PATH "
                            "(install e2fsprogs and util-linux)")
    try:
        done = subprocess.run([exe, *argv[1:]], capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WritableError(getattr(e, "errno", 0) or errno.ETIMEDOUT,
                            f"cannot {what}: {e}") from e
    if done.returncode != 0:
        out = (done.stderr or done.stdout).strip().replace("\n", " ")[:500]
        raise WritableError(errno.EIO, f"cannot {what}: {argv[0]} exited "
                            f"{done.returncode}: {out}")


def _mount_entry(path: str) -> tuple[str, str]:
    """The filesystem type and options of the mount holding ``path`` (mountinfo)."""
    best = ("unknown", "")
    best_len = -1
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                parts, rparts = left.split(), right.split()
                if len(parts) < 6 or len(rparts) < 3:
                    continue
                mp = parts[4].replace("\\040", " ")
                if (real == mp or real.startswith(mp.rstrip("/") + "/")) and \
                        len(mp) >= best_len:
                    best, best_len = (rparts[0], f"{parts[5]},{rparts[2]}"), len(mp)
    except OSError:
        pass
    return best


def _fstype(path: str) -> str:
    return _mount_entry(path)[0]


def _mount_options(path: str) -> str:
    return _mount_entry(path)[1]
