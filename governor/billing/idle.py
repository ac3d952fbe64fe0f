"""Node costs shared by usage, and idle capacity: OpenCost's cost allocation for governor's
nodes (``governor bill --node-costs``; docs/billing.md, "Node costs and idle").

**The model** (OpenCost's, https://github.com/opencost/opencost/blob/develop/spec/opencost-specv01.md:
an asset's cost is allocated to the workloads by the resources they use, and what is left
is *idle*):

* a node costs ``cost_per_hour`` (the policy's ``[node_classes.<name>]`` or
  ``[nodes."<name>"]``) for each whole UTC hour it is billed (below);
* that cost is split into a CPU part and a RAM part as OpenCost splits a node's total
  price when it has no component prices (its ``costmodel.go``: ``ramPrice = nodePrice /
  (cpus * cpuToRAMRatio + ramGiB)``, ``cpuPrice = ramPrice * cpuToRAMRatio``): the CPU part
  is ``cpus * w_cpu / (cpus * w_cpu + GiB * w_ram)`` of the cost, with the weights
  ``cpu_core_hour_weight`` and ``memory_gib_hour_weight`` of ``[node_costs]`` (default
  OpenCost's default prices, 0.031611 per core-hour and 0.004237 per GiB-hour: only their
  ratio, about 7.46, matters);
* a tenant's share of a node-hour is its **usage** (OpenCost takes ``max(request, usage)``;
  governor meters usage and takes it alone: the CPU core-seconds and memory byte-seconds of
  the tenant's groups on that node in that hour, ``rollups_hourly``) as a fraction of the
  node's declared capacity (``cpus`` x 3600 s, ``memory`` x 3600 s), each fraction times its
  part of the cost;
* **idle** is the node-hour's cost minus the tenants' shares, never negative: where the
  tenants used more than the declared capacity of a resource (a capacity declared too
  small), their shares of that resource are scaled down to its part of the cost and a
  warning says so;
* ``idle = "unassigned"`` (the default) keeps one ``__idle__`` line per node;
  ``idle = "split"`` shares each node-hour's idle cost among the tenants in proportion to
  their shares of that node-hour (OpenCost's "share idle"); a node-hour nobody used stays
  ``__idle__`` in both modes.

**Hours billed**: every whole UTC hour inside the period (a period cut inside an hour leaves
that hour out, so ``--to`` defaulting to now leaves out the hour still running) from the
hour the node first reported to governor (``nodes.first_seen``): governor does not know
when a node is switched off, so a node taken out of service is taken out of
``[nodes]`` (node costs are not recorded like price plans: the current policy prices
every period).  A node without a cost in the policy, or one the database never saw, has no
lines.

**Rounding**: each node-hour is shared out in integer units of 10^-24 of the node-hour
(:data:`UNITS`; a share is its exact value rounded down to a unit, the units left over are
idle, or under ``split`` go with the idle to the largest share), so a node-hour's shares
and idle add up to the node-hour exactly, and a line's units add up exactly over its hours.
A line is one node, tenant (or ``__idle__``) and kind (share or idle) within a slice (the
period, or an hour, day or month for FOCUS); per node and slice the node's cost
(``cost_per_hour`` times its hours) is rounded once, half-even, to the currency's minor
unit, and shared out over the slice's lines by the largest remainder (each line's exact
amount, its units times the price, rounded down, then one minor unit more to the lines with
the largest remainders, ties in line order: tenants by name, share before idle, then
``__idle__``): the lines of a node and slice add up to its
rounded cost exactly, no cent unaccounted, and each line is within one minor unit of its
amount.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeVar

from sqlalchemy import func, select

from governor.billing.errors import BillingError
from governor.billing.quantities import HOUR_US
from governor.billing.report import GIB, minor_exponent
from governor.billing.sliced import Granularity, charge_slices
from governor.billing.totals import billed_groups
from governor.store.tables import groups as _GROUPS
from governor.store.tables import nodes as _NODES
from governor.store.tables import rollups_hourly as _ROLLUPS
from governor.store.tables import tenants as _TENANTS

if TYPE_CHECKING:
    from governor.store.db import Executor

#: the tenant of the idle lines nobody is charged (OpenCost's name for idle allocation)
IDLE: Final = "__idle__"
HOUR: Final = timedelta(hours=1)
#: the units a node-hour is shared out in: 10^-24 of a node-hour (integers: exact fractions
#: summed over a month's hours grow a denominator per hour, 50 s for 20 nodes)
UNITS: Final = 10**24
Kind = Literal["share", "idle"]
_K = TypeVar("_K")


class NodeCostLike(Protocol):
    @property
    def cost_per_hour(self) -> Decimal: ...
    @property
    def currency(self) -> str: ...
    @property
    def cpus(self) -> Decimal: ...
    @property
    def memory(self) -> int: ...
    @property
    def node_class(self) -> str | None: ...


class NodeCostsLike(Protocol):
    """What :mod:`governor.policy.model`'s ``NodeCosts`` holds, as billing reads it."""

    @property
    def nodes(self) -> Mapping[str, NodeCostLike]: ...
    @property
    def idle(self) -> str: ...
    @property
    def cpu_core_hour_weight(self) -> Decimal: ...
    @property
    def memory_gib_hour_weight(self) -> Decimal: ...


class NoNodeCosts(BillingError):
    """Node costs were asked for but the policy declares none (exit 1)."""

    exit_code = 1


@dataclasses.dataclass(frozen=True, slots=True)
class HourShares:
    """One node-hour shared out in :data:`UNITS` (they add up to :data:`UNITS`)."""

    #: tenant -> its share by usage
    shares: dict[str, int]
    #: tenant -> its part of the idle capacity (``idle = "split"``)
    idle_split: dict[str, int]
    #: the idle capacity nobody is charged (``__idle__``)
    unassigned: int
    #: the tenants' summed use of the declared capacity when above 1 (then scaled to 1)
    cpu_over: Fraction | None = None
    memory_over: Fraction | None = None


def cpu_part(cost: NodeCostLike, cpu_weight: Decimal, ram_weight: Decimal) -> Fraction:
    """The CPU part of a node's cost, as a fraction of it (OpenCost's CPU:RAM split)."""
    cpu = Fraction(cost.cpus) * Fraction(cpu_weight)
    ram = Fraction(cost.memory, GIB) * Fraction(ram_weight)
    return cpu / (cpu + ram) if cpu + ram else Fraction(0)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeShape:
    """A node's constants, in integers: the :data:`UNITS` of a node-hour that are its CPU
    part (``cpu_pool``, :func:`cpu_part` rounded to a unit) and its RAM part, its CPU
    capacity in microseconds times ``cpu_den`` (the denominator of a fractional ``cpus``)
    and its memory capacity in byte-seconds."""

    cpu_pool: int
    mem_pool: int
    cpu_cap: int
    cpu_den: int
    mem_cap: int


def node_shape(cost: NodeCostLike, cpu_weight: Decimal, ram_weight: Decimal) -> NodeShape:
    pool = round(cpu_part(cost, cpu_weight, ram_weight) * UNITS)
    cn, cd = cost.cpus.as_integer_ratio()
    return NodeShape(cpu_pool=pool, mem_pool=UNITS - pool, cpu_cap=cn * HOUR_US,
                     cpu_den=cd, mem_cap=cost.memory * 3600)


def allocate_hour(shape: NodeShape, usage: Mapping[str, tuple[int, int]], *,
                  idle: str) -> HourShares:
    """Share one node-hour among the tenants by their ``(cpu_usec, memory_byte_seconds)``
    in it (rules in the module's docstring), in integer :data:`UNITS`: a share is its
    exact value rounded down to a unit (the units left over are idle); under ``split``
    the idle units are shared likewise and the few left over go to the largest share
    (ties: the first tenant by name)."""
    cpu_sum = sum(cpu for cpu, _m in usage.values()) * shape.cpu_den
    mem_sum = sum(mem for _c, mem in usage.values())
    # above the capacity, each share is of what was used: scaled to the part's cost
    cc, mc = max(shape.cpu_cap, cpu_sum), max(shape.mem_cap, mem_sum)
    shares = {}
    for t in sorted(usage):
        cpu, mem = usage[t]
        share = shape.cpu_pool * cpu * shape.cpu_den // cc + shape.mem_pool * mem // mc
        if share:
            shares[t] = share
    used = sum(shares.values())
    rest = UNITS - used
    split: dict[str, int] = {}
    if idle == "split" and used and rest:
        split = {t: rest * v // used for t, v in shares.items()}
        top = max(shares, key=lambda t: shares[t])
        split[top] += rest - sum(split.values())
        rest = 0
    return HourShares(shares=shares, idle_split=split, unassigned=rest,
                      cpu_over=(Fraction(cpu_sum, shape.cpu_cap) if cpu_sum > shape.cpu_cap
                                else None),
                      memory_over=(Fraction(mem_sum, shape.mem_cap)
                                   if mem_sum > shape.mem_cap else None))


def largest_remainder(numerators: Mapping[_K, int], denominator: int,
                      currency: str) -> dict[_K, Decimal]:
    """The amounts ``numerators[k] / denominator`` (in the currency's major unit, iteration
    order) rounded to its minor unit so that they add up to their exact sum rounded
    half-even: each rounded down, then one minor unit more to the amounts with the largest
    remainders (ties: the earlier)."""
    exp = minor_exponent(currency)
    scale = 10**exp
    floors: dict[_K, int] = {}
    rems: dict[_K, int] = {}
    for k, n in numerators.items():
        floors[k], rems[k] = divmod(n * scale, denominator)
    target, rem = divmod(sum(numerators.values()) * scale, denominator)
    if rem * 2 > denominator or (rem * 2 == denominator and target % 2 == 1):
        target += 1
    order = sorted(enumerate(numerators), key=lambda ik: (-rems[ik[1]], ik[0]))
    for _i, k in order[:target - sum(floors.values())]:
        floors[k] += 1
    return {k: Decimal(v).scaleb(-exp) for k, v in floors.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class NodeCostLine:
    """A tenant's share (``kind`` share) or part of the idle capacity (``kind`` idle; tenant
    :data:`IDLE` when nobody is charged) of one node's cost within one slice."""

    node: str
    node_class: str | None
    tenant: str
    kind: Kind
    charge_start: datetime
    charge_end: datetime
    #: the line's part of the node's hours (amount / cost_per_hour), 9 decimals
    node_hours: Decimal
    #: the usage it was shared by (0 on idle lines), 9 decimals
    cpu_core_hours: Decimal
    memory_gib_hours: Decimal
    cost_per_hour: Decimal
    amount: Decimal
    currency: str


@dataclasses.dataclass(frozen=True, slots=True)
class NodeCostReport:
    start: datetime
    end: datetime
    by: str | None
    idle: str
    lines: tuple[NodeCostLine, ...]
    #: currency -> the sum of the lines
    totals: Mapping[str, Decimal]
    warnings: tuple[str, ...]


def billed_hours(start: datetime, end: datetime, first_seen: datetime,
                 now: datetime) -> list[datetime]:
    """The whole UTC hours of ``[start, min(end, now))`` from ``first_seen``'s hour on."""
    def floor(t: datetime) -> datetime:
        return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)

    h = max(floor(start) + (HOUR if floor(start) < start else timedelta(0)),
            floor(first_seen))
    last = min(end, now)
    out = []
    while h + HOUR <= last:
        out.append(h)
        h += HOUR
    return out


def _usage(session: Executor, node_ids: Sequence[int], a: datetime, b: datetime
           ) -> dict[tuple[int, datetime], dict[str, tuple[int, int]]]:
    """(node id, hour) -> tenant -> (CPU usec, memory byte-seconds) from the rollups."""
    out: dict[tuple[int, datetime], dict[str, tuple[int, int]]] = defaultdict(dict)
    if not node_ids:
        return out
    on_nodes = select(_GROUPS.c.id).where(_GROUPS.c.node_id.in_(node_ids), billed_groups())
    rows = session.execute(
        select(_ROLLUPS.c.node_id, _ROLLUPS.c.hour, _TENANTS.c.name,
               func.sum(_ROLLUPS.c.cpu_usec), func.sum(_ROLLUPS.c.memory_byte_seconds))
        .join(_GROUPS, _GROUPS.c.id == _ROLLUPS.c.group_id)
        .join(_TENANTS, _TENANTS.c.id == _GROUPS.c.tenant_id)
        .where(_ROLLUPS.c.group_id.in_(on_nodes), _ROLLUPS.c.node_id.in_(node_ids),
               _ROLLUPS.c.hour >= a, _ROLLUPS.c.hour < b)
        .group_by(_ROLLUPS.c.node_id, _ROLLUPS.c.hour, _TENANTS.c.name))
    for node_id, hour, tenant, cpu, mem in rows:
        out[(node_id, hour.astimezone(UTC))][tenant] = (int(cpu or 0), int(mem or 0))
    return out


def _over(node: str, what: str, capacity: str, hours: list[tuple[datetime, Fraction]]) -> str:
    worst_at, worst = max(hours, key=lambda hw: hw[1])
    return (f"node {node}: {what} use above its declared capacity ({capacity}) in "
            f"{len(hours)} hour(s), up to {float(worst) * 100:.0f}% at "
            f"{worst_at.isoformat().replace('+00:00', 'Z')}: the tenants' {what} shares "
            f"are scaled down to the node's {what} cost; check the {what.lower()} "
            f"capacity of nodes.\"{node}\" (or of its class)")


def require_node_costs(costs: NodeCostsLike) -> None:
    """:class:`NoNodeCosts` when the policy gives no node a cost."""
    if not costs.nodes:
        raise NoNodeCosts("no node costs in the policy: declare [node_classes.<name>] with "
                          "cost_per_hour, currency, cpus and memory and assign nodes to it "
                          "([nodes.\"<node name>\"] class = \"<name>\"), see docs/policy.md")


def node_costs(*, session: Executor, costs: NodeCostsLike, start: datetime, end: datetime,
               by: Granularity | None = None, tenant: str | None = None,
               now: datetime | None = None) -> NodeCostReport:
    """The node costs of ``[start, end)`` shared out (rules in the module's docstring), one
    line per node, tenant and kind in the period (``by`` None) or per UTC hour, day or
    month; ``tenant``: only its lines (amounts as in the whole report, no idle lines)."""
    require_node_costs(costs)
    slices = charge_slices(start, end, by) if by is not None else [(start, end)]
    now = now or datetime.now(UTC)
    known = {name: (nid, seen) for nid, name, seen in session.execute(
        select(_NODES.c.id, _NODES.c.name, _NODES.c.first_seen)) if name in costs.nodes}
    hours = {name: billed_hours(start, end, seen, now) for name, (_n, seen) in known.items()}
    first = min((h[0] for h in hours.values() if h), default=None)
    usage = {} if first is None else _usage(
        session, sorted(nid for nid, _s in known.values()), first, min(end, now))
    c_w, r_w = costs.cpu_core_hour_weight, costs.memory_gib_hour_weight
    # (slice, node) -> (tenant, kind) -> [node-hour units, cpu usec, memory byte-s]
    acc: dict[tuple[int, str], dict[tuple[str, Kind], list[int]]] = {}
    span: dict[tuple[int, str], tuple[datetime, datetime]] = {}
    over: dict[tuple[str, str], list[tuple[datetime, Fraction]]] = defaultdict(list)
    for name in sorted(known):
        cost = costs.nodes[name]
        nid = known[name][0]
        shape = node_shape(cost, c_w, r_w)
        s = 0
        for h in hours[name]:
            while slices[s][1] <= h:
                s += 1
            key = (s, name)
            got = usage.get((nid, h), {})
            hs = allocate_hour(shape, got, idle=costs.idle)
            lines = acc.setdefault(key, {})
            a, b = span.get(key, (h, h + HOUR))
            span[key] = (min(a, h), max(b, h + HOUR))
            for t, units in hs.shares.items():
                line = lines.setdefault((t, "share"), [0, 0, 0])
                line[0] += units
                line[1] += got[t][0]
                line[2] += got[t][1]
            for t, units in hs.idle_split.items():
                lines.setdefault((t, "idle"), [0, 0, 0])[0] += units
            if hs.unassigned:
                lines.setdefault((IDLE, "idle"), [0, 0, 0])[0] += hs.unassigned
            if hs.cpu_over is not None:
                over[(name, "CPU")].append((h, hs.cpu_over))
            if hs.memory_over is not None:
                over[(name, "memory")].append((h, hs.memory_over))
    out: list[NodeCostLine] = []
    totals: dict[str, Decimal] = {}
    nine = Decimal("1e-9")
    for key in sorted(acc, key=lambda k: (k[0], k[1])):
        cost = costs.nodes[key[1]]
        lines = acc[key]
        order = sorted(lines, key=lambda tk: (tk[0] == IDLE, tk[0], tk[1] != "share"))
        pn, pd = cost.cost_per_hour.as_integer_ratio()
        amounts = largest_remainder({tk: lines[tk][0] * pn for tk in order}, UNITS * pd,
                                    cost.currency)
        for t, kind in order:
            if tenant is not None and t != tenant:
                continue
            frac, cpu, mem = lines[(t, kind)]
            out.append(NodeCostLine(
                node=key[1], node_class=cost.node_class, tenant=t, kind=kind,
                charge_start=span[key][0], charge_end=span[key][1],
                node_hours=_dec(frac, UNITS, nine), cpu_core_hours=_dec(cpu, HOUR_US, nine),
                memory_gib_hours=_dec(mem, GIB * 3600, nine),
                cost_per_hour=cost.cost_per_hour, amount=amounts[(t, kind)],
                currency=cost.currency))
            totals[cost.currency] = totals.get(cost.currency, Decimal(0)) + amounts[(t, kind)]
    warnings = []
    for (name, what), at in sorted(over.items()):
        cost = costs.nodes[name]
        capacity = (f"{cost.cpus.normalize():f} cpus" if what == "CPU"
                    else f"{cost.memory} bytes")
        warnings.append(_over(name, what, capacity, at))
    return NodeCostReport(start=start, end=end, by=by, idle=costs.idle, lines=tuple(out),
                          totals=totals, warnings=tuple(warnings))


def _dec(num: int, den: int, places: Decimal) -> Decimal:
    return (Decimal(num) / Decimal(den)).quantize(places)
