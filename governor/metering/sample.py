"""The raw sample: what the sampler reads from one group's interface files at one instant.

Only raw kernel counters and gauges, exactly as the kernel reports them (see
Documentation/admin-guide/cgroup-v2.rst for each file), plus one gauge the cgroup files do not
have: the bytes of the group's containers' writable layers (``storage_bytes``, from a project
quota per container).  A value the sampler could not read is ``None``: missing is not zero.
Rates and usage are derived later from *pairs* of samples (:mod:`governor.metering.usage`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final, TypedDict

from governor.controllers import registry

#: per-device fields of io.stat kept by the store (io.stat also has dios for discards)
IO_FIELDS: Final = ("rbytes", "wbytes", "rios", "wios", "dbytes")

#: PSI keys: "<resource>_<some|full>", values are the ``total=`` microsecond counters of
#: cpu.pressure, memory.pressure, io.pressure (Documentation/accounting/psi.rst)
PSI_KEYS: Final = ("cpu_some", "cpu_full", "memory_some", "memory_full", "io_some", "io_full")
_PSI_KEY_SET: Final = frozenset(PSI_KEYS)


class IoCounters(TypedDict):
    """Cumulative io.stat counters of one device ("MAJ:MIN")."""

    rbytes: int
    wbytes: int
    rios: int
    wios: int
    dbytes: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupSample:
    """One group's raw counters at one instant.

    ``group`` is ``None`` for a tenant-level sample (the tenant's own cgroup).  ``cgroup_id``
    is the inode number of the cgroup directory: a different id under the same path is a new
    incarnation whose counters started again from zero.  ``created`` is the incarnation's
    creation time when the sampler *knows* it (governor made the directory, or saw the
    creation); ``None`` when it was merely found.

    ``storage_bytes`` is the only value not read from the group's interface files: the bytes
    used by the writable (upper) layers of the group's containers launched from images
    (``governor launch --image``), summed, each measured by the project quota of its
    container's upper directory.  ``None`` when the group has no container storage measured
    (nothing measured on this host, a tenant's own sample, or the read failed: missing is not
    zero); 0 when measured and empty (a group without containers from images).  It is the last
    field and the readers (:func:`~governor.metering.tosample.to_sample` and its C twin) leave
    it ``None``: the pass sets it after the sample is built, through the slot's member
    descriptor (``GroupSample.storage_bytes.__set__``), as the readers set every field.
    """

    node: str
    tenant: str
    group: str | None
    cgroup_id: int
    wall: datetime
    monotonic: float
    # cpu.stat
    cpu_usage_usec: int | None = None
    cpu_user_usec: int | None = None
    cpu_system_usec: int | None = None
    cpu_nr_periods: int | None = None
    cpu_nr_throttled: int | None = None
    cpu_throttled_usec: int | None = None
    # memory.current, memory.peak, memory.swap.current
    memory_current: int | None = None
    memory_peak: int | None = None
    memory_swap_current: int | None = None
    # memory.events
    memory_events_low: int | None = None
    memory_events_high: int | None = None
    memory_events_max: int | None = None
    memory_events_oom: int | None = None
    memory_events_oom_kill: int | None = None
    memory_events_oom_group_kill: int | None = None
    # memory.stat subset
    memory_stat_anon: int | None = None
    memory_stat_file: int | None = None
    memory_stat_kernel: int | None = None
    memory_stat_sock: int | None = None
    memory_stat_shmem: int | None = None
    # pids.current
    pids_current: int | None = None
    #: io.stat per device "MAJ:MIN" -> cumulative counters
    io: Mapping[str, IoCounters] = dataclasses.field(default_factory=dict)
    #: PSI ``total=`` counters in microseconds, keys from :data:`PSI_KEYS`
    psi: Mapping[str, int] = dataclasses.field(default_factory=dict)
    created: datetime | None = None
    #: bytes of the writable layers of the group's containers launched from images, summed
    #: (see the class documentation); None: none measured
    storage_bytes: int | None = None
    #: the values of the controllers added through :mod:`governor.controllers` since the
    #: first wave (keys ``"<controller>.<name>"``, e.g. ``"hugetlb.2MB.current"``), raw as
    #: the kernel gave them; None: none read (no such controller enabled, or a tenant's
    #: sample).  Set by the pass after the sample is built, as ``storage_bytes``.
    values: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        # a sample per group per pass: the common case (UTC, known keys) is tested first,
        # in C (issue #16: this check was 4% of the daemon's CPU at 1,000 groups)
        for value in (self.wall, self.created):
            if value is not None and value.tzinfo is not UTC and (
                    value.tzinfo is None or value.utcoffset() is None):
                name = "wall" if value is self.wall else "created"
                raise ValueError(f"GroupSample.{name} must be timezone-aware (UTC), got {value!r}")
        if not _PSI_KEY_SET.issuperset(self.psi):
            key = next(k for k in self.psi if k not in _PSI_KEY_SET)
            raise ValueError(f"unknown PSI key {key!r}; expected one of {PSI_KEYS}")

    @property
    def path(self) -> str:
        """``tenant`` or ``tenant/group``: the group's path below governor's subtree."""
        return self.tenant if self.group is None else f"{self.tenant}/{self.group}"


#: counters (monotonic, cumulative) of a sample; a decrease of any of them is a reset: the
#: first-wave controllers' ``counters`` (governor/controllers/), in _fastmeter.c's order
COUNTER_FIELDS: Final = registry.counters()

#: gauges (instantaneous values) of a sample, each stored in the raw samples' column of the
#: same name (governor.store.bulk): the first-wave controllers' ``gauges``, then the
#: writable layers' bytes (not a cgroup controller's: governor.metering.storage)
GAUGE_FIELDS: Final = (*registry.gauges(), "storage_bytes")
