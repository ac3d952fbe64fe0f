"""Usage of one interval, derived from a pair of raw samples.

The rules (also in docs/billing.md):

* **Same incarnation** (same ``cgroup_id``): every counter's usage is ``cur - prev``.  If any
  counter present in both samples went *down*, the interval is a reset and the result is
  ``None`` -- never a negative number.  A counter missing from either sample gives ``None``
  for that quantity (missing is not zero).
* **New incarnation** (``cgroup_id`` differs, or there is no previous sample): the counters of
  ``cur`` started from zero when the new cgroup was created.  They are counted from zero
  *only when the creation time is known* (``cur.created``) *and is not before* ``prev.wall``
  (or there is no ``prev``): then nothing of the new incarnation can have been counted
  already, and the interval is ``[created, cur.wall]``.  Otherwise the result is ``None``: a
  cgroup found with an unknown birth may already have been billed under an earlier pairing.
* **Restart**: the store pairs the first sample taken after a restart with the last stored
  sample of the same incarnation, so usage across the downtime is counted exactly once.
* **Memory integral** in byte-seconds by the trapezoid rule,
  ``(memory_current(prev) + memory_current(cur)) / 2 * dt``, rounded half-even to a whole
  byte-second per interval (1 GiB-hour is 3.9e12 byte-seconds, so the rounding is far below
  any billed unit).  From creation the start value is 0 bytes.  ``dt`` is the monotonic-clock
  difference (immune to wall-clock steps) when positive, else the wall-clock difference.
* **IO**: per-device byte and operation deltas; a device first seen in ``cur`` counts from 0
  (io.stat lists a device once the group has done IO on it); a device that went backwards is a
  reset.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from fractions import Fraction

from governor.metering.sample import COUNTER_FIELDS, IO_FIELDS, GroupSample, IoCounters

_US = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IntervalUsage:
    """What one group used between two instants ``start`` and ``end`` (UTC wall times)."""

    node: str
    tenant: str
    group: str | None
    cgroup_id: int
    start: datetime
    end: datetime
    #: length of the interval used for the memory integral, in microseconds
    duration_us: int
    cpu_usec: int | None
    cpu_user_usec: int | None
    cpu_system_usec: int | None
    cpu_throttled_usec: int | None
    memory_byte_seconds: int | None
    io_rbytes: int
    io_wbytes: int
    io_rios: int
    io_wios: int
    io_dbytes: int
    #: per device "MAJ:MIN" -> deltas
    io: dict[str, IoCounters]
    oom_events: int | None
    oom_kills: int | None
    #: True when the counters were taken from zero at a known creation time
    from_creation: bool = False


def _delta(prev: int | None, cur: int | None) -> int | None:
    if prev is None or cur is None:
        return None
    return cur - prev


def _trapezoid(a: int, b: int, dt_us: int) -> int:
    return round(Fraction((a + b) * dt_us, 2 * _US))


def _wall_us(start: datetime, end: datetime) -> int:
    delta = end - start
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _io_deltas(prev: GroupSample | None, cur: GroupSample) -> dict[str, IoCounters] | None:
    out: dict[str, IoCounters] = {}
    for dev, now in cur.io.items():
        before = prev.io.get(dev) if prev is not None else None
        d: IoCounters = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0, "dbytes": 0}
        for f in IO_FIELDS:
            value = now[f] - (before[f] if before is not None else 0)
            if value < 0:
                return None
            d[f] = value
        out[dev] = d
    return out


def _build(
    prev: GroupSample | None, cur: GroupSample, start: datetime, dt_us: int
) -> IntervalUsage | None:
    io = _io_deltas(prev, cur)
    if io is None:
        return None

    def counter(name: str) -> int | None:
        now = getattr(cur, name)
        if prev is None:
            return None if now is None else int(now)
        return _delta(getattr(prev, name), now)

    mem_prev = 0 if prev is None else prev.memory_current
    mem = None
    if mem_prev is not None and cur.memory_current is not None:
        mem = _trapezoid(mem_prev, cur.memory_current, dt_us)
    return IntervalUsage(
        node=cur.node,
        tenant=cur.tenant,
        group=cur.group,
        cgroup_id=cur.cgroup_id,
        start=start,
        end=cur.wall,
        duration_us=dt_us,
        cpu_usec=counter("cpu_usage_usec"),
        cpu_user_usec=counter("cpu_user_usec"),
        cpu_system_usec=counter("cpu_system_usec"),
        cpu_throttled_usec=counter("cpu_throttled_usec"),
        memory_byte_seconds=mem,
        io_rbytes=sum(d["rbytes"] for d in io.values()),
        io_wbytes=sum(d["wbytes"] for d in io.values()),
        io_rios=sum(d["rios"] for d in io.values()),
        io_wios=sum(d["wios"] for d in io.values()),
        io_dbytes=sum(d["dbytes"] for d in io.values()),
        io=io,
        oom_events=counter("memory_events_oom"),
        oom_kills=counter("memory_events_oom_kill"),
        from_creation=prev is None,
    )


def usage_between(prev: GroupSample | None, cur: GroupSample) -> IntervalUsage | None:
    """The usage between ``prev`` and ``cur``, or ``None`` when it cannot be known.

    See the module documentation for the rules on resets, new incarnations and restarts.
    ``prev`` is ``None`` for the first sample ever seen of a path.
    """
    if prev is not None and (prev.node, prev.path) != (cur.node, cur.path):
        raise ValueError(f"samples of different groups: {prev.node}:{prev.path} "
                         f"and {cur.node}:{cur.path}")
    if prev is None or prev.cgroup_id != cur.cgroup_id:
        created = cur.created
        if created is None or created > cur.wall:
            return None
        if prev is not None and created < prev.wall:
            return None
        return _build(None, cur, created, _wall_us(created, cur.wall))
    if cur.wall <= prev.wall:
        return None
    for name in COUNTER_FIELDS:
        d = _delta(getattr(prev, name), getattr(cur, name))
        if d is not None and d < 0:
            return None
    dt_us = round((cur.monotonic - prev.monotonic) * _US)
    if dt_us <= 0:
        dt_us = _wall_us(prev.wall, cur.wall)
    return _build(prev, cur, prev.wall, dt_us)
