"""Group lifecycle: create with controllers enabled top-down, remove, move processes.

As in containerd's ``cgroup2``: controllers are enabled in every ancestor's
``cgroup.subtree_control`` from the root down before a child can use them, and a failed
create removes what it made.  As in runc: only errno-specific retries (EBUSY on rmdir with
backoff for a group whose last task is still exiting, EINVAL on cgroup.procs for a task
still being created, EINTR).

Beside it: the ownership marks a create sets and a remove checks (:mod:`.ownership`), the
listing of a subtree's groups (:mod:`.listing`) and the no-op migrations that keep moves
fast (:mod:`.keepwarm`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Iterable

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.keepwarm import MigrationWarmer, _warm, own_cgroup
from governor.cgroupfs.listing import GroupLister, managed_groups
from governor.cgroupfs.managed import MANAGED_CONTROLLERS
from governor.cgroupfs.names import check_relpath
from governor.cgroupfs.ownership import MANAGED_XATTR, managed_by, mark_managed, not_ours
from governor.cgroupfs.parse import parse_flat_keyed, parse_list, parse_pids
from governor.errors import CgroupError, GroupBusy, GroupGone

#: with the names that moved to .keepwarm, .listing and .ownership that the tests and the
#: benchmarks import from here
__all__ = ["MANAGED_XATTR", "GroupLister", "MigrationWarmer", "MissingControllers",
           "ProcsWriter", "_warm", "ancestors", "controllers", "create", "enable_controllers",
           "managed_by", "managed_groups", "move", "own_cgroup", "populated", "procs",
           "procs_below", "remove", "subtree_control"]

log = logging.getLogger("governor.cgroupfs")

class MissingControllers(CgroupError):
    """Controllers asked for are not available in a group's ``cgroup.controllers``."""


def ancestors(rel: str) -> list[str]:
    """``"a/b/c"`` -> ``["", "a", "a/b"]``: the groups above ``rel``, root first."""
    parts = check_relpath(rel).split("/") if rel else []
    return ["/".join(parts[:i]) for i in range(len(parts))]


def controllers(fs: CgroupFS, rel: str) -> set[str]:
    """Controllers available to ``rel`` (its ``cgroup.controllers``)."""
    return set(parse_list(fs.read(rel, "cgroup.controllers")))


def subtree_control(fs: CgroupFS, rel: str) -> set[str]:
    """Controllers ``rel`` enables for its children."""
    return set(parse_list(fs.read(rel, "cgroup.subtree_control")))


def enable_controllers(fs: CgroupFS, rel: str, wanted: Iterable[str]) -> list[str]:
    """Enable ``wanted`` in ``rel``'s ``cgroup.subtree_control``; returns those it added."""
    want = sorted(set(wanted))
    have_avail = controllers(fs, rel)
    missing = [c for c in want if c not in have_avail]
    if missing:
        raise MissingControllers(
            "enable", str(fs.path(rel)), "cgroup.subtree_control", errno.ENOENT,
            value=" ".join("+" + c for c in missing),
            hint=f"controllers {', '.join(missing)} are not in this group's "
                 f"cgroup.controllers (available: {' '.join(sorted(have_avail)) or 'none'}); "
                 "on a hybrid host they are held by cgroup v1")
    enabled = subtree_control(fs, rel)
    add = [c for c in want if c not in enabled]
    if add:
        fs.write(rel, "cgroup.subtree_control", " ".join("+" + c for c in add))
    return add


def create(fs: CgroupFS, rel: str, controllers_wanted: Iterable[str] = MANAGED_CONTROLLERS,
           *, enable_for_children: bool = False, owner: str | None = None) -> list[str]:
    """Create ``rel`` and any missing ancestors with ``controllers_wanted`` usable in it.

    Controllers are enabled top-down through each ancestor's ``cgroup.subtree_control``
    (the root of ``fs`` included).  With ``enable_for_children`` they are also enabled in
    ``rel`` itself (an inner node such as a tenant).  Returns the groups it created; if a
    step fails, the groups created by this call are removed again before the error is
    raised.  With ``owner`` (the governor's subtree) each directory made is marked with it
    right after its mkdir (:func:`mark_managed`; a mark that cannot be set is logged: the
    directory then is never removed by governor).
    """
    want = list(controllers_wanted)
    made: list[str] = []

    def mkdir(path: str) -> None:
        fs.mkdir(path)
        made.append(path)
        if owner is not None:
            try:
                mark_managed(fs, path, owner)
            except CgroupError as e:
                log.warning("group made but not marked as governor's", extra={
                    "path": e.path, "errno": e.errno, "error": str(e)})

    try:
        for anc in ancestors(rel):
            if anc and not fs.exists(anc):
                mkdir(anc)
            if want:
                enable_controllers(fs, anc, want)
        if not fs.exists(rel):
            mkdir(rel)
        if enable_for_children and want:
            enable_controllers(fs, rel, want)
    except BaseException:
        for g in reversed(made):
            with contextlib.suppress(CgroupError):  # best effort: the original error matters
                fs.rmdir(g)
        raise
    return made


def populated(fs: CgroupFS, rel: str) -> bool:
    """Whether ``rel`` or any descendant has live processes (``cgroup.events``)."""
    return parse_flat_keyed(fs.read(rel, "cgroup.events"), "cgroup.events").get(
        "populated", 0) == 1


def procs(fs: CgroupFS, rel: str) -> list[int]:
    return parse_pids(fs.read(rel, "cgroup.procs"))


def procs_below(fs: CgroupFS, rel: str, *, depth: int = 8) -> list[int]:
    """The processes of ``rel`` and of every group below it (a systemd slice holds none
    itself: they are in its scopes), ``depth`` levels down at most.  A child gone while
    listed is skipped."""
    out = procs(fs, rel)
    if depth > 0:
        for child in fs.children(rel):
            with contextlib.suppress(GroupGone):
                out.extend(procs_below(fs, f"{rel}/{child}", depth=depth - 1))
    return out


def remove(fs: CgroupFS, rel: str, *, owner: str | None = None, retries: int = 8,
           backoff: float = 0.01) -> None:
    """Remove ``rel`` and its (empty) child groups, deepest first.

    Refuses a populated group (:class:`GroupBusy`): governor never kills a tenant's
    processes to remove a group.  With ``owner`` (the governor's subtree) it also refuses
    when ``rel`` or a directory below it is not marked as made by that governor, or was
    delegated (:func:`not_ours`): what a runtime or an operator made is never removed.  An
    EBUSY from rmdir on an unpopulated group (the last task is still exiting) is retried
    with exponential backoff.
    """
    check_relpath(rel)
    if not rel:
        raise ValueError("refusing to remove the governor's root")
    if not fs.exists(rel):
        raise GroupGone("rmdir", str(fs.path(rel)), None, errno.ENOENT,
                        hint="the group does not exist")
    if populated(fs, rel):
        raise GroupBusy("rmdir", str(fs.path(rel)), None, errno.EBUSY,
                        hint="the group still has processes; governor does not remove a "
                             "populated group (move or stop them first)")
    if owner is not None and (why := not_ours(fs, rel, owner)) is not None:
        raise GroupBusy("rmdir", str(fs.path(rel)), None, errno.EBUSY,
                        hint=f"{why}; governor removes only the directories it made")
    for child in fs.children(rel):
        remove(fs, f"{rel}/{child}", retries=retries, backoff=backoff)
    delay = backoff
    for attempt in range(retries + 1):
        try:
            fs.rmdir(rel)
            return
        except GroupBusy:
            if attempt == retries:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


class ProcsWriter:
    """Moves processes by writing to a ``cgroup.procs`` fd kept open per group: the
    placement path of a busy host writes one pid per exec, and keeping the fd saves the
    openat2 path walk and the close of each move (each write(2) is its own migration).

    A group removed since its fd was opened answers ENODEV; the fd is dropped and the path
    opened once more (a group re-created under the same name gets the new one).  At most
    ``max_fds`` fds are kept (all are closed when the limit is hit: the working set of
    groups that receive processes is usually small).  Same retries and errors as
    :func:`move`.  Thread-safe.
    """

    def __init__(self, fs: CgroupFS, *, max_fds: int = 256) -> None:
        self.fs = fs
        self.max_fds = max_fds
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def _fd(self, rel: str, value: str) -> int:
        fd = self._fds.get(rel)
        if fd is None:
            if len(self._fds) >= self.max_fds:
                for old in self._fds.values():
                    os.close(old)
                self._fds.clear()
            try:
                fd = self.fs.open(rel, "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
            except OSError as e:
                raise self.fs._error("write", rel, "cgroup.procs", e, value) from e
            self._fds[rel] = fd
        return fd

    def _drop(self, rel: str) -> None:
        fd = self._fds.pop(rel, None)
        if fd is not None:
            os.close(fd)

    def move(self, rel: str, pid: int, *, retries: int = 3) -> None:
        value = str(pid)
        data = value.encode()
        delay = 0.001
        reopened = False
        with self._lock:
            attempt = 0
            while True:
                fd = self._fd(rel, value)
                try:
                    os.write(fd, data)
                    return
                except InterruptedError:
                    continue
                except OSError as e:
                    if e.errno in (errno.ENODEV, errno.ENOENT) and not reopened:
                        self._drop(rel)  # the group went away: try its path once more
                        reopened = True
                        continue
                    if e.errno == errno.EINVAL and attempt < retries:
                        attempt += 1
                        time.sleep(delay)
                        delay *= 4
                        continue
                    if e.errno in (errno.ENODEV, errno.ENOENT):
                        self._drop(rel)
                    raise self.fs._error("write", rel, "cgroup.procs", e, value) from e


def move(fs: CgroupFS, rel: str, pid: int, *, retries: int = 3) -> None:
    """Move process ``pid`` (all its threads) into ``rel`` by writing ``cgroup.procs``.

    EINVAL for a task that is still being created is retried a few times (runc does the
    same); ESRCH (the process exited) is raised as is, for the caller to count.
    """
    delay = 0.001
    for attempt in range(retries + 1):
        try:
            fs.write(rel, "cgroup.procs", str(pid))
            return
        except CgroupError as e:
            if e.errno != errno.EINVAL or attempt == retries:
                raise
            time.sleep(delay)
            delay *= 4
