"""Which groups the OOM watcher watches: discovery, inotify watches, adoption, PSI triggers.

The part of :class:`~governor.oom.watch.OomWatcher` that keeps its set of groups: the
subtree's and the tenants' directories are watched for new groups (a full rescan is the
safety net), each new incarnation's ``memory.events`` is watched (or, past
``fs.inotify.max_user_watches``, left to polling or to the sampling passes), and a group
first seen is adopted: its counters are compared with the totals already stored for it,
the difference marked ``missed_while_down`` when found at start-up.  Groups whose policy
sets ``oom.pressure`` thresholds on the 10 s averages get a PSI trigger on their
``memory.pressure`` (Documentation/accounting/psi.rst, "Userspace monitors").
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from collections.abc import Iterable

from governor.cgroupfs.inotify import IN_CREATE, IN_MOVED_TO, IN_ONLYDIR
from governor.errors import CgroupError
from governor.oom.events import COUNTER_KINDS, OomEvent
from governor.oom.recorder import EventRecorder
from governor.oom.watched import Watched
from governor.policy.model import OomSettings, PressureKey

log = logging.getLogger("governor.oom")

#: PSI trigger window limit (kernel/sched/psi.c: WINDOW_MAX_US = 10 s)
PSI_WINDOW_US = 10_000_000


def pressure_trigger(settings: OomSettings) -> str | None:
    """The PSI trigger for the 10 s thresholds of ``settings`` (the tighter one if both)."""
    keyed = dict(settings.pressure)
    best: tuple[int, str] | None = None
    for key, line in ((PressureKey.SOME_AVG10, "some"), (PressureKey.FULL_AVG10, "full")):
        pct = keyed.get(key)
        if pct is not None:
            stall = max(1, round(pct / 100 * PSI_WINDOW_US))
            if best is None or stall < best[0]:
                best = (stall, line)
    return None if best is None else f"{best[1]} {best[0]} {PSI_WINDOW_US}"


class GroupWatches(EventRecorder):
    """The watched groups and their PSI triggers, for :class:`~governor.oom.watch.OomWatcher`."""

    # -- discovery ------------------------------------------------------------------------
    def discover(self) -> list[str]:
        try:
            return self.layout.groups(self.fs)
        except CgroupError:
            return []

    def rescan(self, *, startup: bool = False) -> None:
        """Pick up new groups and incarnations, drop removed ones.

        A group whose ``memory.events`` is watched is not looked at again (issue #16: the
        inode of every group every 2 s was a third of the daemon's CPU at 1,000 groups):
        its directory's removal ends the watch (``IN_IGNORED``), and the path is then
        checked here like a new one, so a group made again under the same name is a new
        incarnation all the same."""
        self._rescan_due = False
        self._watch_dirs(None)
        live = set(self.discover())
        # a tenant made since: watch its directory, then list again (what was made in
        # between is seen by this listing, what comes after by the watch)
        if self._watch_dirs(p for p in live if "/" not in p):
            live = set(self.discover())
        for path in [p for p in self._groups if p not in live]:
            self._forget(path)
        found: list[tuple[Watched, dict[str, int]]] = []
        for path in sorted(live):
            known = self._groups.get(path)
            if known is not None and known.wd is not None:
                continue
            try:
                cid = self.fs.inode(self._rel(path))
            except CgroupError:
                continue
            w = self._groups.get(path)
            if w is not None and w.cgroup_id == cid:
                continue
            if w is not None:
                self._forget(path)  # re-created under the same name: a new incarnation
            seen = self._watch_new(path, cid)
            if seen is not None:
                found.append(seen)
        adopted = self._adopt(found, startup=startup)
        if self._unwatchable:
            log.warning("cannot watch memory.events of some groups: their OOM events are "
                        + ("seen with each sampling pass" if self.unwatched_from_samples
                           else "polled") + " (raise fs.inotify.max_user_watches)",
                        extra={"groups": self._unwatchable,
                               "error": self._unwatchable_error})
            self._unwatchable = 0
        # every group when the settings changed, else only those adopted now
        self._arm_triggers(None if self._settings_changed or startup else adopted)

    def _watch_dirs(self, tenants: Iterable[str] | None) -> bool:
        """Watch the subtree's directory (``tenants`` None) or these tenants' for new
        subdirectories; True if a watch was added."""
        if self.inotify is None:
            return False
        have = set(self._dir_wds.values())
        added = False
        for path in ([""] if tenants is None else tenants):
            if path in have:
                continue
            try:
                where = self.fs.path(self.subtree if not path else self._rel(path))
                wd = self.inotify.add(str(where), IN_CREATE | IN_MOVED_TO | IN_ONLYDIR)
            except (OSError, CgroupError):
                continue   # not there (yet): the safety rescan looks again
            self._dir_wds[wd] = path
            added = True
        return added

    def _watch_new(self, path: str, cid: int) -> tuple[Watched, dict[str, int]] | None:
        """Watch a new incarnation's ``memory.events`` and read it (None: no memory
        controller there, or gone already)."""
        w = Watched(path, cid, {})
        if self.inotify is not None:
            # watch before reading, so no change between the read and the watch is lost
            try:
                w.wd = self.inotify.add(str(self.fs.path(self._rel(path)) / "memory.events"))
                self._by_wd[w.wd] = path
            except OSError as e:
                if not self._unwatchable:
                    self._unwatchable_error = e.strerror or str(e)
                self._unwatchable += 1
        counters = self._read_counters(path)
        if counters is None:
            if w.wd is not None and self.inotify is not None:
                self.inotify.remove(w.wd)
                self._by_wd.pop(w.wd, None)
            return None
        return w, counters

    def _adopt(self, found: list[tuple[Watched, dict[str, int]]], *, startup: bool
               ) -> list[str]:
        """Take on the new incarnations ``found``: their stored totals are read in one
        transaction (issue #16: one per group was thousands of commits at start, holding
        the database from the first pass), then their counters are compared."""
        if not found:
            return []
        stored: dict[tuple[str, int], dict[str, int]] | None = {}
        if self.sink is not None:
            try:
                stored = self.sink.totals_many([(w.path, w.cgroup_id) for w, _ in found])
                self._totals_failing = 0
            except Exception as e:
                # without the stored totals the difference is unknown: start from the
                # kernel's values (nothing double-counted; a later start compares again)
                stored = None
                self.db_write_errors += len(found)
                self._totals_failing += 1
                if self._totals_failing == 1:  # once per outage, not once per group
                    log.error("stored OOM totals unreadable (the next groups' are not "
                              "logged until one is read)",
                              extra={"group": found[0][0].path, "groups": len(found),
                                     "error": str(e)})
        events: list[OomEvent] = []
        for w, counters in found:
            if stored is None:
                totals = {k: counters.get(k, 0) for k in COUNTER_KINDS}
            else:
                totals = stored.get((w.path, w.cgroup_id), {})
            w.counters = {k: totals.get(k, 0) for k in COUNTER_KINDS}
            self._groups[w.path] = w
            if w.wd is None:
                self._unwatched.add(w.path)
            elif self.events_listener is not None:
                self.events_listener.watched(w.path)
            self._apply(w, counters, missed=startup, batch=events)
        if events:
            self._emit(events)
        return [w.path for w, _ in found]

    def _forget(self, path: str) -> None:
        w = self._groups.pop(path, None)
        self._unwatched.discard(path)
        if w is None:
            return
        if w.wd is not None and self.events_listener is not None:
            self.events_listener.unwatched(path)
        if w.wd is not None:
            self._by_wd.pop(w.wd, None)
            if self.inotify is not None:
                self.inotify.remove(w.wd)
        self._disarm(w)

    # -- PSI triggers ---------------------------------------------------------------------
    def _disarm(self, w: Watched) -> None:
        if w.psi_fd is not None:
            self._by_psi.pop(w.psi_fd, None)
            with contextlib.suppress(OSError):
                self._ep.unregister(w.psi_fd)
            os.close(w.psi_fd)
            w.psi_fd = None
            w.psi_line = None

    def _arm_triggers(self, paths: list[str] | None = None) -> None:
        """Arm (or re-arm) the PSI triggers of ``paths`` (None: every group, and the
        settings are taken as applied)."""
        with self._lock:
            settings = self._settings
            if paths is None:
                self._settings_changed = False
        for path in (list(self._groups) if paths is None else paths):
            w = self._groups.get(path)
            if w is None:
                continue
            s = settings.get(path)
            line = None if s is None else pressure_trigger(s)
            if line == w.psi_line:
                continue
            self._disarm(w)
            if line is None:
                continue
            try:
                fd = self.fs.open(self._rel(path), "memory.pressure",
                                  os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                log.warning("cannot open memory.pressure for a PSI trigger",
                            extra={"group": path, "error": e.strerror})
                continue
            try:
                os.write(fd, line.encode() + b"\0")
                self._ep.register(fd, select.EPOLLPRI)
            except OSError as e:
                os.close(fd)
                log.warning("PSI trigger refused", extra={"group": path, "trigger": line,
                                                          "error": e.strerror})
                continue
            w.psi_fd, w.psi_line = fd, line
            self._by_psi[fd] = path

