"""The schema's ORM classes, mapped onto the Core tables of :mod:`governor.store.tables`.

The tables (columns, keys, conventions) are defined there, once; these classes map them
for the code that likes ORM attribute access (the reporting commands' queries, the tests,
migrations' metadata).  The daemon's path never imports this module: it would load
``sqlalchemy.orm`` (issue #16, resident memory).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import DeclarativeBase, Mapped

from governor.store import tables
from governor.store.tables import MONEY, NAMING, BigId, UTCDateTime

__all__ = ["MONEY", "NAMING", "AppliedPolicy", "Base", "BigId", "Gap", "Group", "HourlyRollup",
           "IntervalUsageRow", "Node", "OomEvent", "PricePlanRow", "Sample", "SampleIo",
           "Tenant", "UTCDateTime"]


class Base(DeclarativeBase):
    metadata = tables.metadata


class Node(Base):
    __table__ = tables.nodes
    id: Mapped[int]
    name: Mapped[str]
    first_seen: Mapped[datetime]
    uid: Mapped[str | None]


class Tenant(Base):
    __table__ = tables.tenants
    id: Mapped[int]
    name: Mapped[str]


class Group(Base):
    """One *incarnation* of a group on a node: its path plus the cgroup directory's inode."""

    __table__ = tables.groups
    id: Mapped[int]
    node_id: Mapped[int]
    tenant_id: Mapped[int]
    #: group name, NULL for the tenant's own cgroup
    name: Mapped[str | None]
    #: "tenant" or "tenant/group"
    path: Mapped[str]
    cgroup_id: Mapped[int]
    #: creation time when known (governor made it or saw it made), else NULL
    created_at: Mapped[datetime | None]
    first_seen: Mapped[datetime]
    removed_at: Mapped[datetime | None]
    #: time of the last raw sample already turned into usage (the pairing anchor)
    metered_until: Mapped[datetime | None]


class Sample(Base):
    """Raw kernel counters of one group incarnation at one instant (no foreign keys on
    purpose: :data:`governor.store.tables.samples` says why)."""

    __table__ = tables.samples
    node_id: Mapped[int]
    group_id: Mapped[int]
    ts: Mapped[datetime]
    mono: Mapped[float]
    cpu_usage_usec: Mapped[int | None]
    cpu_user_usec: Mapped[int | None]
    cpu_system_usec: Mapped[int | None]
    cpu_nr_periods: Mapped[int | None]
    cpu_nr_throttled: Mapped[int | None]
    cpu_throttled_usec: Mapped[int | None]
    memory_current: Mapped[int | None]
    memory_peak: Mapped[int | None]
    memory_swap_current: Mapped[int | None]
    memory_events_low: Mapped[int | None]
    memory_events_high: Mapped[int | None]
    memory_events_max: Mapped[int | None]
    memory_events_oom: Mapped[int | None]
    memory_events_oom_kill: Mapped[int | None]
    memory_events_oom_group_kill: Mapped[int | None]
    memory_stat_anon: Mapped[int | None]
    memory_stat_file: Mapped[int | None]
    memory_stat_kernel: Mapped[int | None]
    memory_stat_sock: Mapped[int | None]
    memory_stat_shmem: Mapped[int | None]
    pids_current: Mapped[int | None]
    psi_cpu_some_usec: Mapped[int | None]
    psi_cpu_full_usec: Mapped[int | None]
    psi_memory_some_usec: Mapped[int | None]
    psi_memory_full_usec: Mapped[int | None]
    psi_io_some_usec: Mapped[int | None]
    psi_io_full_usec: Mapped[int | None]
    #: GroupSample.storage_bytes (issue #19, migration 0002): NULL in rows stored before it
    storage_bytes: Mapped[int | None]


class SampleIo(Base):
    """io.stat counters of one device, keyed by the sample's own key plus the device."""

    __table__ = tables.sample_io
    node_id: Mapped[int]
    group_id: Mapped[int]
    ts: Mapped[datetime]
    device: Mapped[str]
    rbytes: Mapped[int]
    wbytes: Mapped[int]
    rios: Mapped[int]
    wios: Mapped[int]
    dbytes: Mapped[int]


class _Quantities:
    """Integer usage quantities shared by interval usage and hourly rollups."""

    cpu_usec: Mapped[int]
    cpu_user_usec: Mapped[int]
    cpu_system_usec: Mapped[int]
    cpu_throttled_usec: Mapped[int]
    memory_byte_seconds: Mapped[int]
    io_rbytes: Mapped[int]
    io_wbytes: Mapped[int]
    io_rios: Mapped[int]
    io_wios: Mapped[int]
    io_dbytes: Mapped[int]
    oom_events: Mapped[int]
    oom_kills: Mapped[int]
    #: the writable layers' integral (issue #19, migration 0002)
    storage_byte_seconds: Mapped[int]


class IntervalUsageRow(_Quantities, Base):
    """Usage of one incarnation between two consecutive samples (NULL: unknown)."""

    __table__ = tables.usage_intervals
    node_id: Mapped[int]
    group_id: Mapped[int]
    end_ts: Mapped[datetime]
    start_ts: Mapped[datetime]
    duration_us: Mapped[int]
    from_creation: Mapped[bool]


class HourlyRollup(_Quantities, Base):
    """Sum of the interval usages of one incarnation on one node in one UTC hour."""

    __table__ = tables.rollups_hourly
    node_id: Mapped[int]
    group_id: Mapped[int]
    hour: Mapped[datetime]
    covered_us: Mapped[int]
    intervals: Mapped[int]


class PricePlanRow(Base):
    __table__ = tables.price_plans
    id: Mapped[int]
    name: Mapped[str]
    #: 1, 2, ... in the order recorded (governor.billing.history: one row per version)
    version: Mapped[int]
    currency: Mapped[str]
    memory_basis: Mapped[str]
    effective: Mapped[datetime | None]
    cpu_core_hour: Mapped[Decimal]
    memory_gib_hour: Mapped[Decimal]
    io_read_gib: Mapped[Decimal]
    io_write_gib: Mapped[Decimal]
    oom_kill: Mapped[Decimal]
    recorded_at: Mapped[datetime]
    #: the writable layers' price (issue #19, migration 0002); NULL: recorded before
    #: governor priced them (governor.billing.history says how such a row is read)
    storage_gib_hour: Mapped[Decimal | None]


class AppliedPolicy(Base):
    """A policy version applied on a node: what triggered it and the writes it made."""

    __table__ = tables.applied_policies
    id: Mapped[int]
    node_id: Mapped[int]
    applied_at: Mapped[datetime]
    policy_hash: Mapped[str]
    trigger: Mapped[str]
    #: [{"path": "tenant/group", "file": "memory.min", "value": "1073741824"}, ...]
    writes: Mapped[list[dict[str, str]]]


class OomEvent(Base):
    __table__ = tables.oom_events
    id: Mapped[int]
    node_id: Mapped[int]
    tenant_id: Mapped[int]
    group_id: Mapped[int | None]
    ts: Mapped[datetime]
    #: "oom", "oom_kill" or "oom_group_kill" (the memory.events key)
    kind: Mapped[str]
    count: Mapped[int]
    pid: Mapped[int | None]
    comm: Mapped[str | None]
    rss_bytes: Mapped[int | None]
    missed_while_down: Mapped[bool]


class Gap(Base):
    """A stretch of time whose samples were lost, said out loud."""

    __table__ = tables.gaps
    id: Mapped[int]
    node_id: Mapped[int]
    from_ts: Mapped[datetime]
    to_ts: Mapped[datetime]
    reason: Mapped[str]
    rows_lost: Mapped[int]
    recorded_at: Mapped[datetime]
