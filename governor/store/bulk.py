"""Raw samples into the database at DBAPI speed: the rows of a pass's samples (C in
governor/store/_fastrows.c when built, its Python twin here), the SQLite time text cached
across passes, and :func:`bulk_insert_ignore`, the multi-row INSERT (SQLite) or COPY
(PostgreSQL) that skips rows already stored.

Out of :mod:`governor.store.service`, which keeps the store's services (nodes, tenants,
incarnations, gaps, events) and calls this for the samples and the meter's rows
(:mod:`governor.store.metered`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import BigInteger, Boolean, Float, Integer, String

from governor.accel import load
from governor.metering.meter import IncKey
from governor.metering.sample import GAUGE_FIELDS, GroupSample
from governor.store.db import connection_of
from governor.store.errors import StoreError
from governor.store.tables import UTCDateTime, metadata

if TYPE_CHECKING:
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

_SAMPLE_COLUMNS = ("node_id", "group_id", "ts", "mono", *COUNTER_COLUMNS,
                   *PSI_COLUMNS.values())
_IO_COLUMNS = ("node_id", "group_id", "ts", "device", "rbytes", "wbytes", "rios", "wios",
               "dbytes")
_VALUE_COLUMNS = ("node_id", "group_id", "ts", "key", "value")


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
SQLITE_PARAMS = 999
#: most rows per multi-row INSERT (beyond, a statement's text grows for ~nothing)
ROWS_PER_INSERT = 64


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
    Python call: 5,000 of them a pass at 1,000 groups).  :func:`pass_rows` starts a
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
    k = max(1, min(ROWS_PER_INSERT, SQLITE_PARAMS // len(columns)))
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


def value_rows(samples: Sequence[GroupSample], ids: Mapping[IncKey, int], node_id: int,
               cache: _TsCache | None) -> list[tuple[Any, ...]]:
    """The ``sample_values`` rows of ``samples``: one per key of each sample's ``values``
    (the generic controllers', governor.controllers), keyed as its ``samples`` row."""
    rows: list[tuple[Any, ...]] = []
    for s in samples:
        values = s.values
        if values:
            gid = ids[(s.tenant, s.group, s.cgroup_id)]
            ts = s.wall if cache is None else cache[s.wall]
            rows.extend((node_id, gid, ts, k, v) for k, v in values.items())
    return rows


def pass_rows(session: Executor, samples: Sequence[GroupSample], ids: Mapping[IncKey, int],
              node_id: int) -> Rows:
    """The ``samples`` and ``sample_io`` rows of one pass (:func:`sample_rows`), its
    times in the store's format; KeyError, before any row is stored, when ``ids`` lacks
    a sample's incarnation.  Starts a generation of the SQLite time cache: call it once
    a pass (a second call for the same pass converts its times again, nothing worse)."""
    cache = None
    if connection_of(session).dialect.name == "sqlite":
        _SQLITE_TS.turn()   # a pass: its times, and the last pass's (its intervals' starts)
        cache = _SQLITE_TS
    return sample_rows(samples, ids, node_id, cache)


def insert_pass(session: Executor, rows: Rows, samples: Sequence[GroupSample],
                ids: Mapping[IncKey, int], node_id: int) -> None:
    """Store a pass's :func:`pass_rows` and its samples' ``sample_values`` rows."""
    cache = _SQLITE_TS if connection_of(session).dialect.name == "sqlite" else None
    bulk_insert_ignore(session, "samples", _SAMPLE_COLUMNS, rows[0], ts_index=None)
    bulk_insert_ignore(session, "sample_io", _IO_COLUMNS, rows[1], ts_index=None)
    bulk_insert_ignore(session, "sample_values", _VALUE_COLUMNS,
                       value_rows(samples, ids, node_id, cache), ts_index=None)
