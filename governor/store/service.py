"""Store services: every function takes the session as a keyword-only argument.

The caller owns the transaction (commit or roll back); nothing here commits, nothing here
keeps a global.  A sampler calls :func:`record_samples` with the raw samples of one tick;
the meter step that turns them into interval usage and hourly rollups is metering's
(:mod:`governor.metering.catchup`), which reads and writes its rows through
:mod:`governor.store.metered`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    String,
    Table,
    delete,
    select,
    update,
)
from sqlalchemy.sql.dml import Insert

from governor.accel import load
from governor.metering.meter import IncKey
from governor.metering.sample import GAUGE_FIELDS, GroupSample
from governor.store.db import connection_of
from governor.store.errors import StoreError
from governor.store.tables import UTCDateTime, metadata
from governor.store.tables import applied_policies as _APPLIED
from governor.store.tables import gaps as _GAPS
from governor.store.tables import groups as _GROUPS
from governor.store.tables import nodes as _NODES
from governor.store.tables import oom_events as _OOM
from governor.store.tables import sample_io as _SAMPLE_IO
from governor.store.tables import samples as _SAMPLES
from governor.store.tables import tenants as _TENANTS
from governor.store.tables import usage_intervals as _USAGE

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

    from governor.store.db import Executor


#: sample columns copied as they are from GroupSample attributes of the same name
COUNTER_COLUMNS = (
    "cpu_usage_usec", "cpu_user_usec", "cpu_system_usec", "cpu_nr_periods",
    "cpu_nr_throttled", "cpu_throttled_usec",
    "memory_events_low", "memory_events_high", "memory_events_max", "memory_events_oom",
    "memory_events_oom_kill", "memory_events_oom_group_kill",
    *GAUGE_FIELDS,
)
PSI_COLUMNS = {key: f"psi_{key}_usec" for key in
                ("cpu_some", "cpu_full", "memory_some", "memory_full", "io_some", "io_full")}

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


def ensure_node(*, session: Executor, name: str) -> int:
    """The id of node ``name``, creating the row if needed."""
    found: int | None = session.execute(
        select(_NODES.c.id).where(_NODES.c.name == name)).scalar_one_or_none()
    if found is not None:
        return found
    session.execute(insert_ignore(session, _NODES).values(name=name, first_seen=_now()))
    made: int = session.execute(select(_NODES.c.id).where(_NODES.c.name == name)).scalar_one()
    return made


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
    """A caller-owned cache of group incarnation ids:
    ``(node_id, tenant, group, cgroup_id) -> id``.

    A sampler keeps one and passes it to every :func:`record_samples` call, which then skips
    the lookup of groups it has already seen (the bulk of the cost at a few thousand groups).
    Ids of groups created in a transaction that is rolled back would be stale: call
    :meth:`forget` after any rollback.
    """

    def __init__(self) -> None:
        self.ids: dict[tuple[int, str, str | None, int], int] = {}
        #: node name -> id (a node's row is never removed)
        self.node_ids: dict[str, int] = {}

    def forget(self) -> None:
        self.ids.clear()
        self.node_ids.clear()


def incarnation_ids(
    *, session: Executor, node_id: int, samples: Iterable[GroupSample],
    cache: Incarnations | None = None,
) -> dict[tuple[str, int], int]:
    """Map ``(path, cgroup_id)`` of ``samples`` to group incarnation ids, creating rows."""
    return {(tenant if group is None else f"{tenant}/{group}", cgroup_id): gid
            for (tenant, group, cgroup_id), gid in _incarnation_ids(
                session=session, node_id=node_id, samples=samples, cache=cache).items()}


def _incarnation_ids(
    *, session: Executor, node_id: int, samples: Iterable[GroupSample],
    cache: Incarnations | None = None,
) -> dict[IncKey, int]:
    """Map ``(tenant, group, cgroup_id)`` of ``samples`` to incarnation ids, creating rows
    (the key record_samples uses: no path string built per sample)."""
    wanted: dict[IncKey, GroupSample] = {}
    ids: dict[IncKey, int] = {}
    known = cache.ids if cache is not None else {}
    for s in samples:
        key = (s.tenant, s.group, s.cgroup_id)
        if key in ids or key in wanted:
            continue
        gid = known.get((node_id, *key))
        if gid is not None:
            ids[key] = gid
        else:
            wanted[key] = s
    if not wanted:
        return ids
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
        cache.ids.update(((node_id, *key), ids[key]) for key in wanted)
    return ids


_SAMPLE_COLUMNS = ("node_id", "group_id", "ts", "mono", *COUNTER_COLUMNS,
                   *PSI_COLUMNS.values())
_IO_COLUMNS = ("node_id", "group_id", "ts", "device", "rbytes", "wbytes", "rios", "wios",
               "dbytes")


_PSI_KEYS: Final = tuple(PSI_COLUMNS)
_IO_FIELDS: Final = ("rbytes", "wbytes", "rios", "wios", "dbytes")


def _sample_rows_py(samples: Sequence[GroupSample], ids: Mapping[IncKey, int],
                    node_id: int, cache: _TsCache | None
                    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The ``samples`` and ``sample_io`` rows of ``samples``: each sample's group id from
    ``ids``, its time as stored (SQLite's text through ``cache``; the datetime itself when
    ``cache`` is None), its counters, gauges and PSI totals, one IO row per device.  The
    twin of ``governor.store._fastrows.sample_rows`` (tests/unit/test_fastrows.py)."""
    rows: list[tuple[Any, ...]] = []
    io_rows: list[tuple[Any, ...]] = []
    psi_keys = _PSI_KEYS
    counters = attrgetter(*COUNTER_COLUMNS)
    for s in samples:
        gid = ids[(s.tenant, s.group, s.cgroup_id)]
        ts = s.wall if cache is None else cache[s.wall]
        rows.append((node_id, gid, ts, s.monotonic, *counters(s), *map(s.psi.get, psi_keys)))
        for dev, c in s.io.items():
            io_rows.append((node_id, gid, ts, dev, c["rbytes"], c["wbytes"], c["rios"],
                            c["wios"], c["dbytes"]))
    return rows, io_rows


#: the rows of a pass: ``samples`` rows and ``sample_io`` rows
Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


def _sample_rows_fast() -> Callable[..., Rows] | None:
    fast = load("governor.store._fastrows")
    if fast is None:
        return None
    c_rows = fast.sample_rows

    def rows(samples: Sequence[GroupSample], ids: Mapping[IncKey, int], node_id: int,
             cache: _TsCache | None) -> Rows:
        fresh = cache.fresh if cache is not None else None
        size = cache.size if cache is not None else 0
        got: Rows = c_rows(samples, ids, node_id, COUNTER_COLUMNS, _PSI_KEYS, _IO_FIELDS,
                           cache, fresh, size)
        return got

    return rows


def _flat_chunks_py(rows: Sequence[Sequence[Any]], k: int) -> list[tuple[Any, ...]]:
    """The values of each run of ``k`` consecutive ``rows`` in one tuple, full runs only:
    the parameters of one ``INSERT ... VALUES (...), (...), ...`` of ``k`` rows.  The twin
    of ``governor.store._fastrows.flat_chunks`` (tests/unit/test_fastrows.py)."""
    if k <= 0:
        raise ValueError("flat_chunks: k must be positive")
    return [tuple(chain.from_iterable(rows[j:j + k])) for j in range(0, len(rows) // k * k, k)]


def _flat_chunks_fast() -> Callable[[Sequence[Sequence[Any]], int],
                                    list[tuple[Any, ...]]] | None:
    fast = load("governor.store._fastrows")
    return None if fast is None else fast.flat_chunks


#: ``flat_chunks(rows, k)``: C when built (governor/store/_fastrows.c), else Python
flat_chunks: Final = _flat_chunks_fast() or _flat_chunks_py

#: most parameters one statement binds in the multi-row INSERTs of
#: :func:`bulk_insert_ignore` (SQLite's limit before 3.32; 32766 since)
_SQLITE_PARAMS = 999
#: most rows per multi-row INSERT (beyond, a statement's text grows for ~nothing)
_ROWS_PER_INSERT = 64


def _sqlite_ts(dt: datetime) -> str:
    """A UTC time in SQLAlchemy's SQLite DATETIME storage format (what UTCDateTime writes):
    ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    if dt.tzinfo is not UTC:
        if dt.utcoffset():
            dt = dt.astimezone(UTC)
        return dt.replace(tzinfo=None).isoformat(" ", "microseconds")
    return dt.isoformat(" ", "microseconds")[:26]   # without its "+00:00"


class _TsCache(dict[datetime, str]):
    """datetime -> SQLite text for the times of this pass and the one before: a pass writes
    each sample's time as a sample, an interval's end and an anchor, and the next pass
    as an interval's start; converted once.

    A dict whose ``__missing__`` converts, so a hit is a C-level lookup (``cache[dt]``, no
    Python call: 5,000 of them a pass at 1,000 groups).  :func:`store_samples` starts a
    generation each pass (:meth:`turn`), which drops the times converted two generations
    ago, so the cache holds two passes' times, not more (it once kept up to 100,000 times
    and their datetimes alive: 15 MiB of a daemon at 1,000 groups, growing for eight
    minutes).  A generation is also turned when it holds ``size`` times (a long drain or
    catch-up)."""

    def __init__(self, size: int = 65_536) -> None:
        super().__init__()
        self.size = size
        #: the times converted in this generation (the C row builder appends to it too)
        self.fresh: list[datetime] = []
        self._previous: list[datetime] = []

    def turn(self) -> None:
        """Start a generation: the times of the one before stay; older ones are dropped."""
        for dt in self._previous:
            self.pop(dt, None)
        self._previous, self.fresh = self.fresh, []

    def __missing__(self, dt: datetime) -> str:
        if len(self.fresh) >= self.size:
            self.turn()
        t = self[dt] = _sqlite_ts(dt)
        self.fresh.append(dt)
        return t


_SQLITE_TS = _TsCache()

#: the rows of a pass's samples: C when built (governor/store/_fastrows.c), else Python
sample_rows: Final = _sample_rows_fast() or _sample_rows_py


def ts_converter(session: Executor) -> Callable[[datetime], Any]:
    """Turns a UTC datetime into the DBAPI value :func:`bulk_insert_ignore` passes on
    unchanged (``ts_index=None``): text on SQLite (cached across calls: the same times
    come back within a pass and the next), the datetime itself on PostgreSQL."""
    if connection_of(session).dialect.name != "sqlite":
        return lambda dt: dt
    return _SQLITE_TS.__getitem__


def bulk_insert_ignore(session: Executor, table: str, columns: Sequence[str],
                       rows: Sequence[tuple[Any, ...]], *, ts_index: int | None) -> None:
    """Insert many rows, skipping those whose key exists, at DBAPI speed.

    This bypasses SQLAlchemy's per-row parameter processing (about 10x slower at this
    volume).  SQLite: ``INSERT ... VALUES (...), (...), ... ON CONFLICT DO NOTHING`` of up
    to 64 rows a statement (:func:`_sqlite_inserts`), the rest one row at a time
    (``executemany``), with the timestamp in the same text format :class:`UTCDateTime`
    stores.  PostgreSQL: ``COPY`` into a temporary staging table, then ``INSERT ... SELECT
    ... ON CONFLICT DO NOTHING``.  Runs on the session's own connection, inside its
    transaction.  ``ts_index`` is the position of a datetime to convert, or ``None`` when
    the rows already went through :func:`ts_converter`.
    """
    if not rows:
        return
    dbapi = connection_of(session).connection.driver_connection
    cols = ", ".join(columns)
    dialect = connection_of(session).dialect.name
    if dialect == "sqlite":
        data: Sequence[tuple[Any, ...]] = rows
        if ts_index is not None:
            conv = ts_converter(session)
            data = [(*r[:ts_index], conv(r[ts_index]), *r[ts_index + 1:]) for r in rows]
        k, many, one = _sqlite_inserts(table, tuple(columns))
        cur = dbapi.cursor()  # type: ignore[union-attr]
        try:
            # a statement step per k rows, not per row: 30-50% of the insert's cost at
            # 1,000 rows a pass (the per-row step, reset and GIL release; issue #16)
            execute = cur.execute
            for params in flat_chunks(data, k):
                execute(many, params)
            left = len(data) % k
            if left:
                cur.executemany(one, data[len(data) - left:])
        finally:
            cur.close()
    elif dialect == "postgresql":
        stage = f"stage_{table}"
        with dbapi.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
                        f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP")
            with cur.copy(f"COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_pg_types(table, columns))
                for r in rows:
                    copy.write_row(r)
            cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} "  # noqa: S608
                        f"FROM {stage} ON CONFLICT DO NOTHING")
            cur.execute(f"TRUNCATE {stage}")
    else:
        raise StoreError(f"unsupported database dialect {dialect!r}")


@functools.cache
def _sqlite_inserts(table: str, columns: tuple[str, ...]) -> tuple[int, str, str]:
    """``(k, INSERT of k rows, INSERT of one row)`` into ``table``'s ``columns``, each
    ``ON CONFLICT DO NOTHING`` (the text is made once: SQLite's statement cache is keyed
    by it)."""
    k = max(1, min(_ROWS_PER_INSERT, _SQLITE_PARAMS // len(columns)))
    row = f"({', '.join('?' * len(columns))})"
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608 (our own names)
    return (k, f"{head}{', '.join([row] * k)} ON CONFLICT DO NOTHING",
            f"{head}{row} ON CONFLICT DO NOTHING")


def _pg_types(table: str, columns: Sequence[str]) -> list[str]:
    """PostgreSQL type names of ``columns`` for a binary COPY (which does no casting)."""
    names = []
    for name in columns:
        col = metadata.tables[table].c[name]
        t = col.type
        if isinstance(t, UTCDateTime):
            names.append("timestamptz")
        elif isinstance(t, BigInteger):
            names.append("int8")
        elif isinstance(t, Integer):
            names.append("int4")
        elif isinstance(t, Float):
            names.append("float8")
        elif isinstance(t, Boolean):
            names.append("bool")
        elif isinstance(t, String):
            names.append("text")
        else:
            raise StoreError(f"no COPY type for {table}.{name} ({t!r})")
    return names


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
    each sample's ``(tenant, group, cgroup_id)``: what the in-memory meter's rows need."""
    if not samples:
        return 0, {}
    for s in samples:
        if s.node != node:
            raise ValueError(f"sample of node {s.node!r} passed to record_samples for {node!r}")
    node_id = incarnations.node_ids.get(node) if incarnations is not None else None
    if node_id is None:
        node_id = ensure_node(session=session, name=node)
        if incarnations is not None:
            incarnations.node_ids[node] = node_id
    ids = _incarnation_ids(session=session, node_id=node_id, samples=samples,
                           cache=incarnations)
    cache = None
    if connection_of(session).dialect.name == "sqlite":
        _SQLITE_TS.turn()   # a pass: its times, and the last pass's (its intervals' starts)
        cache = _SQLITE_TS
    rows, io_rows = sample_rows(samples, ids, node_id, cache)
    bulk_insert_ignore(session, "samples", _SAMPLE_COLUMNS, rows, ts_index=None)
    bulk_insert_ignore(session, "sample_io", _IO_COLUMNS, io_rows, ts_index=None)
    return node_id, ids


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionResult:
    samples: int
    sample_io: int
    intervals: int


def apply_retention(*, session: Executor, before: datetime) -> RetentionResult:
    """Drop raw samples, their io rows and interval usage older than ``before``.

    Hourly rollups are kept (bills read only them), and so are samples not yet metered and
    each incarnation's anchor sample (the last metered one), which the next pairing needs.
    """
    anchor = select(_GROUPS.c.metered_until).where(
        _GROUPS.c.id == _SAMPLE_IO.c.group_id).scalar_subquery()
    io = session.execute(delete(_SAMPLE_IO).where(_SAMPLE_IO.c.ts < before,
                                                  _SAMPLE_IO.c.ts < anchor))
    anchor = select(_GROUPS.c.metered_until).where(
        _GROUPS.c.id == _SAMPLES.c.group_id).scalar_subquery()
    s = session.execute(delete(_SAMPLES).where(_SAMPLES.c.ts < before, _SAMPLES.c.ts < anchor))
    u = session.execute(delete(_USAGE).where(_USAGE.c.end_ts < before))
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
