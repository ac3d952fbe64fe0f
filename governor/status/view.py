"""Rows of ``governor status`` / ``governor top``: pure functions of two snapshots.

The "model" layer (below's shape): a :class:`Snapshot` holds raw kernel values of every
tenant and group at one instant (from :mod:`governor.status.snapshot`); :func:`rows`
derives rates from a *pair* of snapshots and never from a single read:

* CPU %: delta ``cpu.stat usage_usec`` over the delta of the group's own read times
  (100 = one core busy);
* IO read/write bytes per second: deltas of ``io.stat rbytes``/``wbytes`` summed over the
  devices (a device line absent from io.stat means no IO was seen there yet: 0);
* OOM kills: ``memory.events oom_kill`` (total, and how many happened between the reads);
* storage: the bytes of the writable layers of the group's containers launched from images
  (issue #19), as measured at the second read (``None``: none measured).

A group present in the first snapshot and absent from the second is ``gone`` (no figures,
not zeros); a group that appeared, or was re-created with a new cgroup id, between the reads
is ``new`` (current values only, no rates); a counter that went backwards gives no rate.
Limits are read from the kernel files (``max`` stays ``"max"``), not from the policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from governor.cgroupfs.parse import CpuMax, Limit
from governor.cgroupfs.reader import GroupStats
from governor.controllers import registry

SortKey = Literal["cpu", "memory", "io", "pids", "name"]
SORT_KEYS: tuple[SortKey, ...] = ("cpu", "memory", "io", "pids", "name")
State = Literal["live", "new", "gone"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Limit files of one group as the kernel has them (None: the file is absent)."""

    memory_max: Limit | None = None
    memory_high: Limit | None = None
    swap_max: Limit | None = None
    pids_max: Limit | None = None
    cpu_max: CpuMax | None = None


@dataclass(frozen=True, slots=True)
class GroupRead:
    stats: GroupStats
    limits: Limits
    at: float  # time.monotonic() when this group was read
    #: bytes of the writable layers of the group's containers launched from images, summed
    #: (not a cgroup file: measured by the image code, see snapshot.WritableBytes); None: not
    #: measured (no measurer, or it could not read it)
    storage_bytes: int | None = None
    #: the generic controllers' values (``Controller.read_values``) and read-back values
    #: (``Controller.read_effective``: ``{"cpus": "0-1"}``), for their status columns
    values: Mapping[str, int] = field(default_factory=dict)
    effective: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every tenant and group below the subtree at one instant; keys are ``tenant`` or
    ``tenant/group`` (relative to the subtree)."""

    groups: dict[str, GroupRead] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Row:
    path: str
    tenant: str
    group: str | None
    state: State
    interval_s: float | None = None
    cpu_percent: float | None = None
    cpu_usage_usec: int | None = None
    cpu_max_cores: float | Literal["max"] | None = None
    memory_current_bytes: int | None = None
    memory_max_bytes: Limit | None = None
    memory_high_bytes: Limit | None = None
    swap_current_bytes: int | None = None
    swap_max_bytes: Limit | None = None
    io_read_bytes_per_s: float | None = None
    io_write_bytes_per_s: float | None = None
    pids_current: int | None = None
    pids_max: Limit | None = None
    oom_kills: int | None = None
    oom_kills_interval: int | None = None
    storage_bytes: int | None = None
    #: the registered controllers' columns: ``(json key, text or None)`` in registry order
    columns: tuple[tuple[str, str | None], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON shape (docs/status.md), then the registered controllers'
        columns (``cpus``, ``mems``: null when nothing is known)."""
        return {**{name: getattr(self, name) for name in JSON_FIELDS}, **dict(self.columns)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Row:
        """The row :meth:`as_dict` gave (``governor status --format json``'s groups): the
        stable fields, and every other key as a registered controller's column."""
        known = {k: doc[k] for k in JSON_FIELDS if k in doc}
        extra = tuple((k, v) for k, v in doc.items() if k not in JSON_FIELDS)
        return cls(**known, columns=extra)


#: the JSON field names, in documentation order (docs/status.md); stable
JSON_FIELDS: tuple[str, ...] = (
    "path", "tenant", "group", "state", "interval_s", "cpu_percent", "cpu_usage_usec",
    "cpu_max_cores", "memory_current_bytes", "memory_max_bytes", "memory_high_bytes",
    "swap_current_bytes", "swap_max_bytes", "io_read_bytes_per_s", "io_write_bytes_per_s",
    "pids_current", "pids_max", "oom_kills", "oom_kills_interval", "storage_bytes",
)


def _delta(a: int | None, b: int | None) -> int | None:
    """``b - a``; None when either is missing or the counter went backwards (a reset)."""
    if a is None or b is None or b < a:
        return None
    return b - a


def _io_totals(st: GroupStats) -> tuple[int, int] | None:
    if st.io is None:
        return None  # io controller not enabled here: missing, not zero
    r = sum(c.get("rbytes", 0) for c in st.io.values())
    w = sum(c.get("wbytes", 0) for c in st.io.values())
    return r, w


def _cores(c: CpuMax | None) -> float | Literal["max"] | None:
    if c is None:
        return None
    if c.quota == "max":
        return "max"
    return round(c.quota / c.period, 3)


def _oom_kills(st: GroupStats) -> int | None:
    return None if st.memory_events is None else st.memory_events.get("oom_kill")


def _split(path: str) -> tuple[str, str | None]:
    tenant, _, group = path.partition("/")
    return tenant, group or None


def row(path: str, before: GroupRead | None, after: GroupRead | None) -> Row:
    """One row from the group's two reads (either may be None: absent from that one)."""
    tenant, group = _split(path)
    if after is None:
        return Row(path, tenant, group, "gone",
                   columns=tuple((c.json, None) for c in registry.columns()))
    st, lim = after.stats, after.limits
    cpu_now = (st.cpu or {}).get("usage_usec")
    common: dict[str, Any] = {
        "cpu_usage_usec": cpu_now, "cpu_max_cores": _cores(lim.cpu_max),
        "memory_current_bytes": st.memory_current, "memory_max_bytes": lim.memory_max,
        "memory_high_bytes": lim.memory_high, "swap_current_bytes": st.swap_current,
        "swap_max_bytes": lim.swap_max, "pids_current": st.pids_current,
        "pids_max": lim.pids_max, "oom_kills": _oom_kills(st),
        "storage_bytes": after.storage_bytes,
        "columns": tuple((c.json, c.render(after.values, after.effective))
                         for c in registry.columns())}
    if before is None or before.stats.cgroup_id != st.cgroup_id:
        return Row(path, tenant, group, "new", **common)
    dt = after.at - before.at
    if dt <= 0:
        return Row(path, tenant, group, "live", **common)
    cpu_d = _delta((before.stats.cpu or {}).get("usage_usec"), cpu_now)
    io_a, io_b = _io_totals(before.stats), _io_totals(st)
    rd = wr = None
    if io_a is not None and io_b is not None:
        rd, wr = _delta(io_a[0], io_b[0]), _delta(io_a[1], io_b[1])
    return Row(
        path, tenant, group, "live", interval_s=round(dt, 3),
        cpu_percent=None if cpu_d is None else round(cpu_d / (dt * 1e6) * 100.0, 2),
        io_read_bytes_per_s=None if rd is None else round(rd / dt, 1),
        io_write_bytes_per_s=None if wr is None else round(wr / dt, 1),
        oom_kills_interval=_delta(_oom_kills(before.stats), _oom_kills(st)), **common)


def _key(r: Row, by: SortKey) -> tuple[Any, ...]:
    """Sort key: biggest first for figures (missing and gone last), names ascending."""
    if by == "name":
        return (r.path,)
    val: float | None
    if by == "cpu":
        val = r.cpu_percent
    elif by == "memory":
        val = r.memory_current_bytes
    elif by == "io":
        val = (None if r.io_read_bytes_per_s is None or r.io_write_bytes_per_s is None
               else r.io_read_bytes_per_s + r.io_write_bytes_per_s)
    else:
        val = r.pids_current
    return (val is None, -(val or 0), r.path)


def sort_rows(rs: Iterable[Row], by: SortKey) -> list[Row]:
    """Tenants sorted by ``by``, each followed by its own groups sorted the same way."""
    all_rows = list(rs)
    tenants = {r.tenant: r for r in all_rows if r.group is None}
    children: dict[str, list[Row]] = {}
    for r in all_rows:
        if r.group is not None:
            children.setdefault(r.tenant, []).append(r)
    # a group whose tenant row is missing (tenant read failed) still shows, under its name
    order = sorted(tenants.values(), key=lambda r: _key(r, by))
    names = [r.tenant for r in order] + sorted(set(children) - set(tenants))
    out: list[Row] = []
    for name in names:
        if name in tenants:
            out.append(tenants[name])
        out.extend(sorted(children.get(name, []), key=lambda r: _key(r, by)))
    return out


def rows(before: Snapshot, after: Snapshot, *, sort: SortKey = "cpu") -> list[Row]:
    """Every tenant and group seen in either snapshot, sorted (tenants, then their groups)."""
    paths = set(before.groups) | set(after.groups)
    return sort_rows((row(p, before.groups.get(p), after.groups.get(p)) for p in paths), sort)
