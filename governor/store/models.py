"""The schema, as SQLAlchemy 2.0 typed declarative models.

Conventions: every row carries its node; counters and sizes are ``BigInteger``; money is
``Numeric``; every timestamp is UTC (:class:`UTCDateTime` stores naive UTC on SQLite and
``timestamptz`` on PostgreSQL, and always hands back aware UTC datetimes).  A ``NULL`` counter
is a value the sampler could not read: missing is not zero.

Raw samples are keyed by ``(node_id, group_id, ts)`` -- node, group incarnation, sample time --
so a batch replayed after a crash is not doubled (``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
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
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Node(Base):
    __tablename__ = "nodes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class Group(Base):
    """One *incarnation* of a group on a node: its path plus the cgroup directory's inode."""

    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("node_id", "path", "cgroup_id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    #: group name, NULL for the tenant's own cgroup
    name: Mapped[str | None] = mapped_column(String(64))
    #: "tenant" or "tenant/group"
    path: Mapped[str] = mapped_column(String(200))
    cgroup_id: Mapped[int] = mapped_column(BigInteger)
    #: creation time when known (governor made it or saw it made), else NULL
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: time of the last raw sample already turned into usage (the pairing anchor)
    metered_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Sample(Base):
    """Raw kernel counters of one group incarnation at one instant.

    The two raw tables (``samples``, ``sample_io``) carry no foreign keys on purpose: they
    take tens of thousands of rows a second, and checking three parent rows per sample cost
    30% of SQLite's ingest rate.  Integrity is kept by the one writer,
    :func:`governor.store.service.record_samples`, which takes node and group ids from their
    tables in the same transaction; retention deletes io rows with their samples.
    """

    __tablename__ = "samples"
    # SQLite: the primary key is the table (no separate rowid b-tree): half the index work
    # key order (node, ts, group): each tick appends at the end of the b-tree instead of
    # touching one page per group, and time-range scans (metering, retention) are direct
    __table_args__ = (
        PrimaryKeyConstraint("node_id", "ts", "group_id"),
        {"sqlite_with_rowid": False},
    )
    node_id: Mapped[int] = mapped_column(Integer)
    group_id: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    mono: Mapped[float] = mapped_column(Float)
    cpu_usage_usec: Mapped[int | None] = mapped_column(BigInteger)
    cpu_user_usec: Mapped[int | None] = mapped_column(BigInteger)
    cpu_system_usec: Mapped[int | None] = mapped_column(BigInteger)
    cpu_nr_periods: Mapped[int | None] = mapped_column(BigInteger)
    cpu_nr_throttled: Mapped[int | None] = mapped_column(BigInteger)
    cpu_throttled_usec: Mapped[int | None] = mapped_column(BigInteger)
    memory_current: Mapped[int | None] = mapped_column(BigInteger)
    memory_peak: Mapped[int | None] = mapped_column(BigInteger)
    memory_swap_current: Mapped[int | None] = mapped_column(BigInteger)
    memory_events_low: Mapped[int | None] = mapped_column(BigInteger)
    memory_events_high: Mapped[int | None] = mapped_column(BigInteger)
    memory_events_max: Mapped[int | None] = mapped_column(BigInteger)
    memory_events_oom: Mapped[int | None] = mapped_column(BigInteger)
    memory_events_oom_kill: Mapped[int | None] = mapped_column(BigInteger)
    memory_events_oom_group_kill: Mapped[int | None] = mapped_column(BigInteger)
    memory_stat_anon: Mapped[int | None] = mapped_column(BigInteger)
    memory_stat_file: Mapped[int | None] = mapped_column(BigInteger)
    memory_stat_kernel: Mapped[int | None] = mapped_column(BigInteger)
    memory_stat_sock: Mapped[int | None] = mapped_column(BigInteger)
    memory_stat_shmem: Mapped[int | None] = mapped_column(BigInteger)
    pids_current: Mapped[int | None] = mapped_column(BigInteger)
    psi_cpu_some_usec: Mapped[int | None] = mapped_column(BigInteger)
    psi_cpu_full_usec: Mapped[int | None] = mapped_column(BigInteger)
    psi_memory_some_usec: Mapped[int | None] = mapped_column(BigInteger)
    psi_memory_full_usec: Mapped[int | None] = mapped_column(BigInteger)
    psi_io_some_usec: Mapped[int | None] = mapped_column(BigInteger)
    psi_io_full_usec: Mapped[int | None] = mapped_column(BigInteger)
    #: GroupSample.storage_bytes (issue #19, migration 0002): NULL in rows stored before it
    storage_bytes: Mapped[int | None] = mapped_column(BigInteger)


class SampleIo(Base):
    """io.stat counters of one device, keyed by the sample's own key plus the device."""

    __tablename__ = "sample_io"
    __table_args__ = (
        PrimaryKeyConstraint("node_id", "ts", "group_id", "device"),
        {"sqlite_with_rowid": False},
    )
    node_id: Mapped[int] = mapped_column(Integer)
    group_id: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    device: Mapped[str] = mapped_column(String(32))
    rbytes: Mapped[int] = mapped_column(BigInteger)
    wbytes: Mapped[int] = mapped_column(BigInteger)
    rios: Mapped[int] = mapped_column(BigInteger)
    wios: Mapped[int] = mapped_column(BigInteger)
    dbytes: Mapped[int] = mapped_column(BigInteger)


class _Quantities:
    """Integer usage quantities shared by interval usage and hourly rollups."""

    cpu_usec: Mapped[int] = mapped_column(BigInteger, default=0)
    cpu_user_usec: Mapped[int] = mapped_column(BigInteger, default=0)
    cpu_system_usec: Mapped[int] = mapped_column(BigInteger, default=0)
    cpu_throttled_usec: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_byte_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    io_rbytes: Mapped[int] = mapped_column(BigInteger, default=0)
    io_wbytes: Mapped[int] = mapped_column(BigInteger, default=0)
    io_rios: Mapped[int] = mapped_column(BigInteger, default=0)
    io_wios: Mapped[int] = mapped_column(BigInteger, default=0)
    io_dbytes: Mapped[int] = mapped_column(BigInteger, default=0)
    oom_events: Mapped[int] = mapped_column(BigInteger, default=0)
    oom_kills: Mapped[int] = mapped_column(BigInteger, default=0)
    #: the writable layers' integral (issue #19), added by migration 0002: the rows written
    #: before it hold 0 (the server default), which is what they metered of it; the server
    #: default also keeps a writer that does not name the column valid
    storage_byte_seconds: Mapped[int] = mapped_column(BigInteger, default=0,
                                                      server_default=text("0"))


class IntervalUsageRow(_Quantities, Base):
    """Usage of one incarnation between two consecutive samples (NULL: unknown)."""

    __tablename__ = "usage_intervals"
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    group_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("groups.id"), primary_key=True)
    end_ts: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    start_ts: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_us: Mapped[int] = mapped_column(BigInteger)
    from_creation: Mapped[bool] = mapped_column(Boolean, default=False)


class HourlyRollup(_Quantities, Base):
    """Sum of the interval usages of one incarnation on one node in one UTC hour."""

    __tablename__ = "rollups_hourly"
    # key order (group, hour, node): bills read one group's hours as one index range
    # (no index on hour alone: without statistics SQLite would pick it for a month's range
    # and visit 720,000 rows in random order; the clustered key serves bills and reports)
    __table_args__ = (
        PrimaryKeyConstraint("group_id", "hour", "node_id"),
        {"sqlite_with_rowid": False},
    )
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    group_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("groups.id"))
    hour: Mapped[datetime] = mapped_column(UTCDateTime)
    covered_us: Mapped[int] = mapped_column(BigInteger, default=0)
    intervals: Mapped[int] = mapped_column(Integer, default=0)


class PricePlanRow(Base):
    __tablename__ = "price_plans"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    #: 1, 2, ... in the order recorded (governor.billing.history: one row per version)
    version: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    memory_basis: Mapped[str] = mapped_column(String(16))
    effective: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cpu_core_hour: Mapped[Decimal] = mapped_column(MONEY)
    memory_gib_hour: Mapped[Decimal] = mapped_column(MONEY)
    io_read_gib: Mapped[Decimal] = mapped_column(MONEY)
    io_write_gib: Mapped[Decimal] = mapped_column(MONEY)
    oom_kill: Mapped[Decimal] = mapped_column(MONEY)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: the writable layers' price (issue #19, migration 0002); NULL: recorded before
    #: governor priced them (governor.billing.history says how such a row is read)
    storage_gib_hour: Mapped[Decimal | None] = mapped_column(MONEY)


class AppliedPolicy(Base):
    """A policy version applied on a node: what triggered it and the writes it made."""

    __tablename__ = "applied_policies"
    __table_args__ = (Index("ix_applied_policies_node_applied", "node_id", "applied_at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime)
    policy_hash: Mapped[str] = mapped_column(String(128))
    trigger: Mapped[str] = mapped_column(String(64))
    #: [{"path": "tenant/group", "file": "memory.min", "value": "1073741824"}, ...]
    writes: Mapped[list[dict[str, str]]] = mapped_column(JSON)


class OomEvent(Base):
    __tablename__ = "oom_events"
    __table_args__ = (Index("ix_oom_events_node_ts", "node_id", "ts"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    group_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("groups.id"))
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    #: "oom", "oom_kill" or "oom_group_kill" (the memory.events key)
    kind: Mapped[str] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(BigInteger)
    pid: Mapped[int | None] = mapped_column(BigInteger)
    comm: Mapped[str | None] = mapped_column(String(64))
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    missed_while_down: Mapped[bool] = mapped_column(Boolean, default=False)


class Gap(Base):
    """A stretch of time whose samples were lost, said out loud."""

    __tablename__ = "gaps"
    __table_args__ = (UniqueConstraint("node_id", "from_ts", "to_ts", "reason"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    from_ts: Mapped[datetime] = mapped_column(UTCDateTime)
    to_ts: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)
    rows_lost: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
