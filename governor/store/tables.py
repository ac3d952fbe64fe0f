"""The schema as SQLAlchemy Core tables: what the daemon reads and writes.

Conventions: every row carries its node; counters and sizes are ``BigInteger``; money is
``Numeric``; every timestamp is UTC (:class:`UTCDateTime` stores naive UTC on SQLite and
``timestamptz`` on PostgreSQL, and always hands back aware UTC datetimes).  A ``NULL`` counter
is a value the sampler could not read: missing is not zero.

Raw samples are keyed by ``(node_id, group_id, ts)`` -- node, group incarnation, sample time --
so a batch replayed after a crash is not doubled (``ON CONFLICT DO NOTHING``).

Core, not the ORM: the daemon and everything on its path (:mod:`governor.store.service`,
the spool, the OOM sink, billing's reads) use these tables and a ``Connection``, so
``governor run`` never imports ``sqlalchemy.orm`` (issue #16: 7 MiB of its resident memory).
:mod:`governor.store.models` maps ORM classes onto these same tables for the reporting
commands and the tests that like them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)

#: BIGINT primary keys, except on SQLite where only INTEGER PRIMARY KEY autoincrements
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always UTC: aware in, aware (UTC) out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: governor stores UTC timestamps only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


MONEY = Numeric(20, 10)

metadata = MetaData(naming_convention=NAMING)


def _req(name: str, type_: Any, *args: Any, **kw: Any) -> Column[Any]:
    """A NOT NULL column."""
    return Column(name, type_, *args, nullable=False, **kw)


def _opt(name: str, type_: Any, *args: Any, **kw: Any) -> Column[Any]:
    """A NULL-able column."""
    return Column(name, type_, *args, nullable=True, **kw)


#: ``uid``: the node's identity (a uuid4 made at the daemon's first start, kept in its
#: state directory: governor.store.nodes), which survives a change of hostname; NULL in the
#: rows of older governors until their daemon adopts the row (migration 0004)
nodes = Table(
    "nodes", metadata,
    Column("id", Integer, primary_key=True),
    _req("name", String(255), unique=True),
    _req("first_seen", UTCDateTime),
    _opt("uid", String(36)),
    Index("ix_nodes_uid", "uid", unique=True),
)

tenants = Table(
    "tenants", metadata,
    Column("id", Integer, primary_key=True),
    _req("name", String(64), unique=True),
)

#: one *incarnation* of a group on a node: its path plus the cgroup directory's inode
groups = Table(
    "groups", metadata,
    Column("id", BigId, primary_key=True),
    _req("node_id", Integer, ForeignKey("nodes.id")),
    _req("tenant_id", Integer, ForeignKey("tenants.id")),
    #: group name, NULL for the tenant's own cgroup
    _opt("name", String(64)),
    #: "tenant" or "tenant/group"
    _req("path", String(200)),
    _req("cgroup_id", BigInteger),
    #: creation time when known (governor made it or saw it made), else NULL
    _opt("created_at", UTCDateTime),
    _req("first_seen", UTCDateTime),
    _opt("removed_at", UTCDateTime),
    #: time of the last raw sample already turned into usage (the pairing anchor)
    _opt("metered_until", UTCDateTime),
    UniqueConstraint("node_id", "path", "cgroup_id"),
)

#: raw kernel counters of one group incarnation at one instant.
#:
#: The two raw tables (``samples``, ``sample_io``) carry no foreign keys on purpose: they
#: take tens of thousands of rows a second, and checking three parent rows per sample cost
#: 30% of SQLite's ingest rate.  Integrity is kept by the one writer,
#: :func:`governor.store.service.record_samples`, which takes node and group ids from their
#: tables in the same transaction; retention deletes io rows with their samples.
#: SQLite: the primary key is the table (no separate rowid b-tree): half the index work;
#: key order (node, ts, group): each tick appends at the end of the b-tree instead of
#: touching one page per group, and time-range scans (metering, retention) are direct
samples = Table(
    "samples", metadata,
    _req("node_id", Integer),
    _req("group_id", BigInteger),
    _req("ts", UTCDateTime),
    _req("mono", Float),
    *(_opt(name, BigInteger) for name in (
        "cpu_usage_usec", "cpu_user_usec", "cpu_system_usec", "cpu_nr_periods",
        "cpu_nr_throttled", "cpu_throttled_usec", "memory_current", "memory_peak",
        "memory_swap_current", "memory_events_low", "memory_events_high",
        "memory_events_max", "memory_events_oom", "memory_events_oom_kill",
        "memory_events_oom_group_kill", "memory_stat_anon", "memory_stat_file",
        "memory_stat_kernel", "memory_stat_sock", "memory_stat_shmem", "pids_current",
        "psi_cpu_some_usec", "psi_cpu_full_usec", "psi_memory_some_usec",
        "psi_memory_full_usec", "psi_io_some_usec", "psi_io_full_usec",
        #: GroupSample.storage_bytes (issue #19, migration 0002): NULL in rows stored
        #: before it
        "storage_bytes")),
    PrimaryKeyConstraint("node_id", "ts", "group_id"),
    sqlite_with_rowid=False,
)

#: io.stat counters of one device, keyed by the sample's own key plus the device
sample_io = Table(
    "sample_io", metadata,
    _req("node_id", Integer),
    _req("group_id", BigInteger),
    _req("ts", UTCDateTime),
    _req("device", String(32)),
    *(_req(name, BigInteger) for name in ("rbytes", "wbytes", "rios", "wios", "dbytes")),
    PrimaryKeyConstraint("node_id", "ts", "group_id", "device"),
    sqlite_with_rowid=False,
)

#: the generic controllers' values of a sample (``GroupSample.values``, migration 0003):
#: one row per key, keyed by the sample's own key plus the value's; written with the
#: sample, deleted with it by retention (no foreign keys, as the raw tables above)
sample_values = Table(
    "sample_values", metadata,
    _req("node_id", Integer),
    _req("group_id", BigInteger),
    _req("ts", UTCDateTime),
    #: "<controller>.<name>", e.g. "hugetlb.2MB.current"
    _req("key", String(64)),
    _req("value", BigInteger),
    PrimaryKeyConstraint("node_id", "ts", "group_id", "key"),
    sqlite_with_rowid=False,
)


def _quantities() -> list[Column[Any]]:
    """Integer usage quantities shared by interval usage and hourly rollups."""
    return [
        *(_req(name, BigInteger, default=0) for name in (
            "cpu_usec", "cpu_user_usec", "cpu_system_usec", "cpu_throttled_usec",
            "memory_byte_seconds", "io_rbytes", "io_wbytes", "io_rios", "io_wios",
            "io_dbytes", "oom_events", "oom_kills")),
        # the writable layers' integral (issue #19), added by migration 0002: the rows
        # written before it hold 0 (the server default), which is what they metered of it;
        # the server default also keeps a writer that does not name the column valid
        _req("storage_byte_seconds", BigInteger, default=0, server_default=text("0")),
    ]


#: usage of one incarnation between two consecutive samples
usage_intervals = Table(
    "usage_intervals", metadata,
    Column("node_id", Integer, ForeignKey("nodes.id"), primary_key=True),
    Column("group_id", BigInteger, ForeignKey("groups.id"), primary_key=True),
    Column("end_ts", UTCDateTime, primary_key=True),
    _req("start_ts", UTCDateTime),
    _req("duration_us", BigInteger),
    _req("from_creation", Boolean, default=False),
    *_quantities(),
)

#: the sum of the interval usages of one incarnation on one node in one UTC hour.
#: Key order (group, hour, node): bills read one group's hours as one index range (no
#: index on hour alone: without statistics SQLite would pick it for a month's range and
#: visit 720,000 rows in random order; the clustered key serves bills and reports)
rollups_hourly = Table(
    "rollups_hourly", metadata,
    _req("node_id", Integer, ForeignKey("nodes.id")),
    _req("group_id", BigInteger, ForeignKey("groups.id")),
    _req("hour", UTCDateTime),
    _req("covered_us", BigInteger, default=0),
    _req("intervals", Integer, default=0),
    *_quantities(),
    PrimaryKeyConstraint("group_id", "hour", "node_id"),
    sqlite_with_rowid=False,
)

#: the generic controllers' quantities (governor.controllers: a Quantity with a method) of
#: one interval (migration 0003): one row per quantity metered over it, beside its
#: usage_intervals row; a quantity with no row was not metered there (missing is not zero)
usage_values = Table(
    "usage_values", metadata,
    _req("node_id", Integer, ForeignKey("nodes.id")),
    _req("group_id", BigInteger, ForeignKey("groups.id")),
    _req("end_ts", UTCDateTime),
    #: the Quantity's name, e.g. "hugetlb_byte_seconds"
    _req("quantity", String(64)),
    _req("value", BigInteger),
    PrimaryKeyConstraint("node_id", "group_id", "end_ts", "quantity"),
)

#: the generic controllers' quantities summed per incarnation, node and UTC hour
#: (migration 0003), as rollups_hourly's columns are; key order as rollups_hourly's
rollup_values = Table(
    "rollup_values", metadata,
    _req("node_id", Integer, ForeignKey("nodes.id")),
    _req("group_id", BigInteger, ForeignKey("groups.id")),
    _req("hour", UTCDateTime),
    _req("quantity", String(64)),
    _req("value", BigInteger),
    PrimaryKeyConstraint("group_id", "hour", "node_id", "quantity"),
    sqlite_with_rowid=False,
)

price_plans = Table(
    "price_plans", metadata,
    Column("id", Integer, primary_key=True),
    _req("name", String(64)),
    #: 1, 2, ... in the order recorded (governor.billing.history: one row per version)
    _req("version", Integer),
    _req("currency", String(3)),
    _req("memory_basis", String(16)),
    _opt("effective", UTCDateTime),
    _req("cpu_core_hour", MONEY),
    _req("memory_gib_hour", MONEY),
    _req("io_read_gib", MONEY),
    _req("io_write_gib", MONEY),
    _req("oom_kill", MONEY),
    _req("recorded_at", UTCDateTime),
    #: the writable layers' price (issue #19, migration 0002); NULL: recorded before
    #: governor priced them (governor.billing.history says how such a row is read)
    _opt("storage_gib_hour", MONEY),
    #: the generic controllers' prices (migration 0003): {plan key: decimal text} of the
    #: registered quantities (governor.controllers), e.g. {"hugetlb_gib_hour": "0.01"};
    #: NULL or a key left out: recorded before governor priced it (as storage_gib_hour)
    _opt("quantity_prices", JSON),
    UniqueConstraint("name", "version"),
)

#: a policy version applied on a node: what triggered it and the writes it made
applied_policies = Table(
    "applied_policies", metadata,
    Column("id", BigId, primary_key=True),
    _req("node_id", Integer, ForeignKey("nodes.id")),
    _req("applied_at", UTCDateTime),
    _req("policy_hash", String(128)),
    _req("trigger", String(64)),
    #: [{"path": "tenant/group", "file": "memory.min", "value": "1073741824"}, ...]
    _req("writes", JSON),
    Index("ix_applied_policies_node_applied", "node_id", "applied_at"),
)

oom_events = Table(
    "oom_events", metadata,
    Column("id", BigId, primary_key=True),
    _req("node_id", Integer, ForeignKey("nodes.id")),
    _req("tenant_id", Integer, ForeignKey("tenants.id")),
    _opt("group_id", BigInteger, ForeignKey("groups.id")),
    _req("ts", UTCDateTime),
    #: "oom", "oom_kill" or "oom_group_kill" (the memory.events key)
    _req("kind", String(32)),
    _req("count", BigInteger),
    _opt("pid", BigInteger),
    _opt("comm", String(64)),
    _opt("rss_bytes", BigInteger),
    _req("missed_while_down", Boolean, default=False),
    Index("ix_oom_events_node_ts", "node_id", "ts"),
)

#: a stretch of time whose samples were lost, said out loud
gaps = Table(
    "gaps", metadata,
    Column("id", BigId, primary_key=True),
    _req("node_id", Integer, ForeignKey("nodes.id")),
    _req("from_ts", UTCDateTime),
    _req("to_ts", UTCDateTime),
    _req("reason", Text),
    _req("rows_lost", BigInteger),
    _req("recorded_at", UTCDateTime),
    UniqueConstraint("node_id", "from_ts", "to_ts", "reason"),
)
