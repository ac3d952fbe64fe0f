"""The placement listener: a thread that follows process-connector events, and the
no-op migrations that keep its moves fast.

:class:`Listener` is the base of :class:`governor.placement.placer.Placer`, which decides
(``handle``, ``rescan``); the listener receives the events and hands them over, rescans
after an overflow, gives its thread a nice value, and, for ``keep_warm`` seconds after a
move, repeats a no-op migration (:class:`governor.cgroupfs.keepwarm.MigrationWarmer`: from
the C accelerator's thread, else from this one) while the moves come at
``keep_warm_min_rate`` a second or more (:class:`governor.placement.warm.KeepWarmGate`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Final

from governor.cgroupfs import mount
from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.keepwarm import MigrationWarmer
from governor.errors import CgroupError, GovernorError
from governor.placement import netlink
from governor.placement.counters import Counters
from governor.placement.warm import KeepWarmGate

log = logging.getLogger("governor.placement")

#: the listener's receive timeout while no move is being kept fast.  A stop wakes it at
#: once (:meth:`Connector.wake`); the timeout is only the bound should that wake fail
#: (issue #16: at 0.5 s the idle wake-ups were 14 ms of an idle daemon's CPU every 10 s
#: in the test VM)
IDLE_TIMEOUT: Final = 30.0
#: how often the listener reads the keep_warm writer's counts (not once per datagram)
WARM_STATS_EVERY: Final = 0.05


class Listener:
    """The connector thread of a placer and its keep_warm writes; the subclass decides what
    each event does (:meth:`handle`) and classifies every process (:meth:`rescan`)."""

    def __init__(self, fs: CgroupFS, counters: Counters, *, proc_root: str,
                 nice: int | None, keep_warm: float, keep_warm_interval: float,
                 keep_warm_min_rate: int) -> None:
        self.fs = fs
        self.counters = counters
        self._thread: threading.Thread | None = None
        self._conn: netlink.Connector | None = None
        self._stop = threading.Event()
        #: nice value of the listener thread (None: left as it is); see _prioritise
        self.nice = nice
        self.listener_tid: int | None = None
        #: seconds after a move during which the listener keeps moves fast (0: never), and
        #: the interval of its no-op migrations (shorter than an RCU grace period)
        self.keep_warm = keep_warm
        self.keep_warm_interval = keep_warm_interval
        #: opens the window only while moves come at keep_warm_min_rate a second or more
        self.warm_gate = KeepWarmGate(keep_warm_min_rate)
        self.warmer = MigrationWarmer(fs, proc_file=f"{proc_root}/thread-self/cgroup")
        self._warm_logged = False

    def handle(self, ev: netlink.ProcEvent) -> None:
        """React to one connector event (the placer's decisions)."""
        raise NotImplementedError

    def rescan(self) -> dict[str, int]:
        """Classify every process (the placer's decisions)."""
        raise NotImplementedError

    def _warm_after_move(self, now: float) -> None:
        """Tell the warmer about a move while the gate has the window open (a move inside
        an open window also counts as its write); a closed window stays closed."""
        gate = self.warm_gate
        opened = gate.opened
        until = gate.moved(now, self.keep_warm)
        self.counters.keep_warm_windows += gate.opened - opened
        if until > now:
            if self.warmer.background:
                # a refusal since the writer's counts were last read (this process moved
                # while the listener slept) is taken first: the path is read again, so the
                # window opens where this process is now
                self._warm_stats()
            self.warmer.moved(until)

    # -- the listener thread -------------------------------------------------------------
    def start(self) -> bool:
        """Rescan once, then follow connector events in a thread.  Returns False (and
        relies on the periodic rescan) when the connector is unavailable."""
        try:
            conn = netlink.Connector(timeout=IDLE_TIMEOUT)
        except OSError as e:
            log.warning("process connector unavailable: placement relies on rescans",
                        extra={"error": os.strerror(e.errno or 0)})
            self.rescan()
            return False
        self.counters.connector = True
        self._stop.clear()
        self._conn = conn
        self._thread = threading.Thread(target=self._listen, args=(conn,),
                                        name="placement-netlink", daemon=True)
        self._thread.start()
        self.rescan()  # after subscribing: nothing started meanwhile is missed
        return True

    def _prioritise(self) -> None:
        """Give the listener thread its nice value (Linux: per thread, by its tid).  An
        exec event is handled in a few hundred microseconds of CPU, but on a busy host the
        thread first waits for a CPU, and every millisecond it waits the new process runs
        outside its group: measured in the VM (bench/placement.py), nice -10 halved the
        median exec-to-placed under load.  Lowering a nice value needs CAP_SYS_NICE: without
        it the thread keeps its nice, and says so."""
        if self.nice is None:
            return
        tid = self.listener_tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, self.nice)
        except OSError as e:
            log.warning("placement listener keeps its priority",
                        extra={"nice": self.nice, "error": os.strerror(e.errno or 0),
                               "fix": "run as root (CAP_SYS_NICE), or set [placement] "
                                      "listener_nice = 0"})
        else:
            self.counters.listener_nice = os.getpriority(os.PRIO_PROCESS, tid)

    def _warm_refused(self, e: Exception) -> None:
        if not self._warm_logged:  # once: it would repeat after each move
            self._warm_logged = True
            log.warning("cannot keep moves fast: each move waits for a grace period",
                        extra={"error": str(e),
                               "fix": "set [placement] favordynmods = true, or keep_warm = 0 "
                                      "to stop trying"})

    def _start_warmer(self) -> None:
        """The no-op migrations of keep_warm from the C accelerator's thread when there is
        one (no GIL, no listener wake-ups); else the listener writes them (_keep_warm)."""
        try:
            self.warmer.start_background(self.keep_warm_interval)
        except (CgroupError, OSError) as e:
            self.counters.keep_warm_errors += 1
            self._warm_refused(e)

    def _warm_stats(self) -> None:
        writes, refused, err = self.warmer.stats(self.keep_warm_interval)
        self.counters.keep_warm_writes = writes
        self.counters.keep_warm_errors = refused
        if err is not None:
            self._warm_refused(err)

    def _keep_warm(self, conn: netlink.Connector, warm: bool) -> bool:
        """While moves are recent, a no-op migration each ``keep_warm_interval`` (the
        receive timeout is shortened to wake for it).  Returns whether it is warm now."""
        w = self.warmer
        now = time.monotonic()
        if now >= w.until:
            if warm:
                conn.set_timeout(IDLE_TIMEOUT)
            return False
        if now - w.last_write >= self.keep_warm_interval:
            try:
                w.touch()
            except (CgroupError, OSError) as e:
                self.counters.keep_warm_errors += 1
                w.until = 0.0
                self._warm_refused(e)
                if warm:
                    conn.set_timeout(IDLE_TIMEOUT)
                return False
            self.counters.keep_warm_writes += 1
        if not warm:
            conn.set_timeout(self.keep_warm_interval)
        return True

    def _favordynmods(self) -> bool:
        """Is the cgroup2 mount under ``fs.root`` in ``favordynmods`` mode?  (Then moves
        never wait, and keep_warm would only cost.)"""
        try:
            entry = mount.cgroup2_mount_of(self.fs.root)
        except (GovernorError, OSError):
            return False
        return mount.FAVORDYNMODS in entry.super_options

    def _listen(self, conn: netlink.Connector) -> None:
        self._prioritise()
        if self.keep_warm > 0 and self._favordynmods():
            log.info("keep_warm not needed: the cgroup2 mount has favordynmods",
                     extra={"cgroup_root": str(self.fs.root)})
            self.keep_warm = 0.0
        if self.keep_warm > 0:
            self._start_warmer()  # after _prioritise: its thread takes this one's nice
        warm = False
        stats_due = 0.0
        try:
            while not self._stop.is_set():
                try:
                    events = conn.receive()
                except netlink.Overflow:
                    self.counters.overflows += 1
                    log.warning("process connector overflow: events lost, rescanning")
                    self.rescan()
                    continue
                for ev in events:
                    try:
                        self.handle(ev)
                    except Exception:
                        log.exception("placement event failed", extra={"event": ev.name,
                                                                       "pid": ev.pid})
                if self.keep_warm <= 0:
                    continue
                if self.warmer.background:
                    now = time.monotonic()
                    if now >= stats_due:
                        stats_due = now + WARM_STATS_EVERY
                        self._warm_stats()
                    # while a window is open the listener wakes to read the writer's
                    # counts; once it closed, it reads them a last time and sleeps
                    if now < self.warmer.until:
                        if not warm:
                            conn.set_timeout(WARM_STATS_EVERY)
                            warm = True
                    elif warm:
                        self._warm_stats()
                        conn.set_timeout(IDLE_TIMEOUT)
                        warm = False
                else:
                    warm = self._keep_warm(conn, warm)
        finally:
            conn.close()
            if self.warmer.background:
                self._warm_stats()
            self.warmer.stop_background()
            self.warmer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            if self._conn is not None and self._thread.is_alive():
                try:
                    self._conn.wake()
                except ConnectionRefusedError:
                    pass   # its socket is closed already: the thread is ending
                except OSError as e:   # then it ends at its receive timeout
                    log.warning("placement listener not woken: it stops within its timeout",
                                extra={"error": os.strerror(e.errno or 0),
                                       "timeout_s": IDLE_TIMEOUT})
            self._thread.join(timeout=IDLE_TIMEOUT + 5)
            self._thread = None
            self._conn = None
