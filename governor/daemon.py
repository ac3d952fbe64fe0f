"""``governor run``: one process that wires every piece to APScheduler and signals.

Start-up order: configuration -> database schema checked (refuses an older one and names
the command that fixes it) -> cgroup2 mount verified -> ``favordynmods`` turned on if
configured (a refusal is logged, not fatal) -> policy validated and applied
(existing groups adopted: only differing files are written) -> placement (connector +
rescan), OOM watch, exporter -> periodic jobs (sampling, reconcile, policy watch,
retention).  SIGHUP reloads the policy (a bad one is rejected, the old one stays);
SIGTERM/SIGINT stop after the job in progress, take a last sample, store it, and exit 0.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from governor.cgroupfs.mount import Remount
from governor.cgroupfs.reader import raise_nofile_limit
from governor.config import Config
from governor.enforce.cli import db_recorder, open_cgroup
from governor.enforce.keeper import Enforcer, PolicyWatcher
from governor.failpoint import failpoint
from governor.metering.sampler import Sampler

log = logging.getLogger("governor.daemon")

#: how often the policy files are checked for changes (a stat per file)
WATCH_INTERVAL = 1.0
#: how often retention runs (it is idempotent; a daily cadence would do)
RETENTION_INTERVAL = 3600.0
#: the billed-cost gauge is recomputed at most this often (it reads hourly rollups)
COST_INTERVAL = 60.0
#: the interpreter's switch interval while the placement listener runs: a thread that
#: wants the GIL gets it after this long at most from one busy in Python (CPython's
#: default is 5 ms).  An exec event must not wait behind a sampling or metering pass for
#: the default: bench/gil_wait.py measures the listener's wait both ways.
SWITCH_INTERVAL = 0.001


def settle_heap() -> int:
    """Collect, then move every object alive now to the collector's permanent generation
    (``gc.freeze``): what start-up made (modules, SQLAlchemy's metadata, the policy) lives
    as long as the daemon, and no longer has to be traversed by each full collection.
    Those held the GIL for up to 60 ms per collection at 1,000 groups (bench/gil_wait.py),
    which the placement listener waited out.  Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


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


class Daemon:
    def __init__(self, cfg: Config) -> None:
        from governor.security import InstanceLock, check_strict_modes

        self.cfg = cfg
        # as root, refuse configuration and policy files that others can change
        check_strict_modes(*([cfg.source] if cfg.source else []), cfg.policy)
        self.lock = InstanceLock(cfg.state_dir, cfg.subtree)
        self.lock.acquire()  # one instance per subtree; a second start names the holder
        try:
            self._setup(cfg)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, cfg: Config) -> None:
        from governor.exporter.server import Exporter
        from governor.oom.actions import OomActions, WebhookAlerter
        from governor.oom.kmsg import KmsgReader
        from governor.oom.store import DbSink
        from governor.oom.watch import OomWatcher
        from governor.placement import Placer
        from governor.store.db import check_schema, make_engine, scope_factory
        from governor.store.spool import Spool, SpoolingWriter

        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.jobs: list[tuple[str, float, Callable[[], Any]]] = []
        # the database first: an old schema stops us before anything is touched
        self.engine = make_engine(cfg.database_url)
        check_schema(self.engine, config_hint=cfg.source or "FILE")
        self.scope = scope_factory(self.engine)
        raise_nofile_limit()  # the sampler keeps ~12 fds per group
        self.fs = open_cgroup(cfg)
        recorder, why = db_recorder(cfg)
        if recorder is None:
            log.warning("applied policies are logged, not stored", extra={"reason": why})
        self.sampler = Sampler(self.fs, cfg.subtree, cfg.node, slow_every=cfg.slow_every)
        self.enforcer = Enforcer(self.fs, cfg.subtree, cfg.policy,
                                 iocost_devices=cfg.iocost_devices, recorder=recorder,
                                 on_created=self.sampler.expect_birth)
        self.watcher = PolicyWatcher(cfg.policy)
        self.spool = Spool(Path(cfg.state_dir) / (cfg.subtree.replace("/", "_") + ".spool"),
                           max_samples=cfg.spool_max_samples)
        self.writer = SpoolingWriter(spool=self.spool, session_scope=self.scope)
        self.placer = Placer(self.fs, cfg.subtree, lambda: self.enforcer.policy,
                             exclude=cfg.exclude_cgroups, nice=cfg.listener_nice,
                             keep_warm=cfg.keep_warm,
                             keep_warm_interval=cfg.keep_warm_interval)
        self.alerter = (WebhookAlerter(cfg.oom_webhook_url, timeout=cfg.oom_webhook_timeout,
                                       retries=cfg.oom_webhook_retries)
                        if cfg.oom_webhook_url else None)
        self.oom = OomWatcher(self.fs, cfg.subtree, cfg.node,
                              actions=OomActions(alerter=self.alerter), kmsg=KmsgReader(),
                              sink=DbSink(self.scope, cfg.node))
        self.exporter = Exporter.from_config(cfg)
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={
            "max_instances": 1, "coalesce": True, "misfire_grace_time": None})
        # health
        self.last_success: float | None = None
        self.db_write_errors = 0
        self.slow_passes = 0
        self.late_passes = 0
        self.costs: dict[tuple[str, str], Any] = {}
        self._costs_at = 0.0
        self._last_pass_start: float | None = None

    # -- jobs ----------------------------------------------------------------------------
    def _watch(self) -> None:
        if self.watcher.changed():
            log.info("policy files changed", extra={"path": self.cfg.policy})
            self.reload_event.set()

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

    def sample(self) -> None:
        """One sampling pass: read, store (or spool), meter, watch, publish."""
        from governor.exporter.render import Health, Snapshot, render
        from governor.store.service import meter

        start = time.monotonic()
        if self._last_pass_start is not None and \
                start - self._last_pass_start > 2 * self.cfg.sample_interval:
            self.late_passes += 1
            log.warning("sampling pass late", extra={
                "gap_s": round(start - self._last_pass_start, 3)})
        self._last_pass_start = start
        p = self.sampler.sample()
        outcome = "skipped"
        if p.samples:
            try:
                outcome = self.writer.submit(self.cfg.node, p.samples)
            except Exception:
                self.db_write_errors += 1
                log.exception("storing samples failed")
                outcome = "error"
            if outcome != "stored":
                self.db_write_errors += 1
                log.warning("samples not stored", extra={"outcome": outcome,
                                                         "samples": len(p.samples)})
            else:
                try:
                    with self.scope() as session:
                        meter(session=session, node=self.cfg.node)
                        failpoint("store.meter.before_commit")  # crash tests
                except Exception:
                    self.db_write_errors += 1
                    log.exception("metering failed")
        if p.samples and not p.errors:
            self.last_success = p.started.timestamp()
        self.oom.on_sample(self.sampler.latest)
        self._update_costs()
        pol = self.enforcer.policy
        limits = {}
        if pol is not None:
            limits.update({t.name: t.limits for t in pol.tenants.values()})
            limits.update({g.path: g.limits for g in pol.groups()})
        health = Health(
            pass_duration=p.duration, last_success=self.last_success,
            groups_sampled=len(p.samples), placements=dict(self.placer.counters.placements),
            reloads=dict(self.enforcer.reloads), drift=dict(self.enforcer.drift),
            enforce_write_errors=self.enforcer.write_errors,
            db_write_errors=self.db_write_errors + self.oom.db_write_errors,
            spool_depth=self.spool.pending_samples(),
            alerts=dict(self.alerter.results) if self.alerter else {})
        self.exporter.publish(render(Snapshot(
            node=self.cfg.node, groups=dict(self.sampler.latest), limits=limits,
            costs=dict(self.costs), pressure_warnings=dict(self.oom.warnings),
            health=health)), created=p.started.timestamp())
        if p.duration > self.cfg.sample_interval:
            self.slow_passes += 1
            log.warning("slow sampling pass", extra={"duration_s": round(p.duration, 3),
                                                     "interval_s": self.cfg.sample_interval})

    def _update_costs(self) -> None:
        """The billed cost so far this month per tenant and currency (from rollups)."""
        now = time.monotonic()
        if now - self._costs_at < COST_INTERVAL and self.costs:
            return
        self._costs_at = now
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

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> int:
        from governor.security import protect_self

        # before anything moves a process (self-protection, placement): see docs/placement.md
        apply_favordynmods(self.cfg, self.fs.root)
        for problem in protect_self(self.fs, self.cfg.self_cgroup,
                                    memory_min=self.cfg.self_memory_min,
                                    cpu_weight=self.cfg.self_cpu_weight):
            log.warning("self-protection incomplete", extra={"problem": problem})
        if not self.enforcer.reload(trigger="start"):
            log.error("no valid policy to start with", extra={"path": self.cfg.policy})
            return 1
        self._policy_applied()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        sys.setswitchinterval(SWITCH_INTERVAL)
        connector = self.placer.start()
        if not connector:
            log.warning("process connector unavailable: placement by rescan only",
                        extra={"rescan_interval": self.cfg.rescan_interval})
        self.oom.start()
        self.exporter.start()
        self.sample()  # a first pass right away: metrics and a baseline sample
        log.debug("start-up heap frozen", extra={"objects": settle_heap()})
        self.scheduler.add_job(self.sample, "interval", id="sample",
                               seconds=self.cfg.sample_interval)
        self.scheduler.add_job(self._reconcile, "interval", id="reconcile",
                               seconds=self.cfg.reconcile_interval)
        self.scheduler.add_job(self._watch, "interval", id="policy-watch",
                               seconds=WATCH_INTERVAL)
        self.scheduler.add_job(self._retention, "interval", id="retention",
                               seconds=RETENTION_INTERVAL)
        for name, seconds, fn in [*self.placer.jobs(self.cfg.rescan_interval), *self.jobs]:
            self.scheduler.add_job(fn, "interval", id=name, seconds=seconds)
        self.scheduler.start()
        log.info("governor running", extra={
            "subtree": self.cfg.subtree, "policy": self.cfg.policy, "node": self.cfg.node,
            "listen": self.cfg.listen, "sample_interval": self.cfg.sample_interval,
            "reconcile_interval": self.cfg.reconcile_interval, "connector": connector})
        try:
            while not self.stop_event.is_set():
                if self.reload_event.wait(0.2):
                    self.reload_event.clear()
                    if self.enforcer.reload(trigger="reload"):
                        self._policy_applied()
        finally:
            self.scheduler.shutdown(wait=True)   # the job in progress finishes
            try:
                self.sample()                    # the last samples, stored before exit
            except Exception:
                log.exception("last sampling pass failed")
            self.placer.stop()
            self.oom.close()
            if self.alerter is not None:
                self.alerter.stop()
            self.exporter.stop()
            self.sampler.close()
            self.fs.close()
            self.engine.dispose()
            log.info("governor stopped", extra={
                "passes": self.sampler.passes, "slow_passes": self.slow_passes,
                "late_passes": self.late_passes, "db_write_errors": self.db_write_errors})
        return 0
