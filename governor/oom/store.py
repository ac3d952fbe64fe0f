"""Where OOM events go: helper functions over the store's ``oom_events`` table.

Events are written with :func:`governor.store.service.record_oom_event`; the group
incarnation row (path + cgroup id = directory inode) is made first when the sampler has not
stored it yet, so every event is tied to its incarnation and :meth:`DbSink.totals` can sum
what was recorded per incarnation (the start-up comparison with the kernel's counters).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from governor.metering.sample import GroupSample
from governor.oom.events import OomEvent
from governor.store.models import OomEvent as OomEventRow
from governor.store.service import ensure_node, incarnation_ids, record_oom_event

Scope = Callable[[], AbstractContextManager[Session]]


class EventSink(Protocol):
    def totals(self, path: str, cgroup_id: int) -> dict[str, int]: ...

    def record(self, events: Sequence[OomEvent]) -> None: ...


def _incarnation(session: Session, node: str, path: str, cgroup_id: int) -> int:
    tenant, _, group = path.partition("/")
    node_id = ensure_node(session=session, name=node)
    stub = GroupSample(node=node, tenant=tenant, group=group or None, cgroup_id=cgroup_id,
                       wall=datetime.now(UTC), monotonic=time.monotonic())
    return incarnation_ids(session=session, node_id=node_id, samples=[stub])[(path, cgroup_id)]


class DbSink:
    """OOM events in the database (``scope`` from :func:`governor.store.db.scope_factory`)."""

    def __init__(self, scope: Scope, node: str) -> None:
        self.scope = scope
        self.node = node

    def totals(self, path: str, cgroup_id: int) -> dict[str, int]:
        """Sum of the recorded counts per kind for one incarnation."""
        with self.scope() as session:
            gid = _incarnation(session, self.node, path, cgroup_id)
            rows = session.execute(
                select(OomEventRow.kind, func.sum(OomEventRow.count))
                .where(OomEventRow.group_id == gid).group_by(OomEventRow.kind))
            return {kind: int(n) for kind, n in rows}

    def record(self, events: Sequence[OomEvent]) -> None:
        """All of ``events`` in one transaction (all stored, or none and the error raised)."""
        if not events:
            return
        with self.scope() as session:
            for e in events:
                _incarnation(session, e.node, e.path, e.cgroup_id)
                record_oom_event(session=session, node=e.node, tenant=e.tenant, group=e.group,
                                 cgroup_id=e.cgroup_id, ts=e.ts, kind=e.kind, count=e.count,
                                 pid=e.pid, comm=e.comm, rss_bytes=e.rss_bytes,
                                 missed_while_down=e.missed_while_down)

