"""The validated, typed policy the rest of governor consumes.

Everything here is a frozen dataclass built only by :mod:`governor.policy.loader` after every
check passed; the enforcer, placement, metering and billing read it and never re-validate.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from governor.policy.units import MAX, CpuMax, Size

if TYPE_CHECKING:
    from governor.policy.problems import Problem

MemoryBasis: TypeAlias = Literal["usage", "reservation", "max"]
OomAction: TypeAlias = Literal["log", "alert", "restart"]
#: what a node's unused capacity becomes on a bill (docs/billing.md, "Node costs and idle")
IdleMode: TypeAlias = Literal["unassigned", "split"]
RESTART_BACKOFF_CAP_US = 300_000_000  # 5 minutes: the longest wait between two restarts


def _size(value: Size) -> str:
    return "max" if value is MAX else str(value)


@dataclass(frozen=True, slots=True)
class IoMax:
    """One ``io.max`` line: a device and its four limits (None = ``max``, no limit)."""

    device: str  # as written in the policy: a path or "MAJ:MIN"
    major: int
    minor: int
    rbps: int | None = None
    wbps: int | None = None
    riops: int | None = None
    wiops: int | None = None

    def kernel(self) -> str:
        """``"253:0 rbps=max wbps=10485760 riops=1000 wiops=max"``."""
        parts = [f"{self.major}:{self.minor}"]
        for key in ("rbps", "wbps", "riops", "wiops"):
            value = getattr(self, key)
            parts.append(f"{key}={'max' if value is None else value}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Limits:
    """A typed resource spec; every ``None`` field means "leave this interface file alone".

    Sizes are int bytes or :data:`~governor.policy.units.MAX`.  ``cpu_weight`` and
    ``io_weight`` already hold converted values when the policy used ``cpu.shares`` or
    ``io.blkio_weight``.
    """

    memory_min: Size | None = None
    memory_low: Size | None = None
    memory_high: Size | None = None
    memory_max: Size | None = None
    memory_swap_max: Size | None = None
    cpu_weight: int | None = None
    cpu_max: CpuMax | None = None
    cpu_max_burst_us: int | None = None
    io_weight: int | None = None
    io_max: tuple[IoMax, ...] = ()
    pids_max: Size | None = None
    memory_oom_group: bool | None = None
    #: the registered generic controllers' writes (governor/controllers/), in registry
    #: order: ``(interface file, kernel value)``, e.g. ``("cpuset.cpus", "0-3")``
    extra: tuple[tuple[str, str], ...] = ()

    def files(self) -> list[tuple[str, str]]:
        """``(interface file, kernel-formatted value)`` pairs in the order to write them.

        Memory protections go first and the hard limit last within the memory controller,
        so a tightening write never meets a stale higher floor; then cpu, io, pids,
        ``memory.oom.group`` and the generic controllers' writes (:attr:`extra`).
        """
        out: list[tuple[str, str]] = []
        for name, value in (
            ("memory.min", self.memory_min),
            ("memory.low", self.memory_low),
            ("memory.high", self.memory_high),
            ("memory.max", self.memory_max),
            ("memory.swap.max", self.memory_swap_max),
        ):
            if value is not None:
                out.append((name, _size(value)))
        if self.cpu_weight is not None:
            out.append(("cpu.weight", str(self.cpu_weight)))
        if self.cpu_max is not None:
            out.append(("cpu.max", self.cpu_max.kernel()))
        if self.cpu_max_burst_us is not None:
            out.append(("cpu.max.burst", str(self.cpu_max_burst_us)))
        if self.io_weight is not None:
            out.append(("io.weight", f"default {self.io_weight}"))
        out.extend(("io.max", line.kernel()) for line in self.io_max)
        if self.pids_max is not None:
            out.append(("pids.max", _size(self.pids_max)))
        if self.memory_oom_group is not None:
            out.append(("memory.oom.group", "1" if self.memory_oom_group else "0"))
        out.extend(self.extra)
        return out

    def controllers(self) -> frozenset[str]:
        """The controllers the files of :meth:`files` belong to (memory, cpu, io, pids,
        and those of :attr:`extra`: cpuset...)."""
        return frozenset(name.split(".", 1)[0] for name, _ in self.files())


@dataclass(frozen=True, slots=True)
class ContainerMatch:
    """``container = {pidns = N}`` or ``{init = "name"}``: a process in that container."""

    pidns: int | None = None
    init: str | None = None


@dataclass(frozen=True, slots=True)
class MatchRule:
    """A placement rule (used by :mod:`governor.placement`; see docs/placement.md).

    A process matches when every field that is set matches: ``exe``, ``comm`` and ``cgroup``
    are shell globs, ``cmdline`` a Python regex (searched in the command line, arguments
    joined by single spaces), ``container`` True/False for "in any container"/"on the host",
    or a :class:`ContainerMatch`.  ``on_exec`` is not a condition: it lets the rule take a
    process that already sits in another governed group when it calls exec (children are
    otherwise sticky: they stay in their parent's group).
    """

    user: str | None = None
    uid: int | None = None
    group: str | None = None
    gid: int | None = None
    exe: str | None = None
    comm: str | None = None
    cmdline: str | None = None
    cgroup: str | None = None
    container: bool | ContainerMatch | None = None
    on_exec: bool = False

    def fields(self) -> dict[str, object]:
        """The fields that are set (``on_exec`` only when true)."""
        names = ("user", "uid", "group", "gid", "exe", "comm", "cmdline", "cgroup", "container")
        out = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        if self.on_exec:
            out["on_exec"] = True
        return out


class PressureKey(enum.StrEnum):
    """PSI averages an ``oom.pressure`` threshold may name (memory.pressure fields)."""

    SOME_AVG10 = "some_avg10"
    SOME_AVG60 = "some_avg60"
    SOME_AVG300 = "some_avg300"
    FULL_AVG10 = "full_avg10"
    FULL_AVG60 = "full_avg60"
    FULL_AVG300 = "full_avg300"


@dataclass(frozen=True, slots=True)
class OomSettings:
    """OOM handling of a group: ``group_kill`` (memory.oom.group), ``actions``, PSI
    ``pressure`` thresholds in percent (0..100, sorted by key), and for the ``restart``
    action the most restarts ``governor launch`` makes and the first backoff (doubled after
    each restart, capped at :data:`RESTART_BACKOFF_CAP_US`)."""

    group_kill: bool | None = None
    actions: tuple[OomAction, ...] = ()
    pressure: tuple[tuple[PressureKey, float], ...] = ()
    restart_max: int = 3
    restart_backoff_us: int = 1_000_000


@dataclass(frozen=True, slots=True)
class Group:
    """A leaf cgroup ``<tenant>/<group>`` with its limits and placement rules."""

    name: str
    tenant: str
    limits: Limits
    match: tuple[MatchRule, ...] = ()
    oom: OomSettings = field(default_factory=OomSettings)
    #: storage.max: bytes the writable layers of the group's containers may hold together
    #: (a project quota, not a cgroup file: governor.image.writable); None = no limit
    storage_max: int | None = None
    source: str = ""

    @property
    def path(self) -> str:
        """``"<tenant>/<group>"``, relative to governor's subtree."""
        return f"{self.tenant}/{self.name}"


@dataclass(frozen=True, slots=True)
class Tenant:
    """An inner cgroup over its groups; its limits cap the groups together."""

    name: str
    plan: str | None
    limits: Limits
    groups: dict[str, Group]
    source: str = ""


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """Prices in force from ``effective`` (UTC; None = from the beginning)."""

    effective: datetime | None
    cpu_core_hour: Decimal
    memory_gib_hour: Decimal
    io_read_gib: Decimal
    io_write_gib: Decimal
    oom_kill: Decimal = Decimal(0)
    #: per GiB-hour of the writable layers of containers launched from images (issue #19)
    storage_gib_hour: Decimal = Decimal(0)
    #: the registered controllers' prices (governor.controllers), by plan key (e.g.
    #: ``hugetlb_gib_hour``); a key left out is 0
    quantity_prices: Mapping[str, Decimal] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class PricePlan:
    """A price plan: ``versions`` sorted by effective time, the first one with None."""

    name: str
    currency: str
    versions: tuple[PriceVersion, ...]
    memory_basis: MemoryBasis = "usage"

    def at(self, when: datetime) -> PriceVersion:
        """The version in force at ``when`` (an aware datetime): the last one whose
        ``effective`` is not after it.  A naive ``when`` raises ValueError."""
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("PricePlan.at needs an aware datetime (UTC)")
        when = when.astimezone(UTC)
        current = self.versions[0]
        for version in self.versions[1:]:
            assert version.effective is not None
            if version.effective <= when:
                current = version
            else:
                break
        return current


@dataclass(frozen=True, slots=True)
class NodeCost:
    """What a node costs per hour and the capacity that cost buys: a
    ``[node_classes.<name>]`` (``node_class`` its name) or a ``[nodes."<name>"]`` of its
    own (``node_class`` None)."""

    cost_per_hour: Decimal
    currency: str
    #: CPUs (cores) and memory (bytes) the node offers: the capacity shares are taken of
    cpus: Decimal
    memory: int
    node_class: str | None = None


#: OpenCost's default prices of a core-hour and a GiB-hour (its configs/default.json), used,
#: as OpenCost uses them, only for their ratio: how a node's cost splits into CPU and RAM
OPENCOST_CPU_CORE_HOUR: Final = Decimal("0.031611")
OPENCOST_RAM_GIB_HOUR: Final = Decimal("0.004237")


@dataclass(frozen=True, slots=True)
class NodeCosts:
    """``[node_costs]``, ``[node_classes.<name>]`` and ``[nodes."<name>"]``: each node's
    cost (by node name; a node not listed has none), how idle capacity is billed and the
    CPU:RAM weighting of a node's cost."""

    nodes: Mapping[str, NodeCost] = field(default_factory=dict)
    idle: IdleMode = "unassigned"
    cpu_core_hour_weight: Decimal = OPENCOST_CPU_CORE_HOUR
    memory_gib_hour_weight: Decimal = OPENCOST_RAM_GIB_HOUR


@dataclass(frozen=True, slots=True)
class Policy:
    """The whole validated policy.

    ``digest`` is a sha256 over the normalised content (not the file names, layout,
    comments or whitespace), so moving a tenant between drop-ins keeps it.  ``warnings``
    holds the problems of severity "warning" found while loading (not in the digest).
    """

    tenants: dict[str, Tenant]
    plans: dict[str, PricePlan]
    sources: tuple[str, ...]
    digest: str
    warnings: tuple[Problem, ...] = ()
    node_costs: NodeCosts = field(default_factory=NodeCosts)

    def groups(self) -> list[Group]:
        """Every group of every tenant, in policy order."""
        return [g for t in self.tenants.values() for g in t.groups.values()]
