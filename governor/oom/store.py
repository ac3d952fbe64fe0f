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
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select

from governor.errors import UnknownTenant
from governor.metering.sample import GroupSample
from governor.oom.events import OomEvent
from governor.store.db import Executor
from governor.store.service import (
    ensure_node,
    incarnation_ids,
    node_id_named,
    record_oom_event,
)
from governor.store.tables import oom_events as _OOM

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

Scope = Callable[[], AbstractContextManager[Executor]]

#: group ids per ``IN (...)`` query (below every backend's bound-parameter limit)
_CHUNK = 500


class EventSink(Protocol):
    def totals(self, path: str, cgroup_id: int) -> dict[str, int]: ...

    def totals_many(self, keys: Sequence[tuple[str, int]]
                    ) -> dict[tuple[str, int], dict[str, int]]: ...

    def record(self, events: Sequence[OomEvent]) -> None: ...


def _incarnation(session: Executor, node: str, path: str, cgroup_id: int) -> int:
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
        return self.totals_many([(path, cgroup_id)])[(path, cgroup_id)]

    def totals_many(self, keys: Sequence[tuple[str, int]]
                    ) -> dict[tuple[str, int], dict[str, int]]:
        """:meth:`totals` of many incarnations ``(path, cgroup_id)`` in one transaction
        (issue #16: at start the watcher adopts every group at once; a transaction per
        group was thousands of commits, and held the database from the first pass)."""
        out: dict[tuple[str, int], dict[str, int]] = {k: {} for k in keys}
        if not keys:
            return out
        now, mono = datetime.now(UTC), time.monotonic()
        with self.scope() as session:
            node_id = ensure_node(session=session, name=self.node)
            stubs = []
            for path, cid in out:
                tenant, _, group = path.partition("/")
                stubs.append(GroupSample(node=self.node, tenant=tenant, group=group or None,
                                         cgroup_id=cid, wall=now, monotonic=mono))
            gids = incarnation_ids(session=session, node_id=node_id, samples=stubs)
            by_gid = {gids[k]: out[k] for k in out}
            ordered = sorted(by_gid)
            for i in range(0, len(ordered), _CHUNK):
                rows = session.execute(
                    select(_OOM.c.group_id, _OOM.c.kind, func.sum(_OOM.c.count))
                    .where(_OOM.c.group_id.in_(ordered[i:i + _CHUNK]))
                    .group_by(_OOM.c.group_id, _OOM.c.kind))
                for gid, kind, n in rows:
                    by_gid[gid][kind] = int(n)
        return out

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


def query_events(*, session: Session, tenant: str | None = None, kind: str | None = None,
                 since: datetime | None = None, limit: int | None = None,
                 node: str | None = None) -> list[dict[str, Any]]:
    """The recorded events, oldest first (the newest ``limit``), as plain rows; ``node``:
    of that node only (:class:`~governor.errors.UnknownNode` when the database has none
    of that name)."""
    # the ORM models are imported here, by the commands that read: the daemon, which
    # writes through the tables, never loads sqlalchemy.orm (issue #16)

    from governor.store.models import Group, Node, OomEvent, Tenant

    q = (select(OomEvent, Node.name, Tenant.name, Group.path, Group.cgroup_id)
         .join(Node, Node.id == OomEvent.node_id).join(Tenant, Tenant.id == OomEvent.tenant_id)
         .outerjoin(Group, Group.id == OomEvent.group_id)
         .order_by(OomEvent.ts, OomEvent.id))
    if tenant is not None:
        known = set(session.execute(select(Tenant.name)).scalars())
        if tenant not in known:
            raise UnknownTenant(tenant, where="never seen in this database", known=sorted(known))
        q = q.where(Tenant.name == tenant)
    if node is not None:
        q = q.where(OomEvent.node_id == node_id_named(session=session, name=node))
    if kind is not None:
        q = q.where(OomEvent.kind == kind)
    if since is not None:
        q = q.where(OomEvent.ts >= since)
    rows = session.execute(q).all()
    if limit is not None:
        rows = rows[-limit:]
    return [{"ts": e.ts.isoformat(), "node": node, "tenant": t,
             "group": path.partition("/")[2] or None if path else None,
             "cgroup_id": cid, "kind": e.kind, "count": e.count, "pid": e.pid,
             "comm": e.comm, "rss_bytes": e.rss_bytes,
             "missed_while_down": e.missed_while_down}
            for e, node, t, path, cid in rows]


def read_events(database_url: str, *, tenant: str | None = None, kind: str | None = None,
                since: datetime | None = None, limit: int | None = None,
                node: str | None = None) -> list[dict[str, Any]]:
    """:func:`query_events` on a database URL (connect, check the schema, read)."""
    from governor.store.db import check_schema, connect, database_errors, session_factory

    engine = connect(database_url)
    try:
        with database_errors(database_url, "read"), session_factory(engine)() as session:
            check_schema(engine)
            return query_events(session=session, tenant=tenant, kind=kind, since=since,
                                limit=limit, node=node)
    finally:
        engine.dispose()
