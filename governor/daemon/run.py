"""``governor run``: the :class:`Daemon`, which wires every piece to APScheduler and signals.

Start-up order: configuration -> database tried (never required: :mod:`governor.daemon`)
-> cgroup2 mount verified -> ``favordynmods`` turned on if configured (a refusal is logged,
not fatal) -> policy validated and applied (existing groups adopted: only differing files
are written) -> placement (connector + rescan) -> sd_notify ``READY=1`` -> OOM watch,
exporter -> periodic jobs (sampling, reconcile, policy watch, retention).  SIGHUP reloads
the policy (a bad one is rejected, the old one stays; ``RELOADING=1`` ... ``READY=1``
around it); SIGTERM/SIGINT stop after the job in progress (``STOPPING=1``), take a last
sample, store it, and exit 0.

Under systemd (``Type=notify``) the main loop sends ``WATCHDOG=1`` every half
``WatchdogSec=``, whatever the sampling interval, except while a sampling pass has been
running for longer than ``WatchdogSec=``: a stuck pass gets the daemon restarted.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from governor.cgroupfs.reader import raise_nofile_limit
from governor.config import Config
from governor.daemon.deferred import DeferredSink, PolicyRecorder
from governor.daemon.heap import limit_arenas, settle_heap
from governor.daemon.jobs import COST_INTERVAL, RETENTION_INTERVAL, Jobs
from governor.daemon.pace import OpenPace
from governor.daemon.passes import DRAIN_INTERVAL, PASS_STAGES, SamplingPass
from governor.daemon.startup import apply_favordynmods, drift_watch, keep_warm_for
from governor.daemon.wake import Wakeups
from governor.driver import open_tree
from governor.enforce.keeper import Enforcer, PolicyWatcher
from governor.failpoint import failpoint
from governor.image.writable import Pool
from governor.metering.meter import Meter, Pending
from governor.metering.sampler import Sampler
from governor.metering.storage import StorageMeter

log = logging.getLogger("governor.daemon")

#: how long, as a share of the sampling interval, a pass's first reads of groups (their
#: descriptors opened) may take; the others are read in the next passes, so a start at
#: 10,000 groups is not one 75 s pass (issue #16; Sampler.first_read_budget).  How many a
#: pass opens is also paced by what the last ones cost in all, their storing and metering
#: included (governor/daemon/pace.py)
FIRST_READ_SHARE = 0.4

#: the main loop's shortest wait (while the watchdog is held back by a stuck pass)
MIN_WAIT = 0.2

#: the interpreter's switch interval while the placement listener runs: a thread that
#: wants the GIL gets it after this long at most from one busy in Python (CPython's
#: default is 5 ms).  An exec event must not wait behind a sampling or metering pass for
#: the default: bench/gil_wait.py measures the listener's wait both ways.
SWITCH_INTERVAL = 0.001


class Daemon(SamplingPass, Jobs, Wakeups):
    """One governor: set up, started, run until a signal stops it (:meth:`run`).  The
    sampling pass, the other jobs and the wake-ups are its bases' (:mod:`.passes`,
    :mod:`.jobs`, :mod:`.wake`)."""

    def __init__(self, cfg: Config) -> None:
        from governor.security import InstanceLock, check_strict_modes

        # first of all: a SIGHUP (logrotate, an eager `systemctl reload`) or SIGTERM that
        # arrives during start-up must not kill the daemon with the signal's default
        # action (issue #15).  Recorded here, acted on once running: a HUP reloads the
        # policy right after the start's apply, a TERM ends start-up cleanly (exit 0).
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        # the signal handler writes here: the main loop's wait ends at once
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signals_before = self._install_signals()
        self.cfg = cfg
        try:
            # as root, refuse configuration and policy files that others can change
            check_strict_modes(*([cfg.source] if cfg.source else []), cfg.policy)
            self.lock = InstanceLock(cfg.state_dir, cfg.subtree)
            # one instance per subtree; a second start names the holder.  The lock file is
            # removed again when this start fails (and when the daemon stops)
            self.lock.acquire()
        except BaseException:
            self._restore_signals()
            self._close_wake()
            raise
        try:
            failpoint("daemon.start")  # signal tests: a start-up that takes its time
            self._stop_if_asked()
            self._setup(cfg)
        except BaseException:
            self.lock.release(remove=True)
            self._restore_signals()
            self._close_wake()
            raise

    def _setup(self, cfg: Config) -> None:
        from governor.exporter.server import Exporter
        from governor.oom.actions import OomActions, WebhookAlerter
        from governor.oom.kmsg import KmsgReader
        from governor.oom.store import DbSink
        from governor.oom.watch import OomWatcher
        from governor.placement import Placer
        from governor.sdnotify import Notifier, watchdog_interval
        from governor.store.gate import Database
        from governor.store.spool import Spool, SpoolingWriter

        self.jobs: list[tuple[str, float, Callable[[], Any]]] = []
        limit_arenas()  # before the first thread
        # the database is tried, not required: enforcement never waits for it
        from governor.store.nodeuid import load_node_uid

        #: this node's identity (made at the first start): the database's row of this
        #: uid is this node's, whatever its hostname (claimed by Database.check)
        self.node_uid = load_node_uid(cfg.state_dir)
        self.db = Database(cfg.database_url, config_hint=cfg.source or "FILE",
                           node=(cfg.node, self.node_uid))
        self.db.check()  # up to PG_CONNECT_TIMEOUT: a stop asked meanwhile ends it here
        if self.stop_event.is_set():
            self.db.dispose()
            self._stop_if_asked()
        self.scope = self.db.scope
        self.notifier = Notifier()           # no-op unless started by systemd (Type=notify)
        self.watchdog = watchdog_interval()  # seconds between pings, or None
        raise_nofile_limit()  # the sampler keeps ~12 fds per group
        self.tree = open_tree(cfg)  # the driver: systemd units, or cgroupfs writes
        self.fs, layout = self.tree.fs, self.tree.layout
        log.info("cgroup driver", extra={"driver": self.tree.name, "why": self.tree.why,
                                         "subtree": layout.subtree})
        recorder = self.recorder = PolicyRecorder(self.db, cfg.node)
        self.pace = OpenPace(cfg.sample_interval)
        self.sampler = Sampler(self.fs, layout, cfg.node, slow_every=cfg.slow_every,
                               first_read_budget=FIRST_READ_SHARE * cfg.sample_interval,
                               first_read_max=self.pace.limit)
        self.enforcer = Enforcer(self.fs, layout, cfg.policy,
                                 iocost_devices=cfg.iocost_devices, recorder=recorder,
                                 on_created=self.sampler.expect_birth,
                                 executor=self.tree.executor, drift_watch=drift_watch(self.fs))
        self.watcher = PolicyWatcher(cfg.policy, watch=True)
        #: the groups' writable-layer bytes (containers from images), filled into each pass
        self.storage = StorageMeter(
            Pool.from_config(cfg),
            self._storage_limits)
        self.spool = Spool(Path(cfg.state_dir) / (cfg.subtree.replace("/", "_") + ".spool"),
                           max_samples=cfg.spool_max_samples)
        self.writer = SpoolingWriter(spool=self.spool, session_scope=self.scope,
                                     node=cfg.node)
        #: the in-memory meter (anchors of every live incarnation); ``_meter_ready`` False:
        #: the store holds samples not metered yet (a start, a crash between a pass's two
        #: commits, a drained spool), so the next pass meters from the store's rows first
        self.meter = Meter()
        #: meter steps not written yet (the raw samples are, every pass): written every
        #: [sampling] write_every passes, dropped on any failure (governor.metering.meter.
        #: Pending says why nothing is lost)
        self.pending: Pending[int] = Pending()
        self._meter_ready = False
        self.placer = Placer(self.fs, layout, lambda: self.enforcer.policy,
                             exclude=cfg.exclude_cgroups, nice=cfg.listener_nice,
                             keep_warm=keep_warm_for(self.tree, cfg.keep_warm),
                             keep_warm_interval=cfg.keep_warm_interval,
                             keep_warm_min_rate=cfg.keep_warm_min_rate,
                             start_scope=(self.tree.driver.start_scope
                                          if self.tree.driver is not None else None))
        self.oom_sink = DeferredSink(DbSink(self.scope, cfg.node), self.db)
        self.alerter = (WebhookAlerter(cfg.oom_webhook_url, timeout=cfg.oom_webhook_timeout,
                                       retries=cfg.oom_webhook_retries)
                        if cfg.oom_webhook_url else None)
        self.oom = OomWatcher(self.fs, layout, cfg.node,
                              actions=OomActions(alerter=self.alerter), kmsg=KmsgReader(),
                              sink=self.oom_sink, unwatched_from_samples=True)
        # its watches on memory.events spare the passes a read of it while unchanged
        self.oom.events_listener = self.sampler.events_trust()
        self.exporter = Exporter.from_config(cfg, own_metrics=True)
        self.exporter.set_problems([self.db.problem or "database down"] if not self.db.up
                                   else [])
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={
            "max_instances": 1, "coalesce": True, "misfire_grace_time": None})
        # health
        self.last_success: float | None = None
        self.db_write_errors = 0
        self.slow_passes = 0
        self.late_passes = 0
        self.costs: dict[tuple[str, str], Any] = {}
        from governor.billing.running import RunningBills

        #: the month's settled hours summed for the cost gauge (told when they change)
        self.running_bills = RunningBills()
        self._last_pass_start: float | None = None
        #: monotonic start of the sampling pass in progress (None: none running)
        self._pass_running_since: float | None = None
        #: (wall start, seconds, groups sampled) of the last pass
        self._last_pass: tuple[datetime, float, int] | None = None
        #: whole passes (read, store, meter, publish): count, total and longest seconds
        self.pass_seconds = (0, 0.0, 0.0)
        self.pass_cpu = dict.fromkeys(PASS_STAGES, 0.0)
        #: CPU seconds of each scheduled job but the pass, by its id (:meth:`_timed`)
        self.job_cpu: dict[str, float] = {}
        self._stored_last = True

    def _add_job(self, name: str, seconds: float, fn: Callable[[], Any]) -> None:
        """Schedule ``fn`` every ``seconds`` as job ``name``, its CPU counted (:meth:`_timed`)."""
        self.job_cpu.setdefault(name, 0.0)
        self.scheduler.add_job(self._timed(name, fn), "interval", id=name, seconds=seconds)

    def _timed(self, name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` with its thread's CPU time added to ``job_cpu[name]`` each run (the
        collector's runs in it included): what the jobs between the passes cost, beside
        the passes' own (``pass_cpu``).  A job runs one instance at a time, so only its
        own runs add to its entry."""
        job_cpu = self.job_cpu

        def run() -> Any:
            t0 = time.thread_time()
            try:
                return fn()
            finally:
                job_cpu[name] = job_cpu.get(name, 0.0) + time.thread_time() - t0

        run.__name__ = run.__qualname__ = f"timed[{name}]"
        return run

    def _policy_applied(self) -> None:
        pol = self.enforcer.policy
        if pol is None:
            return
        self.oom.set_settings({g.path: g.oom for g in pol.groups()})

    def _watchdog_ok(self, now: float) -> bool:
        """False while a sampling pass has been running for longer than WatchdogSec=."""
        since = self._pass_running_since
        return self.watchdog is None or since is None or now - since <= 2 * self.watchdog

    def run(self) -> int:
        gc.callbacks.append(self._gc_callback)   # the passes' "gc" stage
        try:
            return self._run()
        finally:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._gc_callback)
            self.lock.release(remove=True)
            self._restore_signals()
            self._close_wake()

    def _close(self) -> None:
        """Release what :meth:`_setup` opened (a start that ends before running)."""
        if self.alerter is not None:
            self.alerter.stop(timeout=1.0)
        self.sampler.close()
        self.watcher.close()
        if self.enforcer.drift_watch is not None:
            self.enforcer.drift_watch.close()
        self.tree.close()
        self.db.dispose()

    def _run(self) -> int:
        from governor.security import protect_self

        if self.stop_event.is_set():  # SIGTERM/SIGINT during start-up: nothing applied yet
            log.info("stop requested during start-up: exiting before the policy is applied")
            self._close()
            return 0
        # before anything moves a process (self-protection, placement): see docs/placement.md
        apply_favordynmods(self.cfg, self.fs.root)
        # with the systemd driver the daemon stays in its own unit (governor.service): its
        # MemoryMin=, CPUWeight= and OOMScoreAdjust= protect it, and systemd tracks it
        for problem in protect_self(self.fs, self.cfg.self_cgroup,
                                    memory_min=self.cfg.self_memory_min,
                                    cpu_weight=self.cfg.self_cpu_weight,
                                    move=self.tree.driver is None):
            log.warning("self-protection incomplete", extra={"problem": problem})
        if not self.enforcer.reload(trigger="start"):
            log.error("no valid policy to start with", extra={"path": self.cfg.policy})
            return 1
        self._policy_applied()
        if self.reload_event.is_set():  # a SIGHUP during start-up: reloaded in the loop
            log.info("reload requested during start-up: reloading now")
        sys.setswitchinterval(SWITCH_INTERVAL)
        connector = self.placer.start()
        # the policy is applied and placement runs: systemd may start what comes after us
        self.notifier.notify("READY=1", self.status_line())
        if not connector:
            log.warning("process connector unavailable: placement by rescan only",
                        extra={"rescan_interval": self.cfg.rescan_interval})
        self.oom.start()
        self.exporter.start()
        self.storage.start()
        self.sample()  # a first pass right away: metrics and a baseline sample
        self._update_costs()
        log.debug("start-up heap frozen", extra={"objects": settle_heap()})
        self.scheduler.add_job(self.sample, "interval", id="sample",
                               seconds=self.cfg.sample_interval)
        self._add_job("reconcile", self.cfg.reconcile_interval, self._reconcile)
        self._add_job("retention", RETENTION_INTERVAL, self._retention)
        self._add_job("spool-drain", min(self.cfg.sample_interval, DRAIN_INTERVAL),
                      self._drain)
        self._drain_wanted = bool(self.spool)
        self._apply_draining()
        self._add_job("costs", COST_INTERVAL, self._update_costs)
        for name, seconds, fn in [*self.placer.jobs(self.cfg.rescan_interval), *self.jobs]:
            self._add_job(name, seconds, fn)
        # lateness is judged against the schedule: its first pass is due one interval
        # from now, not from the start-up pass (which also made the first database
        # connection and schema check: 2.6 s before it in a TCG guest, counted late)
        self._last_pass_start = time.monotonic()
        self.scheduler.start()
        log.info("governor running", extra={
            "subtree": self.cfg.subtree, "policy": self.cfg.policy, "node": self.cfg.node,
            "listen": self.cfg.listen, "sample_interval": self.cfg.sample_interval,
            "reconcile_interval": self.cfg.reconcile_interval, "connector": connector})
        next_ping = 0.0
        next_watch = self._next_watch()
        stuck_logged = False
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if self.watchdog is not None and now >= next_ping:
                    if self._watchdog_ok(now):
                        self.notifier.notify("WATCHDOG=1")
                        next_ping = now + self.watchdog
                        stuck_logged = False
                    elif not stuck_logged:
                        stuck_logged = True
                        log.error("sampling pass stuck: watchdog not pinged, systemd will "
                                  "restart governor", extra={
                                      "running_s": round(now - (self._pass_running_since
                                                                or now), 1),
                                      "watchdog_s": 2 * self.watchdog})
                deadline = next_watch if self.watchdog is None else min(next_watch, next_ping)
                stuck_check = self.check_stuck(now)
                if stuck_check is not None:
                    deadline = min(deadline, stuck_check)
                if not self.reload_event.is_set() and not self.stop_event.is_set() and \
                        self._wait(max(MIN_WAIT, deadline - time.monotonic())):
                    next_watch = 0.0   # inotify: look now
                self._apply_draining()
                if time.monotonic() >= next_watch:
                    self._watch()
                    next_watch = self._next_watch()
                if self.reload_event.is_set():
                    self.reload_event.clear()
                    self.notifier.notify(
                        "RELOADING=1",
                        f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
                    try:
                        if self.enforcer.reload(trigger="reload"):
                            self._policy_applied()
                    finally:
                        self.notifier.notify("READY=1", self.status_line())
        finally:
            self.notifier.notify("STOPPING=1", "STATUS=stopping: a last sample, then exit")
            self.scheduler.shutdown(wait=True)   # the job in progress finishes
            # the last pass reads every group's memory.events, trusted or not: the
            # stored counters end as the kernel's (an event the watch has not seen yet)
            self.oom.events_listener = None
            events_watched = self.sampler.reader.events_watched_count
            self.sampler.reader.events_unwatched(None)
            try:
                self.sample(final=True)          # the last samples, stored before exit
            except Exception:
                log.exception("last sampling pass failed")
            self.placer.stop()
            self.oom.close()
            if self.alerter is not None:
                self.alerter.stop()
            self.exporter.stop()
            self.sampler.close()
            self.watcher.close()
            if self.enforcer.drift_watch is not None:
                self.enforcer.drift_watch.close()
            self.tree.close()  # the mount and, with systemd, the bus
            self.db.dispose()
            log.info("governor stopped", extra={
                "passes": self.sampler.passes, "slow_passes": self.slow_passes,
                "late_passes": self.late_passes, "db_write_errors": self.db_write_errors,
                "database_up": self.db.up, "spool_depth": self.spool.pending_samples(),
                "pass_mean_s": round(self.pass_seconds[1] / max(self.pass_seconds[0], 1), 3),
                "pass_max_s": round(self.pass_seconds[2], 3),
                # groups whose memory.events the passes read only after an event
                "memory_events_watched": events_watched,
                **{f"pass_cpu_{k}_s": round(v, 3) for k, v in self.pass_cpu.items()},
                **{f"job_cpu_{k.replace('-', '_')}_s": round(v, 3)
                   for k, v in sorted(self.job_cpu.items())}})
        return 0
