"""The meter step's rows: the queries that read stored samples back for metering and the
writes of what a meter step made.  No metering rule here: the step itself (which sample
pairs with which, what an anchor is) lives in :mod:`governor.metering.catchup` and
:mod:`governor.metering.meter`.  Every function takes the session keyword-only; the
caller owns the transaction.
"""

from __future__ import annotations

import functools
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from itertools import chain
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, select, update

from governor.metering.meter import Metered
from governor.metering.rollup import ROLLUP_QUANTITIES
from governor.metering.sample import GroupSample, IoCounters
from governor.store.bulk import (
    COUNTER_COLUMNS,
    PSI_COLUMNS,
    ROWS_PER_INSERT,
    SQLITE_PARAMS,
    bulk_insert_ignore,
    flat_chunks,
    ts_converter,
)
from governor.store.db import connection_of
from governor.store.service import chunks, dialect_insert
from governor.store.tables import groups as _GROUPS
from governor.store.tables import nodes as _NODES
from governor.store.tables import rollups_hourly as _ROLLUPS
from governor.store.tables import sample_io as _SAMPLE_IO
from governor.store.tables import samples as _SAMPLES
from governor.store.tables import tenants as _TENANTS
from governor.store.values import attach_values, write_values

if TYPE_CHECKING:
    from sqlalchemy.engine import Row

    from governor.store.db import Executor

    #: a ``groups`` row (one incarnation)
    GroupRow = Row[Any]

_SAMPLE_COLS = [c for c in _SAMPLES.c if c.name not in ("node_id",)]


def node_id_of(*, session: Executor, node: str) -> int | None:
    """The id of node ``node``; None when it was never recorded."""
    found: int | None = session.execute(
        select(_NODES.c.id).where(_NODES.c.name == node)).scalar_one_or_none()
    return found


def node_groups(*, session: Executor, node_id: int) -> dict[int, GroupRow]:
    """Every incarnation of the node, by group id."""
    return {g.id: g for g in session.execute(select(_GROUPS).where(_GROUPS.c.node_id == node_id))}


def groups_by_id(*, session: Executor, ids: Sequence[int]) -> dict[int, GroupRow]:
    """The incarnations of group ids ``ids``."""
    groups: dict[int, GroupRow] = {}
    for chunk in chunks(sorted(set(ids))):
        groups.update((g.id, g) for g in session.execute(
            select(_GROUPS).where(_GROUPS.c.id.in_(chunk))))
    return groups


def incarnations_of_path(*, session: Executor, node_id: int, path: str) -> list[GroupRow]:
    """Every incarnation of ``path`` on the node."""
    return list(session.execute(select(_GROUPS).where(
        _GROUPS.c.node_id == node_id, _GROUPS.c.path == path)))


def tenant_names(*, session: Executor, ids: Sequence[int] | None = None) -> dict[int, str]:
    """Tenant id -> name, of ``ids`` (all tenants when None)."""
    query = select(_TENANTS.c.id, _TENANTS.c.name)
    if ids is not None:
        query = query.where(_TENANTS.c.id.in_(sorted(set(ids))))
    return dict(session.execute(query).tuples().all())


def to_sample(row: Any, group: GroupRow, node: str, tenant: str,
              io: Mapping[str, IoCounters]) -> GroupSample:
    """A stored ``samples`` row (and its ``sample_io`` rows) as the sample it was."""
    values: dict[str, Any] = {col: row[col] for col in COUNTER_COLUMNS}
    psi = {key: row[col] for key, col in PSI_COLUMNS.items() if row[col] is not None}
    return GroupSample(node=node, tenant=tenant, group=group.name, cgroup_id=group.cgroup_id,
                       wall=row["ts"], monotonic=row["mono"], io=dict(io), psi=psi,
                       created=group.created_at, **values)


def unmetered_samples(*, session: Executor, node: str, node_id: int,
                      groups: Mapping[int, GroupRow], tenants: Mapping[int, str],
                      since: datetime | None) -> dict[int, list[GroupSample]]:
    """The node's samples not metered yet (from each incarnation's anchor, the anchor's
    own sample included), oldest first, by group id.  Only samples at or after ``since``
    are scanned, by the (node, ts) primary key; the anchor sample of a group whose anchor
    is older than ``since`` is fetched by its key when the group has newer samples."""
    anchor_ok = (_GROUPS.c.metered_until.is_(None)) | (_SAMPLES.c.ts >= _GROUPS.c.metered_until)
    recent = _SAMPLES.c.ts >= since if since is not None else _SAMPLES.c.ts.is_not(None)
    rows = list(session.execute(
        select(*_SAMPLE_COLS).join(_GROUPS, _GROUPS.c.id == _SAMPLES.c.group_id)
        .where(_SAMPLES.c.node_id == node_id, recent, anchor_ok)
        .order_by(_SAMPLES.c.group_id, _SAMPLES.c.ts)
    ).mappings().all())
    if not rows:
        return {}
    old: list[tuple[int, datetime]] = []  # anchors older than the window, with new samples
    if since is not None:
        for gid in {row["group_id"] for row in rows}:
            at = groups[gid].metered_until
            if at is not None and at < since:
                old.append((gid, at))
        for gid, at in old:
            rows.extend(session.execute(select(*_SAMPLE_COLS).where(
                _SAMPLES.c.node_id == node_id, _SAMPLES.c.ts == at, _SAMPLES.c.group_id == gid)
            ).mappings().all())
        if old:
            rows.sort(key=lambda r: (r["group_id"], r["ts"]))
    io: dict[tuple[int, datetime], dict[str, IoCounters]] = defaultdict(dict)
    io_anchor_ok = ((_GROUPS.c.metered_until.is_(None))
                    | (_SAMPLE_IO.c.ts >= _GROUPS.c.metered_until))
    io_recent = _SAMPLE_IO.c.ts >= since if since is not None else _SAMPLE_IO.c.ts.is_not(None)
    io_rows = list(session.execute(
        select(_SAMPLE_IO).join(_GROUPS, _GROUPS.c.id == _SAMPLE_IO.c.group_id)
        .where(_SAMPLE_IO.c.node_id == node_id, io_recent, io_anchor_ok)
    ))
    for gid, at in old:
        io_rows.extend(session.execute(select(_SAMPLE_IO).where(
            _SAMPLE_IO.c.node_id == node_id, _SAMPLE_IO.c.ts == at, _SAMPLE_IO.c.group_id == gid)
        ))
    for r in io_rows:
        io[(r.group_id, r.ts)][r.device] = IoCounters(
            rbytes=r.rbytes, wbytes=r.wbytes, rios=r.rios, wios=r.wios, dbytes=r.dbytes)

    by_group: dict[int, list[GroupSample]] = defaultdict(list)
    for row in rows:
        g = groups[row["group_id"]]
        by_group[g.id].append(to_sample(row, g, node, tenants[g.tenant_id],
                                        io.get((g.id, row["ts"]), {})))
    attach_values(session=session, node_id=node_id,
                  samples=((gid, s) for gid, got in by_group.items() for s in got))
    return dict(by_group)


def samples_at(*, session: Executor, node: str, node_id: int,
               groups: Mapping[int, GroupRow], tenants: Mapping[int, str],
               keys: Sequence[tuple[int, datetime]]) -> dict[tuple[int, datetime], GroupSample]:
    """The stored samples at ``(group id, time)`` ``keys`` (a key whose sample retention
    removed is missing from the answer)."""
    rows: dict[tuple[int, datetime], Any] = {}
    io: dict[tuple[int, datetime], dict[str, IoCounters]] = defaultdict(dict)
    for chunk in chunks(sorted(keys)):
        times = sorted({ts for _, ts in chunk})
        want = set(chunk)
        # by time alone (the key's order: node, ts, group), filtered here: with the
        # group ids in the query too, SQLite probed every (time, group) pair, 1,000 x 1,000
        for row in session.execute(select(*_SAMPLE_COLS).where(
                _SAMPLES.c.node_id == node_id, _SAMPLES.c.ts.in_(times))).mappings():
            if (row["group_id"], row["ts"]) in want:
                rows[(row["group_id"], row["ts"])] = row
        for r in session.execute(select(_SAMPLE_IO).where(
                _SAMPLE_IO.c.node_id == node_id, _SAMPLE_IO.c.ts.in_(times))):
            if (r.group_id, r.ts) in want:
                io[(r.group_id, r.ts)][r.device] = IoCounters(
                    rbytes=r.rbytes, wbytes=r.wbytes, rios=r.rios, wios=r.wios,
                    dbytes=r.dbytes)
    out = {}
    for key, row in rows.items():
        g = groups[key[0]]
        out[key] = to_sample(row, g, node, tenants[g.tenant_id], io.get(key, {}))
    attach_values(session=session, node_id=node_id,
                  samples=((gid, s) for (gid, _), s in out.items()), scattered=True)
    return out


def counters_at(*, session: Executor, node: str, tenant: str, group: str | None,
                node_id: int, group_id: int, cgroup_id: int, ts: datetime
                ) -> GroupSample | None:
    """The counters stored at ``(group id, time)`` as a bare sample labelled ``tenant``,
    ``group`` and ``cgroup_id`` (no io, no pressure, no birth); None when retention
    removed it."""
    row = session.execute(select(*_SAMPLE_COLS).where(
        _SAMPLES.c.node_id == node_id, _SAMPLES.c.ts == ts, _SAMPLES.c.group_id == group_id)
    ).mappings().first()
    if row is None:
        return None
    values: dict[str, Any] = {col: row[col] for col in COUNTER_COLUMNS}
    return GroupSample(node=node, tenant=tenant, group=group, cgroup_id=cgroup_id,
                       wall=row["ts"], monotonic=row["mono"], **values)


def write_metered(*, session: Executor, node_id: int, metered: Metered[Any],
                  ids: Mapping[Any, int] | None = None) -> None:
    """Write a meter step: its interval usage rows (an interval already stored is
    skipped), its rollups added into ``rollups_hourly``, and its anchors
    (``groups.metered_until``), each in multi-row statements (SQLite) or an executemany.
    Keys are group ids, or looked up in ``ids`` (the in-memory meter's incarnation keys)."""
    conv = ts_converter(session)
    # (a Python-level call per row for the keys only when they need a look-up: the
    # daemon's are group ids already)
    usages = metered.usages if ids is None else [(ids[k], iv) for k, iv in metered.usages]
    usage_rows = [
        (node_id, k, conv(iv[1]), conv(iv[0]), iv[2], iv[3],
         *(q if None not in (q := iv[4]) else [x or 0 for x in q]))
        for k, iv in usages]
    if usage_rows:
        bulk_insert_ignore(session, "usage_intervals", _USAGE_COLUMNS, usage_rows,
                           ts_index=None)
    gid = (lambda k: k) if ids is None else ids.__getitem__
    if metered.rollups:
        upsert_rollups(session=session, node_id=node_id, rollups=metered.rollups
                       if ids is None else {(ids[k], hour): q
                                            for (k, hour), q in metered.rollups.items()})
    if metered.values:  # the generic controllers' quantities (governor.store.values)
        write_values(session=session, node_id=node_id, values=metered.values, gid=gid)
    if metered.anchors:
        _set_anchors(session, [(k, s.wall) for k, s in metered.anchors.items()]
                     if ids is None else [(ids[k], s.wall) for k, s in metered.anchors.items()])


_USAGE_COLUMNS = ("node_id", "group_id", "end_ts", "start_ts", "duration_us",
                  "from_creation", *ROLLUP_QUANTITIES)
_ROLLUP_NAMES = ("covered_us", "intervals", *ROLLUP_QUANTITIES)


def _set_anchors(session: Executor, anchors: Sequence[tuple[int, datetime]]) -> None:
    """``groups.metered_until`` of each ``(group id, time)``.  SQLite 3.33 and later:
    ``UPDATE ... FROM`` a ``VALUES`` list of up to ``ROWS_PER_INSERT`` pairs a statement
    (1.6 -> 1.0 ms at 1,000 groups on the host, issue #16); before, and PostgreSQL: one
    executemany."""
    if connection_of(session).dialect.name == "sqlite":
        conv = ts_converter(session)
        dbapi = connection_of(session).connection.driver_connection
        pairs = [(gid, conv(ts)) for gid, ts in anchors]
        if sqlite3.sqlite_version_info < (3, 33):   # no UPDATE ... FROM before 3.33
            cur = dbapi.cursor()  # type: ignore[union-attr]
            try:
                cur.executemany("UPDATE groups SET metered_until = ? WHERE id = ?",
                                [(ts, gid) for gid, ts in pairs])
            finally:
                cur.close()
            return
        _in_chunks(session, pairs, _anchor_update)
        return
    session.execute(update(_GROUPS).where(_GROUPS.c.id == bindparam("gid")).values(
        metered_until=bindparam("ts")).execution_options(synchronize_session=False),
        [{"gid": gid, "ts": ts} for gid, ts in anchors])


def _in_chunks(session: Executor, rows: Sequence[tuple[Any, ...]],
               statement: Callable[[int], str]) -> None:
    """Run ``statement(n)`` (the SQL text of an ``n``-row statement) over ``rows`` on the
    session's SQLite connection: ``ROWS_PER_INSERT`` rows a statement (fewer when that
    would bind more than ``SQLITE_PARAMS``), the rest in one statement of their own."""
    if not rows:
        return
    k = max(1, min(ROWS_PER_INSERT, SQLITE_PARAMS // len(rows[0])))
    dbapi = connection_of(session).connection.driver_connection
    cur = dbapi.cursor()  # type: ignore[union-attr]
    try:
        execute, many = cur.execute, statement(k)
        for params in flat_chunks(rows, k):
            execute(many, params)
        left = len(rows) % k
        if left:
            execute(statement(left), tuple(chain.from_iterable(rows[len(rows) - left:])))
    finally:
        cur.close()


@functools.cache
def _anchor_update(n: int) -> str:
    """``UPDATE groups ... FROM (VALUES (?, ?), ...)`` of ``n`` (id, time) pairs (SQLite
    3.33+; a group id named twice takes one of its times: the caller names each once)."""
    values = ", ".join(["(?, ?)"] * n)
    return (f"WITH v(id, ts) AS (VALUES {values}) "  # noqa: S608 (placeholders only)
            "UPDATE groups SET metered_until = v.ts FROM v WHERE groups.id = v.id")


def upsert_rollups(*, session: Executor, node_id: int,
                   rollups: Mapping[tuple[int, datetime], Sequence[int]]) -> None:
    """Add ``rollups`` (keyed by group id and hour; values ``covered_us``, ``intervals``
    and the ROLLUP_QUANTITIES, in that order) into ``rollups_hourly``: one executemany of
    ``INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x``."""
    names = _ROLLUP_NAMES
    if connection_of(session).dialect.name == "sqlite":
        conv = ts_converter(session)
        # (each row's upsert is SQLite's own, as when they went one by one)
        _in_chunks(session, [(node_id, gid, conv(hour), *values)
                             for (gid, hour), values in rollups.items()], _rollup_upsert)
        return
    stmt: Any = dialect_insert(session, _ROLLUPS)
    stmt = stmt.on_conflict_do_update(
        index_elements=["node_id", "group_id", "hour"],
        set_={n: _ROLLUPS.c[n] + stmt.excluded[n] for n in names},
    )
    session.execute(stmt, [
        {"node_id": node_id, "group_id": gid, "hour": hour,
         **dict(zip(names, values, strict=True))}
        for (gid, hour), values in rollups.items()
    ])


@functools.cache
def _rollup_upsert(n: int) -> str:
    """``INSERT INTO rollups_hourly ... VALUES`` of ``n`` rows, each added into the row of
    its key when there is one (``ON CONFLICT DO UPDATE SET x = x + excluded.x``)."""
    names = _ROLLUP_NAMES
    cols = ", ".join(("node_id", "group_id", "hour", *names))
    row = "(" + ", ".join("?" * (3 + len(names))) + ")"
    sets = ", ".join(f"{n} = {n} + excluded.{n}" for n in names)
    return (f"INSERT INTO rollups_hourly ({cols}) VALUES "  # noqa: S608 (our own names)
            f"{', '.join([row] * n)} "
            f"ON CONFLICT (node_id, group_id, hour) DO UPDATE SET {sets}")
