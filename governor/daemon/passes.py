"""The sampling pass, the daemon's read path each ``[sampling] interval``: the groups read
(:class:`~governor.metering.sampler.Sampler`), their writable layers' bytes filled in, the
samples stored (or spooled while the database is down, the spool drained by its own job
between passes), metered in memory and written every ``write_every`` passes, handed to the
OOM watch, and published to the exporter with the daemon's health and sd_notify status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from governor.daemon.heap import TRIM_PASSES, settle_heap, trim_heap
from governor.failpoint import failpoint

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from governor.billing.running import RunningBills
    from governor.config import Config
    from governor.daemon.deferred import DeferredSink, PolicyRecorder
    from governor.daemon.pace import OpenPace
    from governor.enforce.keeper import Enforcer
    from governor.exporter.server import Exporter
    from governor.metering.meter import Meter, Pending
    from governor.metering.sampler import Sampler
    from governor.metering.storage import StorageMeter
    from governor.oom.actions import WebhookAlerter
    from governor.oom.watch import OomWatcher
    from governor.placement import Placer
    from governor.sdnotify import Notifier
    from governor.store.gate import Database
    from governor.store.spool import Spool, SpoolingWriter

log = logging.getLogger("governor.daemon")

#: a pass running this long (and at least three intervals) is logged once with where its
#: thread is: a pass waiting on something that never answers says what it waits on
STUCK_AFTER = 30.0

#: the spool's backlog drains by its own job (never inside a pass): this often at most,
#: DRAIN_STEP batches per step, with DRAIN_PAUSE between steps for a pass to go in
DRAIN_INTERVAL = 5.0
DRAIN_STEP = 8
DRAIN_PAUSE = 0.05

#: the stages of a pass whose CPU time is counted apart: the reads (what the sampler
#: alone would cost), the raw samples stored (or spooled), the meter, the rest of the
#: pass (writable layers, OOM watch, the exposition's snapshot, status, pace), and the
#: collector's runs in the pass's thread (out of whichever stage they fell in)
PASS_STAGES = ("read", "store", "meter", "other", "gc")


def _render(snap: Any, samples: Sequence[Any]) -> bytes:
    """The exposition of a pass: ``snap`` with the pass's ``samples`` by path."""
    import dataclasses

    from governor.exporter.render import render

    return render(dataclasses.replace(snap, samples={s.path: s for s in samples}))


class SamplingPass:
    """The :class:`~governor.daemon.Daemon`'s sampling pass, its storing, metering and
    publishing, the spool's drain job, and the health it reports."""

    # what it uses of the daemon (made by Daemon.__init__ and Daemon._setup)
    cfg: Config
    db: Database
    scope: Callable[[], AbstractContextManager[Connection]]
    spool: Spool
    writer: SpoolingWriter
    recorder: PolicyRecorder
    oom_sink: DeferredSink
    sampler: Sampler
    storage: StorageMeter
    meter: Meter
    pending: Pending[int]
    _meter_ready: bool
    enforcer: Enforcer
    placer: Placer
    oom: OomWatcher
    alerter: WebhookAlerter | None
    exporter: Exporter
    notifier: Notifier
    stop_event: threading.Event
    _wake_w: int
    costs: dict[tuple[str, str], Any]
    running_bills: RunningBills
    last_success: float | None
    db_write_errors: int
    slow_passes: int
    late_passes: int
    _last_pass_start: float | None
    _pass_running_since: float | None
    #: the thread running the pass (while one runs), and whether it was logged as stuck
    _pass_thread: int | None = None
    _stuck_logged = False
    _last_pass: tuple[datetime, float, int] | None
    pass_seconds: tuple[int, float, float]
    _stored_last: bool
    #: the policy whose limits the exposition shows, and those limits (_limits_of)
    _limits_cache: tuple[Any, dict[str, Any]] | None = None
    pace: OpenPace
    #: seconds this pass spent looking up anchors of incarnations the meter did not hold
    _anchors_s = 0.0
    #: (monotonic start, sampler passes) of groups being opened over several passes
    _opening: tuple[float, int] | None = None
    #: CPU seconds of the passes' thread by stage since start (:data:`PASS_STAGES`):
    #: ``governor_pass_cpu_seconds_total``, and the stop line's split
    pass_cpu: dict[str, float]
    #: CPU seconds of the scheduled jobs between the passes, by job id (Daemon._timed)
    job_cpu: dict[str, float]
    #: the pass thread's CPU clock when the last stage was counted
    _cpu_mark = 0.0
    #: CPU seconds of the collector's runs in the pass's thread since the last mark, and
    #: the thread CPU clock at the start of the run in progress (:meth:`_gc_callback`)
    _gc_s = 0.0
    _gc_start: float | None = None
    #: the spool-drain job is scheduled (not paused); and whether it should be
    _drain_on = True
    _drain_wanted = True

    def sample(self, *, final: bool = False) -> None:
        """One sampling pass: read, store (or spool), meter, watch, publish; ``final``:
        the last before exit, which writes every meter step held."""
        start = time.monotonic()
        self._pass_thread, self._stuck_logged = threading.get_ident(), False
        self._pass_running_since = start
        self._cpu_mark = time.thread_time()
        try:
            self._sample(start, final=final)
        finally:
            self._pass_running_since = None
            self._cpu_to("other")
            took = time.monotonic() - start
            n, total, longest = self.pass_seconds
            self.pass_seconds = (n + 1, total + took, max(longest, took))
            if (n + 1) % TRIM_PASSES == 0:
                trim_heap()   # what a burst (a reload, a drain, new groups) left free

    def _cpu_to(self, stage: str) -> None:
        """Count the pass thread's CPU time since the last mark to ``stage``, but for the
        collector's runs in it, which count to ``gc``."""
        now = time.thread_time()
        spent, self._gc_s = self._gc_s, 0.0
        self.pass_cpu[stage] += now - self._cpu_mark - spent
        self.pass_cpu["gc"] += spent
        self._cpu_mark = now

    def _gc_callback(self, phase: str, _info: dict[str, int]) -> None:
        """``gc.callbacks``: time the collector's runs in the pass's thread (a run in
        another thread is that thread's, beyond the passes)."""
        if self._pass_running_since is None or threading.get_ident() != self._pass_thread:
            return
        if phase == "start":
            self._gc_start = time.thread_time()
        elif self._gc_start is not None:
            self._gc_s += time.thread_time() - self._gc_start
            self._gc_start = None

    def check_stuck(self, now: float) -> float | None:
        """Called by the main loop: log once a pass running for :data:`STUCK_AFTER` (and
        three intervals), with the innermost frames of its thread; returns when to look
        again (None: no pass running)."""
        since, tid = self._pass_running_since, self._pass_thread
        if since is None or tid is None:
            return None
        due = since + max(STUCK_AFTER, 3 * self.cfg.sample_interval)
        if now < due:
            return due
        if not self._stuck_logged:
            self._stuck_logged = True
            import sys
            import traceback

            frame = sys._current_frames().get(tid)
            where = [] if frame is None else traceback.extract_stack(frame)[-8:]
            log.warning("sampling pass still running", extra={
                "running_s": round(now - since, 1),
                "where": " <- ".join(f"{f.name} ({f.filename}:{f.lineno})"
                                     for f in reversed(where))})
        return None

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
        not metered yet, from the store's rows (the anchors are then resolved again).
        (The sampler spreads its slow tier over the passes, governor/metering/tiers.py, so
        the pass that writes is no heavier for falling on a sixth pass.)"""
        from governor.metering.catchup import load_anchors, meter
        from governor.store.metered import write_metered

        node = self.cfg.node
        anchors = None
        try:
            if not self._meter_ready:
                self.pending.clear()  # the store's meter makes it again from the rows
                with self.scope() as session:
                    meter(session=session, node=node)
                    failpoint("store.meter.before_commit")  # crash tests
                self.running_bills.invalidate()   # it may have filled settled hours
            else:
                w = self.writer

                def resolve(unknown: list[Any]) -> Any:
                    t0 = time.monotonic()
                    try:
                        with self.scope() as session:
                            return load_anchors(session=session, node=node,
                                                node_id=w.node_id, samples=unknown, ids=w.ids)
                    finally:
                        self._anchors_s += time.monotonic() - t0

                # one loop into what Pending holds (C), the anchors the meter does not
                # hold resolved from the store; the rollups are made from what Pending
                # merged, when it writes
                anchors = self.meter.step_into(samples, resolve, self.pending, w.ids)
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
        if anchors is None:
            self.meter.forget()
            self._meter_ready = True
        else:
            self.meter.advance_to(anchors)

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
                self.running_bills.invalidate()   # the backlog's hours are in the rollups
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
        from governor.exporter.render import Health, Snapshot

        if self._last_pass_start is not None and \
                start - self._last_pass_start > 2 * self.cfg.sample_interval:
            self.late_passes += 1
            log.warning("sampling pass late", extra={
                "gap_s": round(start - self._last_pass_start, 3)})
        self._last_pass_start = start
        new_before = self.writer.incarnations.new_s
        self._anchors_s = 0.0
        self._cpu_to("other")
        p = self.sampler.sample()
        self._cpu_to("read")
        self._log_opening(p)
        self.storage.fill(p.samples)
        outcome = "skipped"
        if self.db.check():   # while down: one attempt per pass (schema checked then)
            self.recorder.flush()
            self.oom_sink.flush()
        if p.samples:
            with self.writer.lock:
                self._cpu_to("other")
                outcome = self._store(p.samples)
                self._cpu_to("store")
                if outcome == "stored":
                    self._meter(p.samples, flush=final)
                    self._cpu_to("meter")
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
        limits = self._limits_of(pol)
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
            pass_cpu=dict(self.pass_cpu), job_cpu=dict(self.job_cpu),
            exporter_dropped=self.exporter.dropped(),
            storage_full=dict(self.storage.full_counts))
        snap = Snapshot(
            node=self.cfg.node, groups=dict(self.sampler.latest), limits=limits,
            costs=dict(self.costs), pressure_warnings=dict(self.oom.warnings),
            health=health, effective=dict(self.sampler.effective))
        # rendered by the first scrape that asks for it, not here; the samples by path
        # too (a pass no scrape asks for makes nothing for the exposition: issue #16)
        self.exporter.publish(partial(_render, snap, p.samples),
                              created=p.started.timestamp())
        self._last_pass = (p.started, p.duration, len(p.samples))
        self.exporter.set_problems(self.problems())
        if self.notifier.enabled:   # (the status line is not made for nobody)
            self.notifier.notify(self.status_line())
        if p.samples:
            # what the opened groups cost (first reads, incarnation rows, anchors) and the
            # known ones paces how many the next pass opens (governor/daemon/pace.py)
            # (a pass after which Pending holds nothing wrote the metered rows, or metered
            # from the store: the dear kind; so will the next when it is the write_every-th)
            pending = self.pending.passes
            self.sampler.first_read_max = self.pace.after(
                groups=len(p.samples), opened=p.opened, took=time.monotonic() - start,
                new_s=p.opened_s + self._anchors_s
                + self.writer.incarnations.new_s - new_before,
                wrote=pending == 0,
                writes_next=not self._meter_ready or pending + 1 >= self.cfg.write_every)
        if p.duration > self.cfg.sample_interval:
            self.slow_passes += 1
            log.warning("slow sampling pass", extra={"duration_s": round(p.duration, 3),
                                                     "interval_s": self.cfg.sample_interval})

    def _log_opening(self, p: Any) -> None:
        """Many groups new at once (a start) are opened over several passes: the first such
        pass and the one that ends it are logged at info level, the others at debug."""
        if p.deferred:
            if self._opening is None:
                self._opening = (time.monotonic(), self.sampler.passes)
                level = logging.INFO
            else:
                level = logging.DEBUG
            log.log(level, "groups left for the next pass", extra={
                "deferred": len(p.deferred), "sampled": len(p.samples),
                "opened": p.opened, "opened_at_most": self.sampler.first_read_max,
                "why": "first reads are paced (governor/daemon/pace.py)"})
        elif self._opening is not None:
            since, passes = self._opening
            self._opening = None
            # what the groups opened since the start-up's freeze hold lives as long as they
            # do: frozen too, out of the full collections' way (governor/daemon/heap.py)
            frozen = settle_heap()
            log.info("every group read", extra={
                "groups": len(p.samples), "passes": self.sampler.passes - passes + 1,
                "seconds": round(time.monotonic() - since, 1), "heap_frozen": frozen})

    def _limits_of(self, pol: Any) -> dict[str, Any]:
        """The policy's limits per tenant and group path, for the exposition: made once
        per policy (a reload makes a new one), not once per pass."""
        cached = self._limits_cache
        if cached is not None and cached[0] is pol:
            return cached[1]
        limits: dict[str, Any] = {}
        if pol is not None:
            limits.update({t.name: t.limits for t in pol.tenants.values()})
            limits.update({g.path: g.limits for g in pol.groups()})
        self._limits_cache = (pol, limits)
        return limits

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
