"""The OOM watcher's state: each watched group's incarnation, and what the loop waits on.

:class:`Watched` is one group incarnation (path + cgroup id) with the counters recorded for
it, its ``memory.events`` inotify watch and its PSI trigger; :class:`Pending` a kill waiting
for its victims from ``/dev/kmsg``.  :class:`WatcherState` is the bottom of
:class:`~governor.oom.watch.OomWatcher`: its constructor (the epoll set, the eventfd that
ends a wait, inotify), the settings, and the read of a group's ``memory.events``; the
layers above it (:mod:`governor.oom.recorder`, :mod:`governor.oom.groups`,
:mod:`governor.oom.watch`) share this state and add the behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.inotify import Inotify
from governor.cgroupfs.layout import Layout, as_layout
from governor.cgroupfs.parse import ParseError, parse_flat_keyed
from governor.errors import CgroupError
from governor.oom.actions import OomActions
from governor.oom.events import OomEvent
from governor.oom.kmsg import KmsgReader, Victim
from governor.oom.store import EventSink
from governor.policy.model import OomSettings

log = logging.getLogger("governor.oom")


@dataclass
class Watched:
    path: str
    cgroup_id: int
    counters: dict[str, int]
    wd: int | None = None
    psi_fd: int | None = None
    psi_line: str | None = None


@dataclass
class Pending:
    event: OomEvent
    deadline: float
    victims: list[Victim] = field(default_factory=list)


class EventsListener(Protocol):
    """Told, from the watcher's thread, what its inotify watches on the groups'
    ``memory.events`` say: :meth:`watched` once a group's file is watched (after the watch
    is set, so a change from then on is an event), :meth:`changed` on each event on it (or
    when events may have been lost: a queue overflow), :meth:`unwatched` when its watch
    ended (the group gone, or the watcher closing: ``None``, every group)."""

    def watched(self, path: str) -> None: ...

    def changed(self, path: str) -> None: ...

    def unwatched(self, path: str | None) -> None: ...


class WatcherState:
    """The state of :class:`~governor.oom.watch.OomWatcher`, and its constructor."""

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
        self._groups: dict[str, Watched] = {}
        self._by_wd: dict[int, str] = {}
        self._by_psi: dict[int, str] = {}
        self._pending: list[Pending] = []
        self._victims: list[tuple[float, Victim, set[str]]] = []
        self._unstored: list[OomEvent] = []
        self._last_warn: dict[str, float] = {}
        self._settings: dict[str, OomSettings] = {}
        self._with_pressure: dict[str, OomSettings] = {}
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
        #: told which groups' memory.events is watched, and of each event on it (the
        #: daemon's sampler: it hands out the last value read while nothing changed)
        self.events_listener: EventsListener | None = None
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
            #: the groups with pressure thresholds: what each pass checks (on_sample)
            self._with_pressure = {p: s for p, s in self._settings.items() if s.pressure}
            self._settings_changed = True
        if self.actions is not None:
            self.actions.set_settings(settings)
        self._poke()

    def _poke(self) -> None:
        """End the loop's wait now (any thread)."""
        with contextlib.suppress(OSError, ValueError):
            os.eventfd_write(self._wake, 1)

    # -- the groups' files ----------------------------------------------------------------
    def _rel(self, path: str) -> str:
        return self.layout.path(path)

    def _read_counters(self, path: str) -> dict[str, int] | None:
        try:
            text = self.fs.read(self._rel(path), "memory.events")
            return parse_flat_keyed(text, "memory.events")
        except (CgroupError, ParseError):
            return None

