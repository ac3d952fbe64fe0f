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

from governor.cgroupfs.inotify import IN_IGNORED, IN_Q_OVERFLOW
from governor.oom.groups import GroupWatches, pressure_trigger

# pressure_trigger is defined in groups.py; tests/unit/test_oom_watch.py imports it from here
__all__ = ["SAFETY_RESCAN", "OomWatcher", "pressure_trigger"]

log = logging.getLogger("governor.oom")

#: with inotify on the directories, a new group is seen when it is made; the full rescan
#: is a safety net this often (issue #16: listing every group every 2 s was a third of
#: the sampler's own cost at 1,000 groups)
SAFETY_RESCAN = 60.0


class OomWatcher(GroupWatches):
    """Produces :class:`OomEvent`\\ s for every managed group (tenants and their groups).

    Built in layers, each module one job: :mod:`governor.oom.watched` (the state and the
    constructor), :mod:`governor.oom.recorder` (counters into events), :mod:`governor.oom.groups`
    (the watched groups and their PSI triggers); this class is the loop.
    """

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
        listener = self.events_listener
        for fd, mask in ready:
            if fd == self._wake:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
            elif self.inotify is not None and fd == self.inotify.fd:
                for wd, emask in self.inotify.read():
                    if emask & IN_Q_OVERFLOW:   # events lost: look at everything
                        changed.update(self._groups)
                        self._rescan_due = True
                        if listener is not None:
                            for path in self._groups:
                                listener.changed(path)
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
                        if listener is not None:
                            listener.unwatched(hit)
                        continue
                    if listener is not None:
                        listener.changed(hit)
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
        if self.events_listener is not None:   # no event is seen from now on
            self.events_listener.unwatched(None)

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

