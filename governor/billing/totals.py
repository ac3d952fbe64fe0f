"""The integer quantities that reports and bills sum (:data:`FIELDS`, :class:`Totals`),
and the exact integer time share of an hour (:func:`share`): the bottom of the billing
read path (:mod:`.edges` and :mod:`.quantities` build on it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

from sqlalchemy import ColumnElement, exists, or_

from governor.controllers import registry
from governor.store.tables import groups as _GROUPS

HOUR = timedelta(hours=1)
#: a grouping key of sum_range: a mapped attribute or a column expression
KeyColumn = ColumnElement[Any]
HOUR_US = 3_600_000_000

#: the integer quantities summed by reports and bills, in rollup units: the covered time,
#: the first-wave controllers' priced quantities (governor/controllers/, a ``plan_key``) and
#: the writable layers' integral (not a cgroup controller's, issue #19); :class:`Totals`
#: has one attribute each (built by name: :func:`_totals`)
FIELDS: Final = ("covered_us",
                 *(q.name for c in registry.first_wave() for q in c.quantities
                   if q.plan_key is not None),
                 "storage_byte_seconds")


@dataclasses.dataclass(slots=True)
class Totals:
    covered_us: int = 0
    cpu_usec: int = 0
    memory_byte_seconds: int = 0
    io_rbytes: int = 0
    io_wbytes: int = 0
    oom_kills: int = 0
    storage_byte_seconds: int = 0

    def add(self, other: Totals) -> None:
        for f in FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))


if set(FIELDS) != {f.name for f in dataclasses.fields(Totals)}:
    raise ImportError("governor.billing.totals: Totals does not have the attributes "
                      f"of FIELDS {FIELDS}")


_T = TypeVar("_T", bound=Totals)


def _totals(cls: type[_T], values: Sequence[int]) -> _T:
    """A :class:`Totals` (or subclass) from values in :data:`FIELDS` order."""
    return cls(**dict(zip(FIELDS, values, strict=True)))


def hour_floor(dt: datetime) -> datetime:
    return dt.replace(minute=0, second=0, microsecond=0)


def hour_ceil(dt: datetime) -> datetime:
    f = hour_floor(dt)
    return f if f == dt else f + HOUR


def _us(d: timedelta) -> int:
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def share(total: int, hour: datetime, p: datetime, q: datetime) -> int:
    """The exact integer share of ``total`` (one hour's rollup) for ``[p, q)`` in that hour."""
    a = _us(max(p, hour) - hour)
    b = _us(min(q, hour + HOUR) - hour)
    return total * b // HOUR_US - total * a // HOUR_US


def billed_groups() -> ColumnElement[bool]:
    """The ``groups`` rows that bills, usage reports and node costs count: every group's,
    and a tenant's own cgroup's only on a node where the tenant has no group.

    A tenant's cgroup is sampled and metered like its groups (``governor status`` and the
    per-tenant metrics show it), but its counters hold its groups' usage too (cgroup v2
    counts a child's usage in every ancestor's ``cpu.stat``, ``io.stat`` and
    ``memory.current``), and once it has groups it holds no process of its own (cgroup v2's
    "no internal processes" rule for a cgroup that enables controllers to its children): so
    where a tenant has groups its own rows would count their usage twice.  Where it has none
    its cgroup is the leaf its processes run in, and it is billed as the tenant's own line.
    """
    child = _GROUPS.alias("billed_child")
    return or_(_GROUPS.c.name.is_not(None),
               ~exists().where(child.c.tenant_id == _GROUPS.c.tenant_id,
                               child.c.node_id == _GROUPS.c.node_id,
                               child.c.name.is_not(None)))
