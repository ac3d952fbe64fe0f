"""Watch every managed group's ``memory.events`` and turn counter changes into events.

How the kernel tells us (Documentation/admin-guide/cgroup-v2.rst, "memory.events"): "A value
change in this file generates a file modified event", i.e. inotify ``IN_MODIFY`` on the
file (kernfs_notify).  Notifications are rate-limited by the kernel (cgroup_file_notify:
at most one per file per 10 ms, CGROUP_FILE_NOTIFY_MIN_INTV), so several kills can come as
one notification: the watcher re-reads the counters and records the *delta*, never "one per
notification".  Counts are exact: the recorded counts of an incarnation add up to the
kernel's counters.  Where inotify is unavailable the files are polled.

Across restarts: when the watcher first sees an incarnation (path + cgroup id, the directory
inode) it compares the kernel's counters with the totals already stored for it and records
the difference, marked ``missed_while_down`` when found at start-up.

Victims: a kill counted in ``memory.events`` waits up to ``victim_wait`` seconds for its
"Killed process" line in ``/dev/kmsg`` (:mod:`governor.oom.kmsg`), which the kernel prints
just *after* raising the counter (mm/oom_kill.c ``__oom_kill_process``).

Early warning (Documentation/accounting/psi.rst, "Userspace monitors"): for groups whose
policy sets ``oom.pressure`` thresholds on the 10 s averages, a PSI trigger
``"some|full <stall us> 10000000"`` is written to the group's ``memory.pressure`` and the fd
polled for POLLPRI; thresholds on the 60 s / 300 s averages (longer than the kernel's 10 s
trigger window limit) are checked against each sampling pass (:meth:`OomWatcher.on_sample`).
A fired trigger, a crossed threshold or a ``memory.high`` event raises a ``pressure`` /
``high`` warning (at most one per group per ``warn_interval``) before any kill.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.inotify import (
    IN_CREATE,
    IN_IGNORED,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)
from governor.cgroupfs.layout import Layout, as_layout
from governor.cgroupfs.parse import ParseError, parse_flat_keyed
from governor.cgroupfs.reader import GroupStats
from governor.errors import CgroupError
from governor.oom.actions import OomActions
from governor.oom.events import COUNTER_KINDS, KILL_KINDS, PRESSURE, OomEvent
from governor.oom.kmsg import KmsgReader, Victim
from governor.oom.store import EventSink
from governor.policy.model import OomSettings, PressureKey

log = logging.getLogger("governor.oom")

#: PSI trigger window limit (kernel/sched/psi.c: WINDOW_MAX_US = 10 s)
PSI_WINDOW_US = 10_000_000




@dataclass
class _Watched:
    path: str
    cgroup_id: int
    counters: dict[str, int]
    wd: int | None = None
    psi_fd: int | None = None
    psi_line: str | None = None


@dataclass
class _Pending:
    event: OomEvent
    deadline: float
    victims: list[Victim] = field(default_factory=list)


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


#: with inotify on the directories, a new group is seen when it is made; the full rescan
#: is a safety net this often (issue #16: listing every group every 2 s was a third of
#: the sampler's own cost at 1,000 groups)
SAFETY_RESCAN = 60.0


class OomWatcher:
    """Produces :class:`OomEvent`\\ s for every managed group (tenants and their groups)."""

    def __init__(self, fs: CgroupFS, subtree: Layout | str, node: str, *,
                 sink: EventSink | None = None, actions: OomActions | None = None,
                 kmsg: KmsgReader | None = None, victim_wait: float = 0.5,
                 rescan_interval: float = 2.0, poll_interval: float = 0.5,
                 warn_interval: float = 10.0, use_inotify: bool = True,
                 unwatched_from_samples: bool = False) -> None:
        self.fs = fs
        self.layout = as_layout(subtree)
        self.subtree = self.layout.subtree
        self.node = node
        self.sink = sink
        self.actions = actions
        self.kmsg = kmsg
        self.victim_wait = victim_wait
        self.rescan_interval = rescan_interval
        self.poll_interval = poll_interval
        self.warn_interval = warn_interval
        #: listeners get every event after it is stored (tests, the exporter, a launcher)
        self.listeners: list[Callable[[OomEvent], None]] = []
        #: warnings per group path (cumulative; the exporter's pressure warning counter)
        self.warnings: Counter[str] = Counter()
        #: events recorded per kind
        self.recorded: Counter[str] = Counter()
        self.db_write_errors = 0
        self._totals_failing = 0  # groups in a row whose stored totals were unreadable
        self._groups: dict[str, _Watched] = {}
        self._by_wd: dict[int, str] = {}
        self._by_psi: dict[int, str] = {}
        self._pending: list[_Pending] = []
        self._victims: list[tuple[float, Victim, set[str]]] = []
        self._unstored: list[OomEvent] = []
        self._last_warn: dict[str, float] = {}
        self._settings: dict[str, OomSettings] = {}
        self._settings_changed = False
        self._inbox: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        #: paths of the groups whose memory.events has no inotify watch (read every poll,
        #: or, with ``unwatched_from_samples``, checked with each sampling pass's counters
        #: given to :meth:`on_sample`: the sampler reads memory.events anyway, and at
        #: 10,000 groups past fs.inotify.max_user_watches the watcher's own reads every
        #: 0.5 s were half of the daemon's CPU, issue #16)
        self._unwatched: set[str] = set()
        self.unwatched_from_samples = unwatched_from_samples
        self._fed: dict[str, Mapping[str, int]] = {}
        #: the counters last fed per unwatched group: a pass feeds only those that moved
        #: (the sampler's thread only; at 10,000 unwatched groups applying every group's
        #: unchanged counters each pass was 16% of the daemon's CPU, issue #16)
        self._fed_last: dict[str, Mapping[str, int]] = {}
        self._unwatchable = 0   # groups this rescan could not watch (logged once a rescan)
        self._unwatchable_error = ""
        # one epoll set, kept (issue #16: a poll() set built anew twice a second registered
        # every PSI trigger each time, and the kernel polled each one)
        self._ep = select.epoll()
        # written by stop(), set_settings() and on_sample() to end the loop's wait at once
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep.register(self._wake, select.EPOLLIN)
        #: inotify watches of the subtree's and the tenants' directories: wd -> path ("")
        self._dir_wds: dict[int, str] = {}
        self._rescan_due = False
        self.inotify: Inotify | None = None
        if use_inotify:
            try:
                self.inotify = Inotify()
                self._ep.register(self.inotify.fd, select.EPOLLIN)
            except OSError as e:
                log.warning("inotify unavailable, polling memory.events",
                            extra={"error": e.strerror})

    # -- configuration --------------------------------------------------------------------
    def set_settings(self, settings: Mapping[str, OomSettings]) -> None:
        """The policy's OOM settings per group path (thread-safe; applied by the loop)."""
        with self._lock:
            self._settings = dict(settings)
            self._settings_changed = True
        if self.actions is not None:
            self.actions.set_settings(settings)
        self._poke()

    def _poke(self) -> None:
        """End the loop's wait now (any thread)."""
        with contextlib.suppress(OSError, ValueError):
            os.eventfd_write(self._wake, 1)

    # -- discovery ------------------------------------------------------------------------
    def _rel(self, path: str) -> str:
        return self.layout.path(path)

    def discover(self) -> list[str]:
        try:
            return self.layout.groups(self.fs)
        except CgroupError:
            return []

    def _read_counters(self, path: str) -> dict[str, int] | None:
        try:
            text = self.fs.read(self._rel(path), "memory.events")
            return parse_flat_keyed(text, "memory.events")
        except (CgroupError, ParseError):
            return None

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
        found: list[tuple[_Watched, dict[str, int]]] = []
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

    def _watch_new(self, path: str, cid: int) -> tuple[_Watched, dict[str, int]] | None:
        """Watch a new incarnation's ``memory.events`` and read it (None: no memory
        controller there, or gone already)."""
        w = _Watched(path, cid, {})
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

    def _adopt(self, found: list[tuple[_Watched, dict[str, int]]], *, startup: bool
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
            self._apply(w, counters, missed=startup, batch=events)
        if events:
            self._emit(events)
        return [w.path for w, _ in found]

    def _forget(self, path: str) -> None:
        w = self._groups.pop(path, None)
        self._unwatched.discard(path)
        if w is None:
            return
        if w.wd is not None:
            self._by_wd.pop(w.wd, None)
            if self.inotify is not None:
                self.inotify.remove(w.wd)
        self._disarm(w)

    # -- PSI triggers ---------------------------------------------------------------------
    def _disarm(self, w: _Watched) -> None:
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

    # -- counters -> events ---------------------------------------------------------------
    def check(self, path: str) -> None:
        w = self._groups.get(path)
        if w is None:
            return
        counters = self._read_counters(path)
        if counters is None:
            return
        self._apply(w, counters, missed=False)

    def _apply(self, w: _Watched, counters: Mapping[str, int], *, missed: bool,
               batch: list[OomEvent] | None = None) -> None:
        """Turn ``counters``' growth since ``w``'s into events: emitted now, or added to
        ``batch`` (adoption emits a whole rescan's in one transaction)."""
        now = datetime.now(UTC)
        tenant, _, group = w.path.partition("/")
        for kind in COUNTER_KINDS:
            new = counters.get(kind)
            if new is None:
                continue
            delta = new - w.counters.get(kind, 0)
            if delta <= 0:
                # a counter never goes down within an incarnation; a stored total above
                # the kernel's (should not happen) is not "negative events"
                w.counters[kind] = max(new, w.counters.get(kind, 0))
                continue
            w.counters[kind] = new
            ev = OomEvent(node=self.node, tenant=tenant, group=group or None,
                          cgroup_id=w.cgroup_id, ts=now, kind=kind, count=delta,
                          missed_while_down=missed)
            if kind == "oom_kill" and not missed and self.kmsg is not None \
                    and self.kmsg.fd is not None:
                self._pending.append(_Pending(ev, time.monotonic() + self.victim_wait))
            elif batch is not None:
                batch.append(ev)
            else:
                self._emit([ev])
            if kind == "high" and not missed:
                self._warn(w.path)

    def _warn(self, path: str) -> bool:
        now = time.monotonic()
        last = self._last_warn.get(path)
        if last is not None and now - last < self.warn_interval:
            return False
        self._last_warn[path] = now
        self.warnings[path] += 1
        return True

    def _pressure(self, path: str, why: str) -> None:
        w = self._groups.get(path)
        if w is None or not self._warn(path):
            return
        tenant, _, group = path.partition("/")
        log.warning("memory pressure above the policy's threshold",
                    extra={"group": path, "why": why})
        self._emit([OomEvent(node=self.node, tenant=tenant, group=group or None,
                             cgroup_id=w.cgroup_id, ts=datetime.now(UTC), kind=PRESSURE,
                             count=1)])

    def on_sample(self, latest: Mapping[str, GroupStats]) -> None:
        """Check the 60 s / 300 s pressure thresholds (and the 10 s ones of groups without
        an armed trigger) against a sampling pass's PSI averages.  Safe to call from the
        sampler's thread: crossings are queued and raised by the watcher's loop."""
        if self.unwatched_from_samples and self._unwatched:
            fed = {}
            last = self._fed_last
            unwatched = set(self._unwatched)  # a copy: the watcher's thread changes it
            for path in unwatched:
                st = latest.get(path)
                ev = None if st is None else st.memory_events
                if ev is not None and last.get(path) != ev:
                    fed[path] = last[path] = ev
            if len(last) > len(unwatched):   # groups watched again or gone
                for path in [p for p in last if p not in unwatched]:
                    del last[path]
            if fed:
                with self._lock:
                    self._fed.update(fed)
                self._poke()
        with self._lock:
            settings = self._settings
        for path, s in settings.items():
            st = latest.get(path)
            p = None if st is None else st.psi.get("memory")
            if p is None or not s.pressure:
                continue
            w = self._groups.get(path)
            armed = w is not None and w.psi_fd is not None
            for key, pct in s.pressure:
                line = p.some if key.startswith("some") else p.full
                if line is None or (armed and key.endswith("avg10")):
                    continue
                value = getattr(line, key.split("_", 1)[1])
                if value >= pct:
                    with self._lock:  # handled by the watcher's own thread
                        self._inbox.append((path, f"{key} {value} >= {pct}"))
                    self._poke()
                    break

    # -- victims --------------------------------------------------------------------------
    def _victim_path(self, v: Victim) -> str | None:
        cg = v.cgroup or v.oom_cgroup
        return None if cg is None else self.layout.group_of(cg)

    def _take_victims(self, now: float) -> None:
        if self.kmsg is not None and self.kmsg.fd is not None:
            for v in self.kmsg.read():
                self._victims.append((now, v, set()))
        self._victims = [x for x in self._victims if now - x[0] < 30.0]
        ready: list[_Pending] = []
        for p in self._pending:
            path = p.event.path
            for _t, v, claimed in self._victims:
                if len(p.victims) >= p.event.count:
                    break
                if path in claimed:
                    continue
                vp = self._victim_path(v)
                if vp is not None and (vp == path or vp.startswith(path + "/")):
                    claimed.add(path)
                    p.victims.append(v)
            if len(p.victims) >= p.event.count or now >= p.deadline:
                ready.append(p)
        for p in ready:
            self._pending.remove(p)
            self._emit(split_by_victims(p.event, p.victims))

    # -- output ---------------------------------------------------------------------------
    def _emit(self, events: Sequence[OomEvent]) -> None:
        batch = [*self._unstored, *events]
        self._unstored = []
        if self.sink is not None and batch:
            try:
                self.sink.record(batch)
            except Exception as e:
                self.db_write_errors += 1
                # kept and retried with the next events (bounded: the oldest go first)
                self._unstored = batch[-10_000:]
                log.error("OOM events not stored, will retry",
                          extra={"events": len(batch), "error": str(e)})
        for ev in events:
            self.recorded[ev.kind] += ev.count
            if self.actions is not None and not ev.missed_while_down:
                self.actions.handle(ev)
            for fn in list(self.listeners):
                try:
                    fn(ev)
                except Exception:
                    log.exception("oom listener failed")

    def flush(self) -> None:
        """Emit every pending kill now, with the victims found so far."""
        self._take_victims(time.monotonic())
        for p in self._pending:
            self._emit(split_by_victims(p.event, p.victims))
        self._pending = []

    # -- the loop -------------------------------------------------------------------------
    def poll_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for something to happen and handle it."""
        kfd = self.kmsg.fd if self.kmsg is not None else None
        always: list[tuple[int, int]] = []
        if kfd is not None:   # kept registered: a closed fd leaves the set by itself
            try:
                try:
                    self._ep.modify(kfd, select.EPOLLIN)
                except FileNotFoundError:
                    self._ep.register(kfd, select.EPOLLIN)
            except PermissionError:
                # a file epoll cannot wait on (a regular file standing in for /dev/kmsg)
                # is always readable, as poll() says of it
                always.append((kfd, select.EPOLLIN))
        if self._pending:
            timeout = max(0.0, min(timeout, min(p.deadline for p in self._pending)
                                   - time.monotonic()))
        try:
            ready = always + self._ep.poll(0 if always else timeout)
        except InterruptedError:
            ready = always
        with self._lock:
            inbox, self._inbox = self._inbox, []
            fed, self._fed = self._fed, {}
        for where, why in inbox:
            self._pressure(where, why)
        changed: set[str] = set()
        for fd, mask in ready:
            if fd == self._wake:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
            elif self.inotify is not None and fd == self.inotify.fd:
                for wd, emask in self.inotify.read():
                    if emask & IN_Q_OVERFLOW:   # events lost: look at everything
                        changed.update(self._groups)
                        self._rescan_due = True
                        continue
                    if wd in self._dir_wds:
                        if emask & IN_IGNORED:   # the directory is gone
                            del self._dir_wds[wd]
                        self._rescan_due = True
                        continue
                    hit = self._by_wd.get(wd)
                    if hit is None:
                        continue
                    if emask & IN_IGNORED:
                        self._by_wd.pop(wd, None)  # the file (group) is gone
                        gone = self._groups.get(hit)
                        if gone is not None:
                            gone.wd = None
                            self._unwatched.add(hit)
                        continue
                    changed.add(hit)
            elif fd in self._by_psi and mask & (select.EPOLLPRI | select.EPOLLERR):
                if mask & select.EPOLLERR:  # the group went away under the trigger
                    w = self._groups.get(self._by_psi[fd])
                    if w is not None:
                        self._disarm(w)
                    continue
                self._pressure(self._by_psi[fd], "PSI trigger fired")
        if self.inotify is None:
            changed.update(self._groups)  # polling fallback: look at every group
        elif not self.unwatched_from_samples:
            changed.update(self._unwatched)
        for path, counters in fed.items():   # a pass's counters of unwatched groups
            w = self._groups.get(path)
            if w is not None and w.wd is None and path not in changed:
                self._apply(w, counters, missed=False)
        for path in sorted(changed):
            self.check(path)
        self._take_victims(time.monotonic())

    def run(self) -> None:
        if self.kmsg is not None and self.kmsg.fd is None:
            self.kmsg.open()
        self.rescan(startup=True)
        next_scan = time.monotonic() + self._rescan_every()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_scan or self._settings_changed or self._rescan_due:
                self.rescan()
                next_scan = now + self._rescan_every()
            # the groups' memory.events and the directories are watched: wait for them
            # (or a wake-up) until the next rescan; without a watch, poll
            wait = next_scan - now
            if self.inotify is None or (self._unwatched and not self.unwatched_from_samples):
                wait = min(wait, self.poll_interval)
            try:
                self.poll_once(max(0.0, wait))
            except Exception:
                log.exception("oom watch pass failed")
                self._stop.wait(self.poll_interval)
        self.flush()

    def _rescan_every(self) -> float:
        """The full rescan's interval: ``rescan_interval`` without inotify on the
        directories, else :data:`SAFETY_RESCAN`."""
        return SAFETY_RESCAN if self._dir_wds else self.rescan_interval

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="governor-oom", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        for path in list(self._groups):
            self._forget(path)
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None
        if self.kmsg is not None:
            self.kmsg.close()
        self._ep.close()
        os.close(self._wake)


def split_by_victims(ev: OomEvent, victims: Sequence[Victim]) -> list[OomEvent]:
    """One event per known victim (count 1), plus the rest of the delta without details."""
    if ev.kind not in KILL_KINDS or not victims:
        return [ev]
    out = [OomEvent(node=ev.node, tenant=ev.tenant, group=ev.group, cgroup_id=ev.cgroup_id,
                    ts=ev.ts, kind=ev.kind, count=1, pid=v.pid, comm=v.comm,
                    rss_bytes=v.rss_bytes, missed_while_down=ev.missed_while_down)
           for v in victims[:ev.count]]
    rest = ev.count - len(out)
    if rest > 0:
        out.append(OomEvent(node=ev.node, tenant=ev.tenant, group=ev.group,
                            cgroup_id=ev.cgroup_id, ts=ev.ts, kind=ev.kind, count=rest,
                            missed_while_down=ev.missed_while_down))
    return out

