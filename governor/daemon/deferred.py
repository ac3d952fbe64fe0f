"""What waits in memory for the database (enforcement needs none, :mod:`governor.store.gate`):
the applied policies with their price plans (:class:`PolicyRecorder`) and the OOM events
(:class:`DeferredSink`), each bounded, oldest dropped first, and stored in order by the
``flush`` of each sampling pass once the database answers.  (The samples wait in the
spool: :mod:`governor.store.spool`.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("governor.daemon")

#: at most this many applied policies / OOM events wait in memory for the database
MAX_PENDING_POLICIES = 1000
MAX_PENDING_EVENTS = 10_000


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
