"""Group lifecycle: create with controllers enabled top-down, remove, move processes.

As in containerd's ``cgroup2``: controllers are enabled in every ancestor's
``cgroup.subtree_control`` from the root down before a child can use them, and a failed
create removes what it made.  As in runc: only errno-specific retries (EBUSY on rmdir with
backoff for a group whose last task is still exiting, EINVAL on cgroup.procs for a task
still being created, EINTR).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Iterable

from governor.accel import load
from governor.cgroupfs.files import CgroupFS, explain
from governor.cgroupfs.inotify import DIR_CHANGES, Inotify
from governor.cgroupfs.layout import Layout, as_layout
from governor.cgroupfs.managed import DELEGATE_XATTRS, MANAGED_CONTROLLERS
from governor.cgroupfs.names import check_relpath, display_path
from governor.cgroupfs.parse import parse_flat_keyed, parse_list, parse_pids
from governor.errors import CgroupError, GroupBusy, GroupGone

#: keep_warm's writer thread in C (governor/cgroupfs/_keepwarm.c), or None
_warm = load("governor.cgroupfs._keepwarm")
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


#: the extended attribute on every directory governor makes (issue #15), its value the
#: subtree of the instance that made it: a plan removes a directory only when it carries
#: its own subtree here (never a runtime's scope, another instance's subtree, or what an
#: operator made), as oomd (``trusted.oomd_*``) and systemd (``trusted.delegate``) mark
#: cgroups.  ``trusted.*`` needs CAP_SYS_ADMIN; a governor without it (a delegated,
#: unprivileged subtree) writes ``user.*`` (cgroup2 takes both since Linux 5.7).
MANAGED_XATTR = "trusted.governor.managed"
MANAGED_XATTR_USER = "user.governor.managed"


def mark_managed(fs: CgroupFS, rel: str, owner: str) -> None:
    """Mark ``rel`` as made by the governor of subtree ``owner`` (:data:`MANAGED_XATTR`);
    CgroupError when neither xattr can be set."""
    try:
        fd = fs.open(rel, None, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise fs._error("mark", rel, None, e, owner) from e
    try:
        try:
            os.setxattr(fd, MANAGED_XATTR, owner.encode())
        except PermissionError:  # not CAP_SYS_ADMIN: the user namespace of xattrs
            os.setxattr(fd, MANAGED_XATTR_USER, owner.encode())
    except OSError as e:
        raise CgroupError("mark", str(fs.path(rel)), None, e.errno or 0, value=owner,
                          hint=f"cannot set the {MANAGED_XATTR} (or {MANAGED_XATTR_USER}) "
                               "extended attribute: a kernel before 5.7, or no permission; "
                               "governor will never remove this directory") from e
    finally:
        os.close(fd)


def _xattr(fs: CgroupFS, rel: str, names: Iterable[str]) -> bytes | None:
    """The value of the first of ``names`` that ``rel`` carries (None: none; a directory
    that cannot be opened carries none)."""
    try:
        fd = fs.open(rel, None, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for name in names:
            try:
                return os.getxattr(fd, name)
            except OSError as e:
                if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    continue
                raise fs._error("read", rel, None, e) from e
        return None
    finally:
        os.close(fd)


def managed_by(fs: CgroupFS, rel: str) -> str | None:
    """The subtree whose governor made ``rel`` (its :data:`MANAGED_XATTR`), or None."""
    value = _xattr(fs, rel, (MANAGED_XATTR, MANAGED_XATTR_USER))
    return None if value is None else value.decode("utf-8", "replace")


def delegated_here(fs: CgroupFS, rel: str) -> bool:
    """Whether ``rel`` itself was delegated (``trusted.delegate``/``user.delegate`` is 1,
    as systemd marks a unit with Delegate=yes): what is below it is not governor's."""
    value = _xattr(fs, rel, DELEGATE_XATTRS)
    return value is not None and value.strip() in (b"1", b"yes", b"true")


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


def managed_groups(fs: CgroupFS, subtree: Layout | str) -> list[str]:
    """Tenants and their groups below ``subtree`` (a layout, or the subtree of the
    ``cgroupfs`` layout), as logical paths (``tenant``, ``tenant/group``), tenants first;
    see :meth:`Layout.groups`."""
    return as_layout(subtree).groups(fs)


class GroupLister:
    """:func:`managed_groups` for a caller that lists at every pass (the sampler): the
    listing is kept while inotify reports nothing made, removed or renamed in the subtree
    or a tenant, so an unchanged tree costs one read(2) a pass instead of listing every
    directory (on cgroup2 a listing also walks each group's interface files).

    The watches are armed *before* each listing, so a change made while listing is seen
    at the next call; a full event queue (IN_Q_OVERFLOW), a removed or renamed directory
    and any other event make the next call list again.  Without inotify (no instances
    left, a kernel without it) every call lists.  A watch is added through
    ``/proc/self/fd`` of a directory opened beneath the cgroup root, like every other
    access.  Not thread-safe: one caller.
    """

    def __init__(self, fs: CgroupFS, subtree: Layout | str) -> None:
        self.fs = fs
        self.layout = as_layout(subtree)
        self.subtree = self.layout.subtree
        self.relists = 0
        self._cache: list[str] | None = None
        self._ino: Inotify | None
        try:
            self._ino = Inotify()
        except OSError:
            self._ino = None

    def close(self) -> None:
        if self._ino is not None:
            self._ino.close()
            self._ino = None

    def _watch(self, rel: str) -> bool:
        assert self._ino is not None
        try:
            fd = self.fs.open(rel, None, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return False
        try:
            self._ino.add(f"/proc/self/fd/{fd}", DIR_CHANGES)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    def list(self) -> list[str]:
        if self._ino is None:
            return self.layout.groups(self.fs)
        if self._cache is not None and not self._ino.read():
            return list(self._cache)
        self._ino.read()  # what is queued is about to be looked at
        self.relists += 1
        if not self._watch(self.subtree):
            self._cache = None  # no subtree (yet): nothing to watch, list each time
            return self.layout.groups(self.fs)
        out: list[str] = []
        complete = True
        for d in self.fs.children(self.subtree):
            t = self.layout.tenant_of_dir(d)
            if t is None:
                continue
            complete &= self._watch(f"{self.subtree}/{d}")
            out.append(t)
            with contextlib.suppress(CgroupError):
                out.extend(f"{t}/{g}" for g in self.layout.groups_of_tenant(self.fs, t, d))
        self._cache = out if complete else None
        return list(out)


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


def not_ours(fs: CgroupFS, rel: str, owner: str) -> str | None:
    """Why ``rel`` or a directory below it is not governor's to remove (None: all of
    them carry ``owner``'s mark and none was delegated)."""
    if managed_by(fs, rel) != owner:
        return (f"/{display_path(rel)} was not created by governor (no {MANAGED_XATTR} "
                f"= {owner})")
    if delegated_here(fs, rel):
        return (f"/{display_path(rel)} is delegated (trusted.delegate): what is below it "
                "is not governor's")
    for child in fs.children(rel):
        why = not_ours(fs, f"{rel}/{child}", owner)
        if why is not None:
            return why
    return None


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


def own_cgroup(proc_file: str = "/proc/thread-self/cgroup") -> str:
    """The cgroup2 path of the calling thread, relative to the mount (``""``: the root),
    from its ``0::`` line (as the kernel wrote it: not checked against the policy's name
    rules; :meth:`CgroupFS.open_reported` opens it)."""
    try:
        with open(proc_file) as f:
            text = f.read()
    except OSError as e:
        raise CgroupError("read", proc_file, None, e.errno or 0,
                          hint="cannot read this thread's cgroup") from e
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip().strip("/")
    raise CgroupError("read", proc_file, None, errno.ENOENT,
                      hint="no cgroup2 line (0::) in it: is a cgroup2 hierarchy mounted?")


class MigrationWarmer:
    """No-op migrations that keep the kernel ready for the next move.

    Every write of a pid to ``cgroup.procs`` (or of a tid to ``cgroup.threads``) takes the
    kernel's ``cgroup_threadgroup_rwsem`` for writing.  Without the mount option
    ``favordynmods`` that is a percpu rwsem whose readers (fork, exit) take a per-CPU fast
    path, and a writer first switches them to the slow path, which waits for an RCU grace
    period (``rcu_sync_enter``): measured on Linux 6.1, a move took 16 ms of wall time for
    under a millisecond of work.  The switch back happens one grace period after the last
    writer leaves, and a writer that comes before then does not wait at all.

    :meth:`touch` is such a writer that changes nothing: it writes the calling thread's tid
    to the ``cgroup.threads`` of the cgroup that thread is in.  The kernel takes the rwsem,
    finds the thread already there and moves nothing.  Repeated at an interval shorter than a
    grace period after a move, it keeps the next moves from waiting (what ``favordynmods``
    does for good, only while moves are coming).  It can never move the daemon: should the
    thread be elsewhere by now, ``cgroup.threads`` refuses to move a thread to another
    resource domain (EOPNOTSUPP), and the path is looked up once more.

    The rwsem taken for writing holds up forks and exits on the whole host for as long as
    the write takes (microseconds: nothing is migrated), as every move does.

    Two ways to write: :meth:`touch` from the calling thread, or, with the C accelerator,
    :meth:`start_background` once and :meth:`moved` after each move: a POSIX thread of
    ``_keepwarm`` (one per process) then writes its own tid every interval until the
    deadline, without the GIL, and :meth:`stats` reports its writes and refusals.
    """

    def __init__(self, fs: CgroupFS, *, proc_file: str = "/proc/thread-self/cgroup") -> None:
        self.fs = fs
        self.proc_file = proc_file
        self.rel: str | None = None
        self._fd = -1
        self.writes = 0
        self.background = False  # the C thread writes (start_background)
        self._retried = False
        self._writes_at_retry = 0
        self._refused_seen = 0
        self._base: tuple[int, int] = (0, 0)
        #: time.monotonic() of the end of the window, and of the last move or no-op write
        self.until = 0.0
        self.last_write = 0.0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.rel = None

    # -- background mode: a thread of the C accelerator writes ---------------------------
    def start_background(self, interval: float, *, _retry: bool = False) -> bool:
        """Hand the writes to a POSIX thread of the C accelerator (it never takes the GIL);
        :meth:`moved` then opens a window.  False without the accelerator (the caller
        writes with :meth:`touch`); CgroupError when the cgroup cannot be opened."""
        if _warm is None:
            return False
        fd = self._open()  # every thread of this process is in this cgroup
        rel = self.rel
        try:
            _warm.warm_start(fd, max(1, int(interval * 1e9)))
        finally:
            self.close()  # the thread keeps its own dup
        self.rel = rel  # where it writes
        if not _retry:  # counts from here (the thread is one per process)
            self._base = _warm.warm_stats()[:2]
            self._refused_seen = self._base[1]
            self._retried = False
        self.background = True
        return True

    def moved(self, until: float) -> None:
        """A move was just made: write until ``until`` (time.monotonic seconds)."""
        self.until = until
        self.last_write = time.monotonic()
        if _warm is not None and self.background:
            _warm.warm_until(int(until * 1e9))

    def stats(self, interval: float) -> tuple[int, int, CgroupError | None]:
        """The background thread's ``(writes, refused, error)``: ``error`` is set once per
        new refusal (None otherwise).  A write refused because this process's cgroup
        changed (EOPNOTSUPP, ENODEV, ENOENT) is first retried at the cgroup read again, as
        :meth:`touch` does; only a refusal there is an error."""
        if _warm is None or not self.background:
            return self.writes, 0, None
        writes, refused, err, tid = _warm.warm_stats()
        result = (writes - self._base[0], refused - self._base[1])
        if writes > self._writes_at_retry:
            self._retried = False  # it wrote since: a later refusal gets its retry
        new = refused > self._refused_seen
        self._refused_seen = refused
        if not new or not err:
            return (*result, None)
        if err in (errno.EOPNOTSUPP, errno.ENODEV, errno.ENOENT) and not self._retried:
            self._retried = True
            self._writes_at_retry = writes
            try:
                self.start_background(interval, _retry=True)  # read again, a new fd
            except CgroupError as e:
                return (*result, e)
            if self.until > time.monotonic():  # the refusal closed the window: reopen
                _warm.warm_until(int(self.until * 1e9))
            return (*result, None)
        return (*result, CgroupError(
            "write", str(self.fs.root / (self.rel or "")), "cgroup.threads", err,
            value=str(tid), hint=explain("write", "cgroup.threads", err)))

    def stop_background(self) -> None:
        if _warm is not None and self.background:
            _warm.warm_stop()
        self.background = False

    def _error(self, e: OSError, rel: str, value: str | None = None) -> CgroupError:
        err = e.errno or 0
        return CgroupError("write", str(self.fs.root / rel), "cgroup.threads", err,
                           value=value, hint=explain("write", "cgroup.threads", err))

    def _open(self) -> int:
        rel = self.rel = own_cgroup(self.proc_file)
        try:
            self._fd = self.fs.open_reported(rel, "cgroup.threads", os.O_WRONLY)
        except OSError as e:
            self.rel = None
            raise self._error(e, rel) from e
        return self._fd

    def touch(self) -> None:
        """One no-op write (this thread into its own cgroup); CgroupError when the kernel
        refuses it twice (the second time after the thread's cgroup was looked up again)."""
        data = str(threading.get_native_id()).encode()
        for last in (False, True):
            fd = self._fd if self._fd >= 0 else self._open()
            try:
                os.write(fd, data)
                self.writes += 1
                self.last_write = time.monotonic()
                return
            except OSError as e:
                rel = self.rel or ""
                self.close()  # moved or removed since: look again
                if last or e.errno not in (errno.EOPNOTSUPP, errno.ENODEV, errno.ENOENT):
                    raise self._error(e, rel, data.decode()) from e
