"""Which groups may have drifted since the last reconcile, from inotify(7) (issue #16).

A reconcile that read every managed file of every group (openat2, read, close, about four
files a group) was 40% of the daemon's CPU at 1,000 groups.  The kernel says when a file
changes: every write(2) to a cgroup interface file, whoever makes it (an operator, a
runtime, systemd on someone's behalf), is an ``IN_MODIFY`` event on the group's directory
watch, named after the file; a group directory removed ends its watch.  So a reconcile
plans only the groups those events name.

What no event can show (a write lost to a queue overflow, a group without a watch) is
caught by a **rolling sweep**: each watched group has a slot among ``FULL_EVERY``
(governor/rounds.py, which the sampler's slow tier uses too), and each
reconcile also plans the groups of the next slot, so every group is read once every
``FULL_EVERY`` reconciles, a ``FULL_EVERY``-th of them at a time (at 10,000 groups a whole
sweep in one reconcile read 40,000 files at once and made the sampling passes beside it
late: issue #16).  The reconcile that starts a round also plans what a whole plan does
beyond the groups (the IO cost model, groups to remove).  After an overflow, or before
anything is watched, a reconcile plans everything at once.  Events about files the policy
does not manage (``memory.events``, ``cgroup.events`` and the like, which the kernel
notifies on its own) are dropped here.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable, Mapping

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.inotify import (
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_IGNORED,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)
from governor.rounds import Rounds

log = logging.getLogger("governor.enforce")

#: every group is planned once every this many reconciles (the interval's 30 s: every
#: 2 hours), a FULL_EVERY-th of them each time.  It was 20 (10 minutes), then 60 (30
#: minutes): at 1,000 groups the sweep's 17 groups a reconcile (each group's directory,
#: managed files and mark opened and read: 5 to 9 ms a group in the TCG VM) were still
#: 50 ms of the daemon's CPU a 10 s pass, 6% of it, more than anything else beyond the
#: passes (governor_job_cpu_seconds_total, issue #16).  The sweep is only the backstop
#: for what no event shows: every write(2) to an interface file is an event, an overflow
#: plans everything, a group without a watch is planned at every reconcile
FULL_EVERY = 240

_MASK = IN_MODIFY | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED


class DriftWatch:
    """Group directories watched for writes to the files the policy manages."""

    def __init__(self, fs: CgroupFS, *, full_every: int = FULL_EVERY) -> None:
        self.fs = fs
        self.full_every = full_every
        self.inotify: Inotify | None = Inotify()
        #: wd -> (group, its cgroup path); group -> wd
        self._by_wd: dict[int, tuple[str, str]] = {}
        self._wd: dict[str, int] = {}
        #: group -> the interface files the policy manages there
        self._files: dict[str, frozenset[str]] = {}
        #: groups that changed, or could not be watched (planned until watched)
        self._dirty: set[str] = set()
        self._unwatched: set[str] = set()
        self._full = True   # nothing watched yet: the first reconcile plans everything
        self._takes = 0
        #: each group's slot in the rolling sweep (planned when ``_takes % full_every``
        #: is it; governor/rounds.py)
        self._rounds = Rounds(max(1, full_every))

    def watch(self, groups: Mapping[str, tuple[str, Iterable[str]]], *,
              planned_all: bool = False, partial: bool = False) -> None:
        """Watch ``groups`` (group -> (its cgroup path, managed files)) from now on;
        groups no longer named are dropped, unless ``partial`` (these are some of the
        groups watched: the others stay as they are).  ``planned_all``: every group was planned
        just now (a whole plan), so the next reconcile need not plan them all again; a
        write in the instant between that plan's read and a new watch is restored by the
        rolling sweep."""
        ino = self.inotify
        if ino is None:
            return
        if planned_all and self._full:
            self._full = False
            self._dirty.clear()
            self._takes = 1
        if not partial:
            for rel in [r for r in self._wd if r not in groups]:
                ino.remove(self._wd.pop(rel))
            for rel in [r for r in self._files if r not in groups]:
                del self._files[rel]
                self._rounds.drop(rel)
            self._unwatched &= set(groups)
        for rel, (path, files) in groups.items():
            self._files[rel] = frozenset(files)
            self._rounds.add(rel)
            if rel in self._wd:
                continue
            try:
                wd = ino.add(str(self.fs.path(path)), _MASK)
            except OSError as e:
                # gone (the next plan makes it), or no watch left (ENOSPC: planned every
                # time instead, logged once)
                if e.errno == errno.ENOSPC and not self._unwatched:
                    log.warning("inotify watches exhausted: groups without one are "
                                "reconciled by reading every time (raise "
                                "fs.inotify.max_user_watches)", extra={"group": rel})
                self._unwatched.add(rel)
                continue
            self._wd[rel] = wd
            self._by_wd[wd] = (rel, path)
            self._unwatched.discard(rel)

    def take(self) -> tuple[set[str] | None, bool]:
        """What the reconcile now plans, and forget it: ``(groups, sweep)``, groups None
        for every group; ``sweep``: also what a whole plan does beyond the groups (at the
        start of each round of the rolling sweep, and with every whole plan)."""
        ino = self.inotify
        if ino is None:
            return None, True
        for wd, mask, name in ino.read_named():
            if mask & IN_Q_OVERFLOW:
                self._full = True
                continue
            hit = self._by_wd.get(wd)
            if hit is None:
                continue
            rel = hit[0]
            if mask & _GONE:
                self._dirty.add(rel)
                if mask & IN_IGNORED:
                    self._by_wd.pop(wd, None)
                    if self._wd.get(rel) == wd:
                        del self._wd[rel]
                        self._unwatched.add(rel)   # watched again after the next apply
                continue
            if name in self._files.get(rel, ()):
                self._dirty.add(rel)
        if self._full:
            self._full = False
            self._dirty.clear()
            self._takes = 1   # a whole plan: the sweep's round starts again after it
            return None, True
        turn = self._takes % self._rounds.count
        self._takes += 1
        out = self._dirty | self._unwatched | self._rounds.members(turn)
        self._dirty = set()
        return out, turn == 0

    def mark(self, groups: Iterable[str]) -> None:
        """Plan these groups at the next take too (their writes failed)."""
        self._dirty.update(groups)

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None
