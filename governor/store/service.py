"""Store services: every function takes the session as a keyword-only argument.

The caller owns the transaction (commit or roll back); nothing here commits, nothing here
keeps a global.  A sampler calls :func:`record_samples` with the raw samples of one tick;
the meter step that turns them into interval usage and hourly rollups is metering's
(:mod:`governor.metering.catchup`), which reads and writes its rows through
:mod:`governor.store.metered`.  The rows themselves go in through
:mod:`governor.store.bulk` (multi-row INSERT or COPY, skipping what is stored).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.sql.dml import Insert

from governor.errors import UnknownNode
from governor.metering.meter import IncKey
from governor.metering.sample import GroupSample
from governor.store.bulk import insert_pass, pass_rows
from governor.store.db import connection_of
from governor.store.errors import NodeNameTaken, StoreError
from governor.store.tables import applied_policies as _APPLIED
from governor.store.tables import gaps as _GAPS
from governor.store.tables import groups as _GROUPS
from governor.store.tables import nodes as _NODES
from governor.store.tables import oom_events as _OOM
from governor.store.tables import sample_io as _SAMPLE_IO
from governor.store.tables import sample_values as _SAMPLE_VALUES
from governor.store.tables import samples as _SAMPLES
from governor.store.tables import tenants as _TENANTS
from governor.store.tables import usage_intervals as _USAGE
from governor.store.tables import usage_values as _USAGE_VALUES

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

    from governor.store.db import Executor


log = logging.getLogger("governor.store")

#: names per IN list (SQLite's variable limit is 32766 since 3.32)
_CHUNK = 5000


def dialect_insert(session: Executor, table: Table) -> Insert:
    """A dialect-specific INSERT that knows ON CONFLICT (SQLite >= 3.24, PostgreSQL)."""
    # the dialect's module is imported by the engine that uses it: a daemon on SQLite
    # never loads PostgreSQL's (with asyncio, 2 MiB resident; issue #16)
    name = connection_of(session).dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)
    if name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    raise StoreError(f"unsupported database dialect {name!r}")


def insert_ignore(session: Executor, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` on either dialect."""
    stmt = dialect_insert(session, table)
    return stmt.on_conflict_do_nothing()  # type: ignore[attr-defined, no-any-return]


def _now() -> datetime:
    return datetime.now(UTC)


def ensure_node(*, session: Executor, name: str, uid: str | None = None) -> int:
    """The id of node ``name``, creating the row if needed.

    ``uid`` (the daemon's: :func:`governor.store.nodeuid.load_node_uid`) is the node's
    identity, which survives a change of hostname; looked up first:

    * the row of ``uid`` under another name: renamed to ``name`` (its history stays on the
      same id; logged, old -> new);
    * no row of ``uid``, a row ``name`` without a uid (written before migration 0004):
      adopted (it takes ``uid``);
    * no row of ``uid``, a row ``name`` with another uid: :class:`NodeNameTaken`, naming
      both (two hosts never write into one node's rows);
    * neither: a new row.

    Without ``uid`` (the commands, which read; the daemon's writers once its
    :class:`~governor.store.gate.Database` has claimed the node): by name only.
    """
    by_name = session.execute(select(_NODES.c.id, _NODES.c.uid).where(
        _NODES.c.name == name)).one_or_none()
    if uid is None:
        if by_name is not None:
            return int(by_name.id)
        session.execute(insert_ignore(session, _NODES).values(name=name, first_seen=_now()))
        made: int = session.execute(
            select(_NODES.c.id).where(_NODES.c.name == name)).scalar_one()
        return made
    mine = session.execute(select(_NODES.c.id, _NODES.c.name).where(
        _NODES.c.uid == uid)).one_or_none()
    if mine is not None:
        if mine.name != name:
            if by_name is not None:
                raise NodeNameTaken(name, uid=uid, holder=by_name.uid or "none (a row "
                                    "written before node uids, migration 0004)")
            session.execute(update(_NODES).where(_NODES.c.id == mine.id).values(name=name))
            log.info("node renamed: %s -> %s (same node uid: its history is kept)",
                     mine.name, name, extra={"node_uid": uid, "node_id": mine.id})
        return int(mine.id)
    if by_name is not None:
        if by_name.uid is not None:
            raise NodeNameTaken(name, uid=uid, holder=by_name.uid)
        session.execute(update(_NODES).where(_NODES.c.id == by_name.id,
                                             _NODES.c.uid.is_(None)).values(uid=uid))
        log.info("node %s adopted: its rows (written before node uids) are this host's",
                 name, extra={"node_uid": uid, "node_id": by_name.id})
        return ensure_node(session=session, name=name, uid=uid)  # as stored, raced or not
    session.execute(insert_ignore(session, _NODES).values(name=name, uid=uid,
                                                          first_seen=_now()))
    return ensure_node(session=session, name=name, uid=uid)


def node_id_named(*, session: Executor, name: str) -> int:
    """The id of node ``name`` (``--node`` of the commands that read); :class:`UnknownNode`,
    listing the database's nodes, when there is none."""
    found: int | None = session.execute(
        select(_NODES.c.id).where(_NODES.c.name == name)).scalar_one_or_none()
    if found is None:
        known = sorted(session.execute(select(_NODES.c.name)).scalars())
        raise UnknownNode(name, known=known)
    return found


def ensure_tenant(*, session: Executor, name: str) -> int:
    """The id of tenant ``name``, creating the row if needed."""
    found: int | None = session.execute(
        select(_TENANTS.c.id).where(_TENANTS.c.name == name)).scalar_one_or_none()
    if found is not None:
        return found
    session.execute(insert_ignore(session, _TENANTS).values(name=name))
    made: int = session.execute(
        select(_TENANTS.c.id).where(_TENANTS.c.name == name)).scalar_one()
    return made


def chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Incarnations:
    """A caller-owned cache of group incarnation ids: node id ->
    ``(tenant, group, cgroup_id) -> id``.

    A sampler keeps one and passes it to every :func:`record_samples` call, which then skips
    the lookup of groups it has already seen (the bulk of the cost at a few thousand groups).
    Ids of groups created in a transaction that is rolled back would be stale: call
    :meth:`forget` after any rollback.
    """

    def __init__(self) -> None:
        self.ids: dict[int, dict[IncKey, int]] = {}
        #: node name -> id (a node's row is never removed)
        self.node_ids: dict[str, int] = {}
        #: seconds spent looking up and making the rows of incarnations not cached yet
        #: (the dear part of a group's first pass: the daemon paces new groups by it)
        self.new_s = 0.0

    def forget(self) -> None:
        # new dicts, not cleared ones: a caller may still hold a node's (store_samples'
        # answer) for the pass it was made for
        self.ids = {}
        self.node_ids.clear()


#: a sample's incarnation key, ``(tenant, group, cgroup_id)`` (C-level: no Python frame)
_INC_KEY = attrgetter("tenant", "group", "cgroup_id")
_NODE = attrgetter("node")


def incarnation_ids(
    *, session: Executor, node_id: int, samples: Iterable[GroupSample],
    cache: Incarnations | None = None,
) -> dict[tuple[str, int], int]:
    """Map ``(path, cgroup_id)`` of ``samples`` to group incarnation ids, creating rows."""
    samples = list(samples)
    ids = _incarnation_ids(session=session, node_id=node_id, samples=samples, cache=cache)
    return {(tenant if group is None else f"{tenant}/{group}", cgroup_id):
            ids[(tenant, group, cgroup_id)]
            for tenant, group, cgroup_id in map(_INC_KEY, samples)}


def _incarnation_ids(
    *, session: Executor, node_id: int, samples: Iterable[GroupSample],
    cache: Incarnations | None = None,
) -> dict[IncKey, int]:
    """Map ``(tenant, group, cgroup_id)`` of ``samples`` to incarnation ids, creating rows
    (the key record_samples uses: no path string built per sample); ``cache`` keeps them
    (:func:`store_samples` skips this when it holds every sample's)."""
    known = cache.ids.setdefault(node_id, {}) if cache is not None else {}
    wanted: dict[IncKey, GroupSample] = {}
    ids: dict[IncKey, int] = {}
    for s in samples:
        key = (s.tenant, s.group, s.cgroup_id)
        if key in ids or key in wanted:
            continue
        gid = known.get(key)
        if gid is not None:
            ids[key] = gid
        else:
            wanted[key] = s
    if not wanted:
        return ids
    t0 = time.monotonic()
    by_path = {(s.path, s.cgroup_id): key for key, s in wanted.items()}

    def lookup(keys: Sequence[tuple[str, int]]) -> None:
        for chunk in chunks(keys):
            rows = session.execute(
                select(_GROUPS.c.path, _GROUPS.c.cgroup_id, _GROUPS.c.id,
                       _GROUPS.c.created_at).where(
                    _GROUPS.c.node_id == node_id,
                    _GROUPS.c.path.in_(sorted({path for path, _ in chunk})),
                )
            )
            for path, cgroup_id, gid, created_at in rows:
                key = by_path.get((path, cgroup_id))
                if key is not None:
                    ids[key] = gid
                    born = wanted[key].created
                    if created_at is None and born is not None:
                        # the row was made by another writer (the OOM watcher) before the
                        # sampler, which knows the birth: keep it, metering needs it
                        session.execute(update(_GROUPS).where(
                            _GROUPS.c.id == gid, _GROUPS.c.created_at.is_(None)).values(
                                created_at=born))

    lookup(list(by_path))
    missing = [pk for pk, key in by_path.items() if key not in ids]
    if missing:
        tenants = {wanted[by_path[k]].tenant for k in missing}
        tenant_ids = {t: ensure_tenant(session=session, name=t) for t in sorted(tenants)}
        now = _now()
        session.execute(insert_ignore(session, _GROUPS), [
            {
                "node_id": node_id,
                "tenant_id": tenant_ids[wanted[by_path[k]].tenant],
                "name": wanted[by_path[k]].group,
                "path": k[0],
                "cgroup_id": k[1],
                "created_at": wanted[by_path[k]].created,
                "first_seen": min(now, wanted[by_path[k]].wall),
                "removed_at": None,
                "metered_until": None,
            }
            for k in missing
        ])
        lookup(missing)
    if cache is not None:
        known.update((key, ids[key]) for key in wanted)
        cache.new_s += time.monotonic() - t0
    return ids




def record_samples(*, session: Executor, node: str, samples: Sequence[GroupSample],
                   incarnations: Incarnations | None = None) -> int:
    """Store raw samples of ``node``; a sample already stored (same node, incarnation and
    time) is skipped, so replaying a batch is harmless.  Returns the number of samples given.

    This is the sampler's entry point: one call per tick with every group's sample, in the
    caller's transaction.  ``incarnations`` (optional) caches group ids across calls.
    """
    store_samples(session=session, node=node, samples=samples, incarnations=incarnations)
    return len(samples)


def store_samples(*, session: Executor, node: str, samples: Sequence[GroupSample],
                  incarnations: Incarnations | None = None
                  ) -> tuple[int, dict[IncKey, int]]:
    """:func:`record_samples`, returning the node's id and the group (incarnation) id of
    each sample's ``(tenant, group, cgroup_id)``: what the in-memory meter's rows need
    (with ``incarnations``, possibly the node's whole cache: a mapping to look keys up in)."""
    if not samples:
        return 0, {}
    if any(map(node.__ne__, map(_NODE, samples))):
        other = next(s.node for s in samples if s.node != node)
        raise ValueError(f"sample of node {other!r} passed to record_samples for {node!r}")
    node_id = incarnations.node_ids.get(node) if incarnations is not None else None
    if node_id is None:
        node_id = ensure_node(session=session, name=node)
        if incarnations is not None:
            incarnations.node_ids[node] = node_id
    known = incarnations.ids.get(node_id) if incarnations is not None else None
    if known:
        # the common pass: every incarnation cached.  The row builder looks each one up
        # anyway (C), so it is the check: no loop of its own (issue #16)
        try:
            rows = pass_rows(session, samples, known, node_id)
        except KeyError:   # a new incarnation among them: its row made below
            pass
        else:
            insert_pass(session, rows, samples, known, node_id)
            return node_id, known
    ids = _incarnation_ids(session=session, node_id=node_id, samples=samples,
                           cache=incarnations)
    insert_pass(session, pass_rows(session, samples, ids, node_id), samples, ids, node_id)
    return node_id, ids


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionResult:
    samples: int
    sample_io: int
    intervals: int


def apply_retention(*, session: Executor, before: datetime) -> RetentionResult:
    """Drop raw samples, their io and values rows and interval usage (its generic
    quantities too) older than ``before``.

    Hourly rollups are kept (bills read whole hours from them only; an hour a period cuts
    falls back to its rollup's time share once its intervals are gone), and so are samples
    not yet metered and each incarnation's anchor sample (the last metered one), which the
    next pairing needs.
    """
    anchor = select(_GROUPS.c.metered_until).where(
        _GROUPS.c.id == _SAMPLE_IO.c.group_id).scalar_subquery()
    io = session.execute(delete(_SAMPLE_IO).where(_SAMPLE_IO.c.ts < before,
                                                  _SAMPLE_IO.c.ts < anchor))
    anchor = select(_GROUPS.c.metered_until).where(
        _GROUPS.c.id == _SAMPLE_VALUES.c.group_id).scalar_subquery()
    session.execute(delete(_SAMPLE_VALUES).where(_SAMPLE_VALUES.c.ts < before,
                                                 _SAMPLE_VALUES.c.ts < anchor))
    anchor = select(_GROUPS.c.metered_until).where(
        _GROUPS.c.id == _SAMPLES.c.group_id).scalar_subquery()
    s = session.execute(delete(_SAMPLES).where(_SAMPLES.c.ts < before, _SAMPLES.c.ts < anchor))
    u = session.execute(delete(_USAGE).where(_USAGE.c.end_ts < before))
    session.execute(delete(_USAGE_VALUES).where(_USAGE_VALUES.c.end_ts < before))
    return RetentionResult(s.rowcount, io.rowcount, u.rowcount)  # type: ignore[attr-defined]


def record_gap(*, session: Executor, node: str, from_ts: datetime, to_ts: datetime,
               reason: str, rows_lost: int) -> None:
    """Record that the samples of ``node`` between ``from_ts`` and ``to_ts`` were lost."""
    node_id = ensure_node(session=session, name=node)
    session.execute(insert_ignore(session, _GAPS).values(
        node_id=node_id, from_ts=from_ts, to_ts=to_ts, reason=reason, rows_lost=rows_lost,
        recorded_at=_now()))


def record_applied_policy(*, session: Executor, node: str, applied_at: datetime,
                          policy_hash: str, trigger: str,
                          writes: Sequence[Mapping[str, str]]) -> int:
    """Record a policy version applied on ``node`` and the writes it made; returns its id.

    ``writes`` are ``{"path": "tenant/group", "file": "memory.min", "value": "..."}``.
    """
    node_id = ensure_node(session=session, name=node)
    done = cast("CursorResult[Any]", session.execute(_APPLIED.insert().values(
        node_id=node_id, applied_at=applied_at, policy_hash=policy_hash, trigger=trigger,
        writes=[dict(w) for w in writes])))
    key = done.inserted_primary_key
    assert key is not None
    return int(key[0])


def record_oom_event(*, session: Executor, node: str, tenant: str, group: str | None,
                     cgroup_id: int | None, ts: datetime, kind: str, count: int,
                     pid: int | None = None, comm: str | None = None,
                     rss_bytes: int | None = None, missed_while_down: bool = False) -> int:
    """Record an OOM event (``kind`` is the memory.events key); returns its id."""
    node_id = ensure_node(session=session, name=node)
    tenant_id = ensure_tenant(session=session, name=tenant)
    group_id = None
    if cgroup_id is not None:
        path = tenant if group is None else f"{tenant}/{group}"
        group_id = session.execute(select(_GROUPS.c.id).where(
            _GROUPS.c.node_id == node_id, _GROUPS.c.path == path, _GROUPS.c.cgroup_id == cgroup_id,
        )).scalar_one_or_none()
    done = cast("CursorResult[Any]", session.execute(_OOM.insert().values(
        node_id=node_id, tenant_id=tenant_id, group_id=group_id, ts=ts, kind=kind,
        count=count, pid=pid, comm=comm, rss_bytes=rss_bytes,
        missed_while_down=missed_while_down)))
    key = done.inserted_primary_key
    assert key is not None
    return int(key[0])
