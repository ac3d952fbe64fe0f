"""``governor run``: one process that wires every piece to APScheduler and signals.

Start-up order: configuration -> database tried (never required: see below) -> cgroup2
mount verified -> ``favordynmods`` turned on if configured (a refusal is logged, not fatal)
-> policy validated and applied (existing groups adopted: only differing files are written)
-> placement (connector + rescan) -> sd_notify ``READY=1`` -> OOM watch, exporter ->
periodic jobs (sampling, reconcile, policy watch, retention).  SIGHUP reloads the policy (a
bad one is rejected, the old one stays; ``RELOADING=1`` ... ``READY=1`` around it);
SIGTERM/SIGINT stop after the job in progress (``STOPPING=1``), take a last sample, store it,
and exit 0.

Enforcement needs no database (:mod:`governor.store.gate`): with the database unreachable or
at another schema the policy is applied, processes are placed, samples spool locally and
applied policies (with their price plans) and OOM events wait in memory; each sampling pass
tries the database again, and once it answers with the right schema everything waiting is
stored, in order.  ``/healthz``, ``governor_database_up`` and the sd_notify ``STATUS=`` say
"degraded" meanwhile.

Under systemd (``Type=notify``) the main loop sends ``WATCHDOG=1`` every half
``WatchdogSec=``, whatever the sampling interval, except while a sampling pass has been
running for longer than ``WatchdogSec=``: a stuck pass gets the daemon restarted.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from governor.cgroupfs.mount import Remount
from governor.cgroupfs.reader import raise_nofile_limit
from governor.config import Config
from governor.driver import Tree, delegated, open_tree
from governor.enforce.keeper import Enforcer, PolicyWatcher
from governor.failpoint import failpoint
from governor.image.writable import Pool
from governor.metering.meter import Meter, Pending
from governor.metering.sampler import Sampler
from governor.metering.storage import StorageMeter

log = logging.getLogger("governor.daemon")

#: how often the policy files are checked for changes (a stat per file) when inotify
#: cannot watch their directory
WATCH_INTERVAL = 1.0
#: how often they are checked all the same while it does (a symlink's target elsewhere)
WATCH_SAFETY = 30.0
#: the main loop's shortest wait (while the watchdog is held back by a stuck pass)
MIN_WAIT = 0.2
#: the collector's first threshold once running (see :func:`settle_heap`)
GC_YOUNG = 10_000
#: the C heap's free pages are given back every this many passes (see :func:`trim_heap`)
TRIM_PASSES = 30
#: how often retention runs (it is idempotent; a daily cadence would do)
RETENTION_INTERVAL = 3600.0
#: the billed-cost gauge is recomputed this often, by its own job (it reads the month's
#: hourly rollups: never part of a sampling pass)
COST_INTERVAL = 300.0
#: the spool's backlog drains by its own job (never inside a pass): this often at most,
#: DRAIN_STEP batches per step, with DRAIN_PAUSE between steps for a pass to go in
DRAIN_INTERVAL = 5.0
DRAIN_STEP = 8
DRAIN_PAUSE = 0.05
#: at most this many applied policies / OOM events wait in memory for the database
MAX_PENDING_POLICIES = 1000
MAX_PENDING_EVENTS = 10_000
#: the interpreter's switch interval while the placement listener runs: a thread that
#: wants the GIL gets it after this long at most from one busy in Python (CPython's
#: default is 5 ms).  An exec event must not wait behind a sampling or metering pass for
#: the default: bench/gil_wait.py measures the listener's wait both ways.
SWITCH_INTERVAL = 0.001


#: glibc's mallopt(3) parameter M_ARENA_MAX, and the daemon's value (see limit_arenas)
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """At most ``arenas`` glibc malloc arenas (issue #16, resident memory): by default each
    thread that allocates gets its own (up to 8 per CPU), and memory freed in one stays
    resident there; the daemon's dozen threads (scheduler workers, placement, OOM watch,
    exporter) each kept some.  Called before any thread starts.  False where the C library
    is not glibc (nothing changed) or refuses; ``MALLOC_ARENA_MAX`` in the environment wins."""
    import ctypes

    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


def settle_heap() -> int:
    """Collect, then move every object alive now to the collector's permanent generation
    (``gc.freeze``): what start-up made (modules, SQLAlchemy's metadata, the policy) lives
    as long as the daemon, and no longer has to be traversed by each full collection.
    Those held the GIL for up to 60 ms per collection at 1,000 groups (bench/gil_wait.py),
    which the placement listener waited out.  Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    # the young generation is collected after GC_YOUNG net new container objects, not
    # 700: a pass's objects (samples, rows) die by reference count between collections,
    # so collections almost stop (issue #16: at 1,000 groups 13.8 a pass and 7% of its
    # CPU with CPython's 700; `bench/daemon_pass.py --gc-young 700` against the default
    # shows both); cyclic garbage is still collected once that many objects accumulate
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    trim_heap()
    return gc.get_freeze_count()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes  # (imported already: the openat2 choke point, cgroupfs/files.py)

        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):   # not glibc: musl has no malloc_trim
        return None
    return trim


def trim_heap() -> bool:
    """Give the free pages of the C heap back to the kernel (glibc's ``malloc_trim``:
    the top of the heap and whole free pages inside it).  Start-up (the policy applied to
    every group, the first pass's catch-up) leaves several MiB free but resident; at
    1,000 groups this was 6 MiB of the daemon's RSS (issue #16: at most 80 MiB).  About
    0.1 ms on the host.  False where there is no malloc_trim."""
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))


def apply_favordynmods(cfg: Config, cgroup_root: str | Path, *,
                       mountinfo: str | Path = "/proc/self/mountinfo",
                       remount: Remount | None = None) -> bool:
    """``[placement] favordynmods``: turn the option on for the cgroup2 mount before the
    placer starts.  True when it is on afterwards.  Never raises: a refusal is logged as an
    error with its fix, and the daemon runs on without it (each move then waits for an RCU
    grace period, see docs/placement.md)."""
    if not cfg.favordynmods:
        return False
    from governor.cgroupfs import mount
    from governor.errors import GovernorError, MountError

    try:
        changed = mount.favor_dynmods(cgroup_root, mountinfo=mountinfo, remount=remount)
    except MountError as e:
        error, fix = e.detail, e.fix
    except (GovernorError, OSError) as e:
        error, fix = str(e), "needs Linux 6.0+ and root"
    else:
        if changed:
            log.info("favordynmods turned on for the cgroup2 mount: moves no longer wait "
                     "for an RCU grace period", extra={"cgroup_root": str(cgroup_root)})
        else:
            log.debug("favordynmods already on", extra={"cgroup_root": str(cgroup_root)})
        return True
    log.error("favordynmods not turned on: placement works, each move waits for an RCU grace "
              "period", extra={"error": error, "fix": fix})
    return False


def keep_warm_for(tree: Tree, keep_warm: float,
                  proc_cgroup: str = "/proc/self/cgroup") -> float:
    """``[placement] keep_warm`` as it may run: its no-op migrations write the daemon's own
    cgroup, which with the systemd driver is governor.service's: only when systemd
    delegated that unit to governor (``Delegate=yes``), else 0 (off)."""
    if keep_warm <= 0 or tree.driver is None:
        return keep_warm
    try:
        with open(proc_cgroup) as f:
            own = next((line.split("::", 1)[1].strip() for line in f
                        if line.startswith("0::")), "")
    except OSError:
        own = ""
    if own and delegated(tree.fs, own.strip("/")) is not None:
        return keep_warm
    log.info("keep_warm off: the daemon's own cgroup is not delegated to it (Delegate=yes "
             "in governor.service turns it on)", extra={"cgroup": own or "unknown"})
    return 0.0


def _drift_watch(fs: Any) -> Any:
    """The reconcile's inotify watch (None without inotify: every reconcile reads all)."""
    from governor.enforce.drift import DriftWatch

    try:
        return DriftWatch(fs)
    except OSError as e:
        log.warning("no inotify for drift: each reconcile reads every managed file",
                    extra={"error": e.strerror})
        return None


class PolicyRecorder:
    """The enforcer's recorder (:data:`governor.enforce.keeper.Recorder`): each applied
    policy's audit row (``applied_policies``) and its price plans
    (:func:`governor.billing.history.record_price_plans`: bills read prices from there).
    While the database is down they wait here, in order, and :meth:`flush` (each sampling
    pass) records them once it answers: a policy applied during an outage still gets its
    price plans recorded.  Never raises into an apply.  (A restart during the outage
    re-applies the policy in force, which is recorded then; one applied and replaced during
    the outage before a restart is not.)"""

    def __init__(self, db: Any, node: str) -> None:
        self.db = db
        self.node = node
        self.pending: list[tuple[datetime, str, str, list[dict[str, str]], Any]] = []
        self.recorded = 0
        self._lock = threading.Lock()

    def __call__(self, digest: str, trigger: str, outcomes: list[Any],
                 plans: Mapping[str, Any]) -> None:
        writes = [{"path": o.action.path, "file": o.action.file or "", "kind": o.action.kind,
                   "value": o.action.new or "", "ok": "yes" if o.ok else f"no: {o.error}"}
                  for o in outcomes]
        with self._lock:
            self.pending.append((datetime.now(UTC), digest, trigger, writes, dict(plans)))
            if len(self.pending) > MAX_PENDING_POLICIES:
                old = self.pending.pop(0)
                log.error("applied policy dropped unrecorded: too many waiting for the "
                          "database", extra={"digest": old[1][:12], "trigger": old[2]})
        if not self.db.up:
            log.warning("applied policy not recorded yet: the database is down; it is "
                        "recorded, with its price plans, when the database answers",
                        extra={"digest": digest[:12], "trigger": trigger})
        self.flush()

    def flush(self) -> int:
        """Record what waits, oldest first; returns how many were recorded."""
        from sqlalchemy.exc import DBAPIError, OperationalError

        from governor.billing.history import record_price_plans
        from governor.store.gate import reason
        from governor.store.service import record_applied_policy

        n = 0
        with self._lock:
            while self.pending and self.db.up:
                at, digest, trigger, writes, plans = self.pending[0]
                try:
                    with self.db.scope() as session:
                        record_applied_policy(session=session, node=self.node, applied_at=at,
                                              policy_hash=digest, trigger=trigger,
                                              writes=writes)
                        record_price_plans(session=session, plans=plans)
                except DBAPIError as e:
                    if isinstance(e, OperationalError) or e.connection_invalidated:
                        self.db.lost(reason(e))
                        return n
                    log.exception("applied policy not recorded", extra={
                        "digest": digest[:12], "trigger": trigger})
                except Exception:
                    if not self.db.up:
                        return n
                    log.exception("applied policy not recorded", extra={
                        "digest": digest[:12], "trigger": trigger})
                else:
                    n += 1
                    self.recorded += 1
                    if (datetime.now(UTC) - at).total_seconds() > 5:
                        log.info("applied policy recorded after the database came back",
                                 extra={"digest": digest[:12], "trigger": trigger,
                                        "applied_at": at.isoformat(timespec="seconds")})
                self.pending.pop(0)
        return n


class DeferredSink:
    """The OOM watcher's event sink: events go to the database, or wait here (bounded,
    oldest dropped first) while it is down and are stored by :meth:`flush` once it answers.
    :meth:`totals` needs the database (while it is down the watcher starts from the
    kernel's counters and logs so)."""

    def __init__(self, sink: Any, db: Any) -> None:
        self.sink = sink
        self.db = db
        self.pending: list[Any] = []
        self.failed = 0
        self._lock = threading.Lock()

    def totals(self, path: str, cgroup_id: int) -> dict[str, int]:
        return dict(self.sink.totals(path, cgroup_id))

    def totals_many(self, keys: Sequence[tuple[str, int]]
                    ) -> dict[tuple[str, int], dict[str, int]]:
        return dict(self.sink.totals_many(keys))

    def record(self, events: Sequence[Any]) -> None:
        with self._lock:
            self.pending.extend(events)
            if len(self.pending) > MAX_PENDING_EVENTS:
                lost = len(self.pending) - MAX_PENDING_EVENTS
                del self.pending[:lost]
                log.error("OOM events dropped unstored: too many waiting for the database",
                          extra={"events": lost})
        if not self.db.up:
            self.failed += 1
            log.warning("OOM events not stored yet: the database is down; stored when it "
                        "answers", extra={"events": len(events)})
        self.flush()

    def flush(self) -> int:
        from sqlalchemy.exc import DBAPIError, OperationalError

        from governor.store.gate import reason

        with self._lock:
            batch = self.pending
            if not batch or not self.db.up:
                return 0
            try:
                self.sink.record(batch)
            except DBAPIError as e:
                self.failed += 1
                if isinstance(e, OperationalError) or e.connection_invalidated:
                    self.db.lost(reason(e))
                else:
                    log.exception("OOM events not stored, will retry",
                                  extra={"events": len(batch)})
                return 0
            except Exception:
                self.failed += 1
                log.exception("OOM events not stored, will retry", extra={"events": len(batch)})
                return 0
            self.pending = []
            return len(batch)


class Daemon:
    #: the spool-drain job is scheduled (not paused); and whether it should be
    _drain_on = True
    _drain_wanted = True
    _wakeup_before = -1

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

    def _stop_if_asked(self) -> None:
        """A SIGTERM/SIGINT during set-up ends it here: exit status 0, nothing applied."""
        if self.stop_event.is_set():
            log.info("stop requested during start-up: exiting before the policy is applied")
            raise SystemExit(0)

    def _install_signals(self) -> dict[int, Any]:
        """SIGHUP, SIGTERM, SIGINT -> :meth:`_on_signal`; the handlers they replace (none
        outside the main thread, where Python cannot install one)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        # a signal the kernel hands to another thread interrupts nothing in the main
        # one, whose handler then runs only when its select() returns: the signal's
        # byte in the wake pipe ends that wait at once
        self._wakeup_before = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        return {sig: signal.signal(sig, self._on_signal)
                for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}

    def _restore_signals(self) -> None:
        for sig, handler in self._signals_before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if self._signals_before:
            signal.set_wakeup_fd(self._wakeup_before)
        self._signals_before = {}

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
        self.db = Database(cfg.database_url, config_hint=cfg.source or "FILE")
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
        self.sampler = Sampler(self.fs, layout, cfg.node, slow_every=cfg.slow_every)
        self.enforcer = Enforcer(self.fs, layout, cfg.policy,
                                 iocost_devices=cfg.iocost_devices, recorder=recorder,
                                 on_created=self.sampler.expect_birth,
                                 executor=self.tree.executor, drift_watch=_drift_watch(self.fs))
        self.watcher = PolicyWatcher(cfg.policy, watch=True)
        #: the groups' writable-layer bytes (containers from images), filled into each pass
        self.storage = StorageMeter(
            Pool.from_config(cfg),
            self._storage_limits)
        self.spool = Spool(Path(cfg.state_dir) / (cfg.subtree.replace("/", "_") + ".spool"),
                           max_samples=cfg.spool_max_samples)
        self.writer = SpoolingWriter(spool=self.spool, session_scope=self.scope)
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
        self._last_pass_start: float | None = None
        #: monotonic start of the sampling pass in progress (None: none running)
        self._pass_running_since: float | None = None
        #: (wall start, seconds, groups sampled) of the last pass
        self._last_pass: tuple[datetime, float, int] | None = None
        #: whole passes (read, store, meter, publish): count, total and longest seconds
        self.pass_seconds = (0, 0.0, 0.0)
        self._stored_last = True

    # -- jobs ----------------------------------------------------------------------------
    def _watch(self) -> None:
        if self.watcher.changed():
            log.info("policy files changed", extra={"path": self.cfg.policy})
            self.reload_event.set()

    def _next_watch(self) -> float:
        return time.monotonic() + (WATCH_INTERVAL if self.watcher.fileno() is None
                                   else WATCH_SAFETY)

    def _reconcile(self) -> None:
        try:
            self.enforcer.reconcile()
        except Exception:
            log.exception("reconcile pass failed")

    def _policy_applied(self) -> None:
        pol = self.enforcer.policy
        if pol is None:
            return
        self.oom.set_settings({g.path: g.oom for g in pol.groups()})

    def sample(self, *, final: bool = False) -> None:
        """One sampling pass: read, store (or spool), meter, watch, publish; ``final``:
        the last before exit, which writes every meter step held."""
        start = time.monotonic()
        self._pass_running_since = start
        try:
            self._sample(start, final=final)
        finally:
            self._pass_running_since = None
            took = time.monotonic() - start
            n, total, longest = self.pass_seconds
            self.pass_seconds = (n + 1, total + took, max(longest, took))
            if (n + 1) % TRIM_PASSES == 0:
                trim_heap()   # what a burst (a reload, a drain, new groups) left free

    def _store(self, samples: Sequence[Any]) -> str:
        """Store a pass's samples, or spool them while the database is down; returns
        "stored", "spooled", "gap" (the spool was full) or "error"."""
        node = self.cfg.node
        if not self.db.up:
            return "spooled" if self.spool.put(node, samples, reason=self.db.problem
                                               or "database down") else "gap"
        try:
            outcome = self.writer.submit(node, samples)
        except Exception as e:
            # not a connection problem (those spool inside submit): kept all the same
            log.exception("storing samples failed: spooled")
            outcome = "spooled" if self.spool.put(
                node, samples, reason=f"storing failed: {type(e).__name__}") else "gap"
            return "error" if outcome == "spooled" else outcome
        if outcome not in ("stored", "queued"):
            self.db.lost(self.writer.last_error or "a write failed")
        return outcome

    def _meter(self, samples: Sequence[Any], *, flush: bool = False) -> None:
        """Meter the pass just stored: in memory, against the previous pass's samples
        (nothing read back), held in :attr:`pending` and written every ``write_every``
        passes (and with ``flush``) in one transaction; or, when the store holds samples
        not metered yet, from the store's rows (the anchors are then resolved again)."""
        from governor.metering.catchup import load_anchors, meter
        from governor.store.metered import write_metered

        node = self.cfg.node
        step = None
        try:
            if not self._meter_ready:
                self.pending.clear()  # the store's meter makes it again from the rows
                with self.scope() as session:
                    meter(session=session, node=node)
                    failpoint("store.meter.before_commit")  # crash tests
            else:
                w = self.writer
                unknown = self.meter.unknown(samples)
                resolved = None
                if unknown:
                    with self.scope() as session:
                        resolved = load_anchors(session=session, node=node,
                                                node_id=w.node_id, samples=unknown, ids=w.ids)
                # the rollups are made from what Pending merged, when it writes
                step = self.meter.step(samples, resolved, with_rollups=False)
                self.pending.add(step, w.ids)
                if flush or self.pending.passes >= self.cfg.write_every:
                    with self.scope() as session:
                        write_metered(session=session, node_id=w.node_id,
                                      metered=self.pending.metered())
                        failpoint("store.meter.before_commit")  # crash tests
                    self.pending.clear()
        except Exception:
            self.db_write_errors += 1
            self._meter_ready = False
            self.pending.clear()
            log.exception("metering failed")
            return
        if step is None:
            self.meter.forget()
            self._meter_ready = True
        else:
            self.meter.advance(step)

    def _draining(self, on: bool) -> None:
        """Ask for the spool-drain job to run (while the spool holds anything) or to pause
        (issue #16: an empty spool's job still cost a scheduler dispatch every 5 s).  Any
        thread may ask; the main loop does it (:meth:`_apply_draining`): a job that called
        the scheduler itself could wait forever on the lock its shutdown holds."""
        before, self._drain_wanted = self._drain_wanted, on
        if on != before or on != self._drain_on:
            with contextlib.suppress(OSError, AttributeError):
                os.write(self._wake_w, b"\0")

    def _apply_draining(self) -> None:
        """The main thread's half of :meth:`_draining` (and at start, before the scheduler
        runs)."""
        on = self._drain_wanted
        if on == self._drain_on:
            return
        scheduler = getattr(self, "scheduler", None)
        if scheduler is None or scheduler.get_job("spool-drain") is None:
            return
        if on:
            scheduler.resume_job("spool-drain")
        else:
            scheduler.pause_job("spool-drain")
        self._drain_on = on

    def _drain(self) -> None:
        """The spool's backlog written between passes, a few batches at a time (a pass
        may take the writer's lock between steps), each step metered from the store."""
        from governor.metering.catchup import meter
        from governor.store.gate import reason

        while self.spool and self.db.up and not self.stop_event.is_set():
            try:
                with self.writer.lock:
                    n = self.writer.drain(max_entries=DRAIN_STEP)
                    with self.scope() as session:
                        meter(session=session, node=self.cfg.node)
                    self._meter_ready = False
            except Exception as e:
                from sqlalchemy.exc import DBAPIError, OperationalError

                if isinstance(e, OperationalError) or (
                        isinstance(e, DBAPIError) and e.connection_invalidated):
                    self.db.lost(reason(e))
                else:
                    self.db_write_errors += 1
                    log.exception("draining the spool failed")
                return
            if n:
                log.info("spool drained a step", extra={
                    "batches": n, "spool_depth": self.spool.pending_samples()})
            time.sleep(DRAIN_PAUSE)
        with self.writer.lock:   # a pass spools under it: never paused with work queued
            if not self.spool:
                self._draining(False)

    def _storage_limits(self) -> dict[str, int | None]:
        pol = self.enforcer.policy
        return {} if pol is None else {g.path: g.storage_max for g in pol.groups()}

    def _sample(self, start: float, *, final: bool = False) -> None:
        from governor.exporter.render import Health, Snapshot, render

        if self._last_pass_start is not None and \
                start - self._last_pass_start > 2 * self.cfg.sample_interval:
            self.late_passes += 1
            log.warning("sampling pass late", extra={
                "gap_s": round(start - self._last_pass_start, 3)})
        self._last_pass_start = start
        p = self.sampler.sample()
        self.storage.fill(p.samples)
        outcome = "skipped"
        if self.db.check():   # while down: one attempt per pass (schema checked then)
            self.recorder.flush()
            self.oom_sink.flush()
        if p.samples:
            with self.writer.lock:
                outcome = self._store(p.samples)
                if outcome == "stored":
                    self._meter(p.samples, flush=final)
                else:
                    self._meter_ready = False
                    self._draining(True)   # the drain job runs while the spool holds any
            if outcome == "queued":
                self._stored_last = True
            elif outcome != "stored":
                self.db_write_errors += 1
                # once per outage at warning level (the database's state is logged apart)
                log.log(logging.WARNING if self._stored_last else logging.DEBUG,
                        "samples not stored", extra={"outcome": outcome,
                                                     "samples": len(p.samples),
                                                     "spool_depth": self.spool.pending_samples()})
                self._stored_last = False
            else:
                self._stored_last = True
        if p.samples:  # one bad group costs its own sample, not the pass (its errors
            # are counted in governor_sample_errors_total)
            self.last_success = p.started.timestamp()
        self.oom.on_sample(self.sampler.latest)
        pol = self.enforcer.policy
        self.exporter.set_policy(pol.digest if pol is not None else None)
        limits = {}
        if pol is not None:
            limits.update({t.name: t.limits for t in pol.tenants.values()})
            limits.update({g.path: g.limits for g in pol.groups()})
        health = Health(
            pass_duration=p.duration, last_success=self.last_success,
            groups_sampled=len(p.samples), placements=dict(self.placer.counters.placements),
            reloads=dict(self.enforcer.reloads), drift=dict(self.enforcer.drift),
            enforce_write_errors=self.enforcer.write_errors,
            policy_failed_writes=self.enforcer.last_failed, database_up=self.db.up,
            db_write_errors=self.db_write_errors + self.oom.db_write_errors
            + self.oom_sink.failed,
            spool_depth=self.spool.pending_samples(),
            spool_write_errors=dict(self.spool.write_errors),
            alerts=dict(self.alerter.results) if self.alerter else {},
            sample_errors=dict(self.sampler.error_counts),
            exporter_dropped=self.exporter.dropped(),
            storage_full=dict(self.storage.full_counts))
        snap = Snapshot(
            node=self.cfg.node, groups=dict(self.sampler.latest),
            samples={s.path: s for s in p.samples}, limits=limits,
            costs=dict(self.costs), pressure_warnings=dict(self.oom.warnings),
            health=health, effective=dict(self.sampler.effective))
        # rendered by the first scrape that asks for it, not here
        self.exporter.publish(partial(render, snap), created=p.started.timestamp())
        self._last_pass = (p.started, p.duration, len(p.samples))
        self.exporter.set_problems(self.problems())
        self.notifier.notify(self.status_line())
        if p.duration > self.cfg.sample_interval:
            self.slow_passes += 1
            log.warning("slow sampling pass", extra={"duration_s": round(p.duration, 3),
                                                     "interval_s": self.cfg.sample_interval})

    def problems(self) -> list[str]:
        """What keeps the governor from being fully healthy now (empty: nothing)."""
        out = []
        if not self.db.up:
            out.append(f"{self.db.problem or 'database down'} "
                       f"({self.spool.pending_samples()} samples spooled)")
        if self.enforcer.last_failed:
            out.append(f"{self.enforcer.last_failed} cgroup writes failed in the last apply "
                       "of the policy (see the log's \"write failed\" lines)")
        return out

    def status_line(self) -> str:
        """``STATUS=`` for sd_notify: the state, tenants, groups and the last pass."""
        problems = self.problems()
        state = "running" if not problems else "degraded: " + "; ".join(problems)
        if len(state) > 300:
            state = state[:297] + "..."
        pol = self.enforcer.policy
        size = "no policy" if pol is None else \
            f"{len(pol.tenants)} tenants, {sum(1 for _ in pol.groups())} groups"
        if self._last_pass is None:
            last = "no sampling pass yet"
        else:
            at, secs, n = self._last_pass
            last = (f"last pass {at.astimezone(UTC).strftime('%H:%M:%SZ')} took "
                    f"{secs:.3f}s, {n} groups sampled")
        return f"STATUS={state}; {size}; {last}"

    def _watchdog_ok(self, now: float) -> bool:
        """False while a sampling pass has been running for longer than WatchdogSec=."""
        since = self._pass_running_since
        return self.watchdog is None or since is None or now - since <= 2 * self.watchdog

    def _update_costs(self) -> None:
        """The billed cost so far this month per tenant and currency (from rollups): its
        own job, every COST_INTERVAL, never inside a pass; the gauge shows it from the
        next pass on."""
        if not self.db.up:
            return  # the last costs stay; recomputed once the database answers
        pol = self.enforcer.policy
        if pol is None:
            return
        from governor.billing.history import with_recorded_prices
        from governor.billing.report import invoice
        from governor.errors import GovernorError

        now_dt = datetime.now(UTC).replace(microsecond=0)
        month = now_dt.replace(day=1, hour=0, minute=0, second=0)
        costs: dict[tuple[str, str], Any] = {}
        try:
            with self.scope() as session:
                priced = with_recorded_prices(pol, session)
                for t in pol.tenants.values():
                    if t.plan is None or now_dt <= month:
                        continue
                    try:
                        inv = invoice(session=session, policy=priced, tenant=t.name,
                                      start=month, end=now_dt)
                    except GovernorError:
                        continue  # no data for this tenant yet: no series
                    costs[(t.name, inv.currency)] = inv.total
            self.costs = costs
        except Exception:
            log.exception("cost gauge update failed")

    def _retention(self) -> None:
        from governor.store.service import apply_retention

        if not self.db.up:
            log.debug("retention skipped: the database is down")
            return
        try:
            with self.scope() as session:
                r = apply_retention(session=session, before=datetime.now(UTC) - timedelta(
                    seconds=self.cfg.retention_raw))
            log.info("retention", extra={"result": str(r)})
        except Exception:
            log.exception("retention failed")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_event.set()
        else:
            self.stop_event.set()
        with contextlib.suppress(OSError, AttributeError):
            os.write(self._wake_w, b"\0")

    def _wait(self, seconds: float) -> bool:
        """The main loop's wait: until a signal, a possible policy change or ``seconds``
        (issue #16: no wake-ups in between; the loop woke 5 times a second and a
        scheduler job checked the policy every second).  True when the policy files may
        have changed."""
        fd = self.watcher.fileno()
        fds = [self._wake_r] if fd is None else [self._wake_r, fd]
        ready, _, _ = select.select(fds, [], [], seconds)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        if fd is not None and fd in ready:
            self.watcher.drain()
            return True
        return False

    def _close_wake(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def run(self) -> int:
        try:
            return self._run()
        finally:
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
        self.scheduler.add_job(self._reconcile, "interval", id="reconcile",
                               seconds=self.cfg.reconcile_interval)
        self.scheduler.add_job(self._retention, "interval", id="retention",
                               seconds=RETENTION_INTERVAL)
        self.scheduler.add_job(self._drain, "interval", id="spool-drain",
                               seconds=min(self.cfg.sample_interval, DRAIN_INTERVAL))
        self._drain_wanted = bool(self.spool)
        self._apply_draining()
        self.scheduler.add_job(self._update_costs, "interval", id="costs",
                               seconds=COST_INTERVAL)
        for name, seconds, fn in [*self.placer.jobs(self.cfg.rescan_interval), *self.jobs]:
            self.scheduler.add_job(fn, "interval", id=name, seconds=seconds)
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
                "pass_max_s": round(self.pass_seconds[2], 3)})
        return 0
