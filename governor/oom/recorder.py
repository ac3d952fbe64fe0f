"""From ``memory.events`` counters to OOM events: deltas, warnings, victims, the output.

The part of :class:`~governor.oom.watch.OomWatcher` that records: a counter's growth
within an incarnation becomes one event of that count (never one per notification: the
kernel rate-limits them); a ``high`` event or a crossed pressure threshold raises a
warning, at most one per group per ``warn_interval``; a kill waits up to ``victim_wait``
seconds for its victims' "Killed process" lines (:mod:`governor.oom.kmsg`) and is split
into one event per victim; the events go to the sink (kept and retried when the database
is down), the actions and the listeners.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from governor.cgroupfs.reader import GroupStats
from governor.oom.events import COUNTER_KINDS, KILL_KINDS, PRESSURE, OomEvent
from governor.oom.kmsg import Victim
from governor.oom.watched import Pending, Watched, WatcherState

log = logging.getLogger("governor.oom")


class EventRecorder(WatcherState):
    """Counters into events, warnings and victims, for :class:`~governor.oom.watch.OomWatcher`."""

    # -- counters -> events ---------------------------------------------------------------
    def check(self, path: str) -> None:
        w = self._groups.get(path)
        if w is None:
            return
        counters = self._read_counters(path)
        if counters is None:
            return
        self._apply(w, counters, missed=False)

    def _apply(self, w: Watched, counters: Mapping[str, int], *, missed: bool,
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
                self._pending.append(Pending(ev, time.monotonic() + self.victim_wait))
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
            settings = self._with_pressure   # the groups with thresholds, not every group
        for path, s in settings.items():
            st = latest.get(path)
            p = None if st is None else st.psi.get("memory")
            if p is None:
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
        ready: list[Pending] = []
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
