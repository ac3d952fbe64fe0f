"""The generic controllers' quantities (governor.controllers, issue #17): metered from the
pair of samples' ``values`` beside the first-wave quantities of :mod:`~.usage`.

Each registered :class:`~governor.controllers.base.Quantity` with a ``method`` is metered
per interval from the sum of the sample values whose keys match its ``values`` pattern:

* ``integral`` (a gauge, e.g. ``hugetlb_byte_seconds``): the memory integral's rule exactly
  (:func:`governor.metering.usage._trapezoid`: the trapezoid of the two ends' sums over the
  interval's ``duration_us``, rounded half-even to a whole unit per interval; 0 at a known
  creation), and only where **both** ends were read with the same keys (a key appearing or
  disappearing: that interval is not known; missing is not zero);
* ``increase`` (a counter): the difference of the sums, per key; a key that went down is
  a reset and the interval is not known (never a negative number); from a known creation,
  the counters from zero.

The intervals are the first-wave meter's (:func:`~.usage.interval_between`: same start,
end, duration and birth rule), so an interval the meter skips is skipped here too.  Each
interval's quantities go to ``usage_values`` and, split on hour boundaries as
:func:`~.rollup.split_interval` splits the others (exact integer shares), into
``rollup_values``.  All integers: the sum of the hourly rows equals the sum of the
intervals to the unit.

:func:`meter_values` is the pairing (called by :func:`~.meter.pair_series` for its
series), :class:`PendingValues` what :class:`~.meter.Pending` holds between writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

from governor.controllers import registry
from governor.controllers.base import Quantity
from governor.metering.rollup import HOUR, hour_floor, hour_pieces, split_exact
from governor.metering.sample import GroupSample
from governor.metering.usage import _trapezoid, interval_between

K = TypeVar("K", bound=Hashable)

#: the quantities metered here: the registered ones with a method (hugetlb_byte_seconds)
QUANTITIES: Final[tuple[Quantity, ...]] = tuple(
    q for q in registry.quantities() if q.method is not None and q.values is not None)


@dataclasses.dataclass(slots=True)
class Values(Generic[K]):
    """The generic quantities of a meter step."""

    #: ``(key, start, end, {quantity: value})`` of each interval that metered one
    usages: list[tuple[K, datetime, datetime, dict[str, int]]] = dataclasses.field(
        default_factory=list)
    #: ``(key, hour) -> {quantity: value}`` to add into ``rollup_values``
    rollups: dict[tuple[K, datetime], dict[str, int]] = dataclasses.field(
        default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.usages)


def _matching(q: Quantity, values: Mapping[str, int]) -> dict[str, int]:
    pattern = q.values
    assert pattern is not None  # (QUANTITIES has a pattern)
    return {k: v for k, v in values.items() if pattern.fullmatch(k)}


def quantity_between(q: Quantity, prev: Mapping[str, int] | None, cur: Mapping[str, int],
                     dt_us: int) -> int | None:
    """One quantity over one interval (``prev`` None: from a known creation, all from 0);
    None when it cannot be known (module documentation)."""
    now = _matching(q, cur)
    if not now:
        return None
    before = dict.fromkeys(now, 0) if prev is None else _matching(q, prev)
    if before.keys() != now.keys():
        return None
    if q.method == "integral":
        return _trapezoid(sum(before.values()), sum(now.values()), dt_us)
    total = 0
    for k, v in now.items():
        d = v - before[k]
        if d < 0:
            return None  # a reset
        total += d
    return total


def split_rollups(rollups: dict[tuple[Any, datetime], dict[str, int]], key: Any,
                  start: datetime, end: datetime, quantities: Mapping[str, int]) -> None:
    """Add one interval's quantities into ``rollups``, split on hour boundaries by time
    share as :func:`~governor.metering.rollup.split_interval` splits the others."""
    hour = hour_floor(start)
    if start < end <= hour + HOUR:
        pieces = [(hour, quantities)]
    else:
        spans = hour_pieces(start, end)
        if not spans:
            return
        weights = [us for _, us in spans]
        shares = {name: split_exact(v, weights) for name, v in quantities.items()}
        pieces = [(h, {name: parts[i] for name, parts in shares.items()})
                  for i, (h, _) in enumerate(spans)]
    for h, q in pieces:
        acc = rollups.get((key, h))
        if acc is None:
            rollups[(key, h)] = dict(q)
        else:
            for name, v in q.items():
                acc[name] = acc.get(name, 0) + v


def meter_values(series: Mapping[K, Sequence[GroupSample]],
                 previous: Mapping[K, GroupSample | None], *,
                 with_rollups: bool = True) -> Values[K] | None:
    """The generic quantities of :func:`~governor.metering.meter.pair_series`' series (the
    same pairs); None when there is nothing to meter (no such quantity, no values)."""
    if not QUANTITIES:
        return None
    out: Values[K] = Values()
    for key, samples in series.items():
        prev = previous.get(key)
        for cur in samples:
            values = cur.values
            if values is not None and (prev is None or prev.values is not None
                                       or prev.cgroup_id != cur.cgroup_id):
                iv = interval_between(prev, cur)
                if iv is not None:
                    before = None if iv.from_creation else prev.values if prev else None
                    if iv.from_creation or before is not None:
                        got = {q.name: v for q in QUANTITIES if (v := quantity_between(
                            q, before, values, iv.duration_us)) is not None}
                        if got:
                            out.usages.append((key, iv.start, iv.end, got))
                            if with_rollups:
                                split_rollups(out.rollups, key, iv.start, iv.end, got)
            prev = cur
    return out if out else None


class PendingValues(Generic[K]):
    """What :class:`~governor.metering.meter.Pending` holds of the generic quantities: a
    key's contiguous intervals inside one hour merged (their sums), as Pending merges the
    others, and the rollups made from the merged intervals when written."""

    def __init__(self) -> None:
        #: each key's growing interval: [start, end, end of its hour (start when it
        #: crosses one: never merged), {quantity: sum}]
        self._span: dict[K, list[Any]] = {}
        self._done: list[tuple[K, list[Any]]] = []

    def add(self, step: Values[Any] | None, ids: Mapping[Any, K]) -> None:
        if not step:
            return
        span, done = self._span, self._done
        for k, start, end, q in step.usages:
            key = ids[k]
            sp = span.get(key)
            if sp is not None:
                if sp[1] == start and end <= sp[2]:
                    sp[1] = end
                    acc = sp[3]
                    for name, v in q.items():
                        acc[name] = acc.get(name, 0) + v
                    continue
                done.append((key, span.pop(key)))
            hour_end = hour_floor(start) + HOUR
            span[key] = [start, end, hour_end if end <= hour_end else start, dict(q)]

    def metered(self) -> Values[K] | None:
        if not self._span and not self._done:
            return None
        out: Values[K] = Values()
        for key, sp in [*self._done, *self._span.items()]:
            out.usages.append((key, sp[0], sp[1], sp[3]))
            split_rollups(out.rollups, key, sp[0], sp[1], sp[3])
        return out
