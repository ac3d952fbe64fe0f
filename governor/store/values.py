"""The generic controllers' rows (issue #17, migration 0003): their stored sample values
read back onto the samples the catch-up meter pairs, and a meter step's generic
quantities written to ``usage_values`` and added into ``rollup_values``.  Called by
:mod:`governor.store.metered` (the metering rule is :mod:`governor.metering.generic`'s).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from governor.metering.generic import Values
from governor.metering.sample import GroupSample
from governor.store.bulk import bulk_insert_ignore, ts_converter
from governor.store.db import connection_of
from governor.store.service import chunks, dialect_insert
from governor.store.tables import rollup_values as _ROLLUP_VALUES
from governor.store.tables import sample_values as _SAMPLE_VALUES

if TYPE_CHECKING:
    from governor.store.db import Executor

#: the slot's member descriptor sets the frozen sample's values (as the sampler does)
_set_values = getattr(GroupSample, "values").__set__  # noqa: B009 (the descriptor)

_USAGE_COLUMNS = ("node_id", "group_id", "end_ts", "quantity", "value")


def attach_values(*, session: Executor, node_id: int,
                  samples: Iterable[tuple[int, GroupSample]], scattered: bool = False) -> None:
    """Set each ``(group id, sample)``'s ``values`` from ``sample_values`` (left None
    when it has none).  Read by the (node, ts) key prefix, filtered here: over the
    samples' time range (the catch-up's window), or at their times alone when
    ``scattered`` (anchors metered at times far apart)."""
    want: dict[tuple[int, datetime], GroupSample] = {(gid, s.wall): s for gid, s in samples}
    if not want:
        return
    times = sorted({ts for _, ts in want})
    found: dict[tuple[int, datetime], dict[str, int]] = defaultdict(dict)
    for chunk in chunks(times):
        at = (_SAMPLE_VALUES.c.ts.in_(chunk) if scattered else
              (_SAMPLE_VALUES.c.ts >= chunk[0]) & (_SAMPLE_VALUES.c.ts <= chunk[-1]))
        for r in session.execute(select(_SAMPLE_VALUES).where(
                _SAMPLE_VALUES.c.node_id == node_id, at)):
            key = (r.group_id, r.ts)
            if key in want:
                found[key][r.key] = r.value
    for key, values in found.items():
        _set_values(want[key], values)


def write_values(*, session: Executor, node_id: int, values: Values[Any],
                 gid: Callable[[Any], int]) -> None:
    """A meter step's generic quantities: its intervals into ``usage_values`` (one
    already stored is skipped) and its rollups added into ``rollup_values``."""
    conv = ts_converter(session)
    rows = [(node_id, gid(k), conv(end), name, v)
            for k, _, end, q in values.usages for name, v in q.items()]
    bulk_insert_ignore(session, "usage_values", _USAGE_COLUMNS, rows, ts_index=None)
    upsert_rollup_values(session=session, node_id=node_id, rollups={
        (gid(k), hour): q for (k, hour), q in values.rollups.items()})


def upsert_rollup_values(*, session: Executor, node_id: int,
                         rollups: Mapping[tuple[int, datetime], Mapping[str, int]]) -> None:
    """Add ``rollups`` (group id and hour -> {quantity: value}) into ``rollup_values``:
    ``INSERT ... ON CONFLICT DO UPDATE SET value = value + excluded.value``, as the
    hourly rollups are added (governor.store.metered.upsert_rollups)."""
    params = [(node_id, gid, hour, name, v)
              for (gid, hour), q in rollups.items() for name, v in q.items()]
    if not params:
        return
    if connection_of(session).dialect.name == "sqlite":
        conv = ts_converter(session)
        dbapi = connection_of(session).connection.driver_connection
        cur = dbapi.cursor()  # type: ignore[union-attr]
        try:
            cur.executemany(
                "INSERT INTO rollup_values (node_id, group_id, hour, quantity, value) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_id, hour, node_id, quantity) "
                "DO UPDATE SET value = value + excluded.value",
                [(n, g, conv(h), name, v) for n, g, h, name, v in params])
        finally:
            cur.close()
        return
    stmt: Any = dialect_insert(session, _ROLLUP_VALUES)
    stmt = stmt.on_conflict_do_update(
        index_elements=["group_id", "hour", "node_id", "quantity"],
        set_={"value": _ROLLUP_VALUES.c.value + stmt.excluded.value})
    session.execute(stmt, [{"node_id": n, "group_id": g, "hour": h, "quantity": name,
                            "value": v} for n, g, h, name, v in params])
