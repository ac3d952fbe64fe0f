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
* **Storage integral** (issue #19) in byte-seconds of ``storage_bytes``, the writable layers
  of the group's containers launched from images: the memory integral's rule exactly (the
  same trapezoid, rounding and ``dt``; 0 bytes at a known creation).  Its ends follow the
  memory rule too: an interval is counted only when **both** ends were measured.  A gauge
  that appears (``prev`` None, ``cur`` a number: measuring began, or a failed read came
  back) or disappears (``prev`` a number, ``cur`` None: a read failed, or measuring
  stopped) gives ``None`` for that interval: what the layers held before the first or after
  the last measurement is not known, and a failed read is not 0 bytes.  So an unmeasured
  stretch costs the intervals that touch it, never a byte-second that was not measured at
  both ends.  (A group measured empty, 0 bytes, is known: a container that starts in it is
  counted from its first interval, 0 to its first size.)
* **IO**: per-device byte and operation deltas; a device first seen in ``cur`` counts from 0
  (io.stat lists a device once the group has done IO on it); a device that went backwards is a
  reset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from operator import attrgetter
from typing import Any, Final, NamedTuple

from governor.accel import load
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
    #: length of the interval used for the memory and storage integrals, in microseconds
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
    #: the writable layers' integral in byte-seconds (the module's storage rule)
    storage_byte_seconds: int | None
    #: True when the counters were taken from zero at a known creation time
    from_creation: bool = False


def _trapezoid(a: int, b: int, dt_us: int) -> int:
    """``(a + b) / 2 * dt`` in byte-seconds, rounded half to even: integer arithmetic,
    exactly ``round(Fraction((a + b) * dt_us, 2 * _US))``."""
    q, r = divmod((a + b) * dt_us, 2 * _US)   # r / (2 * _US) is the fraction
    if r > _US or (r == _US and q % 2):
        q += 1
    return q


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


#: the quantities of an interval, in this order (the hourly rollups carry the same)
QUANTITIES: Final = (
    "cpu_usec",
    "cpu_user_usec",
    "cpu_system_usec",
    "cpu_throttled_usec",
    "memory_byte_seconds",
    "io_rbytes",
    "io_wbytes",
    "io_rios",
    "io_wios",
    "io_dbytes",
    "oom_events",
    "oom_kills",
    "storage_byte_seconds",
)

#: the counters behind QUANTITIES' cpu_* and oom_* entries
_CPU = attrgetter("cpu_usage_usec", "cpu_user_usec", "cpu_system_usec", "cpu_throttled_usec")
_OOM = attrgetter("memory_events_oom", "memory_events_oom_kill")
_COUNTERS = attrgetter(*COUNTER_FIELDS)


class Interval(NamedTuple):
    """One interval's usage, flat: what the meter writes (a row and rollup shares)."""

    start: datetime
    end: datetime
    #: length used for the memory and storage integrals, in microseconds
    duration_us: int
    from_creation: bool
    #: in :data:`QUANTITIES` order; ``None``: unknown (a counter missing)
    quantities: tuple[int | None, ...]


def _from_creation(cur: GroupSample, dt_us: int) -> tuple[int | None, ...] | None:
    """The quantities of a new incarnation's first interval: its counters from zero (None
    when an IO counter is negative: not a counter)."""
    rb = wb = ri = wi = db = 0
    for now in cur.io.values():
        if any(now[f] < 0 for f in IO_FIELDS):
            return None
        rb += now["rbytes"]
        wb += now["wbytes"]
        ri += now["rios"]
        wi += now["wios"]
        db += now["dbytes"]
    cpu = [None if n is None else int(n) for n in _CPU(cur)]
    oom = [None if n is None else int(n) for n in _OOM(cur)]
    mc, sc = cur.memory_current, cur.storage_bytes
    mem = None if mc is None else _trapezoid(0, mc, dt_us)
    sto = None if sc is None else _trapezoid(0, sc, dt_us)
    return (cpu[0], cpu[1], cpu[2], cpu[3], mem, rb, wb, ri, wi, db, oom[0], oom[1], sto)


def interval_between(prev: GroupSample | None, cur: GroupSample) -> Interval | None:
    """The usage between ``prev`` and ``cur`` as an :class:`Interval`, or ``None`` when
    it cannot be known: the rules of :func:`usage_between`, which builds on it.

    Two samples of one incarnation (nearly every call) are metered by the C accelerator
    when it is built (governor/metering/_fastmeter.c); it hands every other case back to
    :func:`interval_between_py`, the rules' one statement, which gives the same result for
    every input (tests/unit/test_fastmeter.py)."""
    if _FAST is not None:
        iv = _FAST(prev, cur)
        if iv is not NotImplemented:
            return iv  # type: ignore[no-any-return]
    return interval_between_py(prev, cur)


def interval_between_py(prev: GroupSample | None, cur: GroupSample) -> Interval | None:
    """:func:`interval_between` in Python: the twin of the C accelerator."""
    if prev is not None and (prev.node, prev.tenant, prev.group) != (
            cur.node, cur.tenant, cur.group):
        raise ValueError(f"samples of different groups: {prev.node}:{prev.path} "
                         f"and {cur.node}:{cur.path}")
    if prev is None or prev.cgroup_id != cur.cgroup_id:
        created = cur.created
        if created is None or created > cur.wall:
            return None
        if prev is not None and created < prev.wall:
            return None
        dt_us = _wall_us(created, cur.wall)
        q = _from_creation(cur, dt_us)
        return None if q is None else Interval(created, cur.wall, dt_us, True, q)
    if cur.wall <= prev.wall:
        return None
    pc: tuple[int | None, ...] = _COUNTERS(prev)
    cc: tuple[int | None, ...] = _COUNTERS(cur)
    deltas: list[int | None] = []
    for before, now in zip(pc, cc, strict=True):
        if before is None or now is None:
            deltas.append(None)
        elif now < before:
            return None  # a reset
        else:
            deltas.append(now - before)
    dt_us = round((cur.monotonic - prev.monotonic) * _US)
    if dt_us <= 0:
        dt_us = _wall_us(prev.wall, cur.wall)
    io = _io_totals(prev, cur)
    if io is None:
        return None
    mp, mc = prev.memory_current, cur.memory_current
    mem = None if mp is None or mc is None else _trapezoid(mp, mc, dt_us)
    sp, sc = prev.storage_bytes, cur.storage_bytes
    sto = None if sp is None or sc is None else _trapezoid(sp, sc, dt_us)
    return Interval(prev.wall, cur.wall, dt_us, False, (
        deltas[_I_CPU], deltas[_I_USER], deltas[_I_SYSTEM], deltas[_I_THROTTLED], mem,
        *io, deltas[_I_OOM], deltas[_I_KILL], sto))


#: where QUANTITIES' counters sit in COUNTER_FIELDS
_I_CPU, _I_USER, _I_SYSTEM, _I_THROTTLED, _I_OOM, _I_KILL = (
    COUNTER_FIELDS.index(name) for name in (
        "cpu_usage_usec", "cpu_user_usec", "cpu_system_usec", "cpu_throttled_usec",
        "memory_events_oom", "memory_events_oom_kill"))


def _io_totals(prev: GroupSample, cur: GroupSample) -> tuple[int, int, int, int, int] | None:
    """Bytes and operations read, written, discarded since ``prev``, all devices; None
    when a device's counter went backwards (a reset)."""
    cio = cur.io
    if not cio:
        return (0, 0, 0, 0, 0)
    pio = prev.io
    rb = wb = ri = wi = db = 0
    for dev, now in cio.items():
        before = pio.get(dev)
        if before is None:
            d_rb, d_wb, d_ri, d_wi, d_db = (now["rbytes"], now["wbytes"], now["rios"],
                                            now["wios"], now["dbytes"])
        else:
            d_rb = now["rbytes"] - before["rbytes"]
            d_wb = now["wbytes"] - before["wbytes"]
            d_ri = now["rios"] - before["rios"]
            d_wi = now["wios"] - before["wios"]
            d_db = now["dbytes"] - before["dbytes"]
        if d_rb < 0 or d_wb < 0 or d_ri < 0 or d_wi < 0 or d_db < 0:
            return None
        rb += d_rb
        wb += d_wb
        ri += d_ri
        wi += d_wi
        db += d_db
    return (rb, wb, ri, wi, db)


def _accelerated() -> Callable[[GroupSample | None, GroupSample], Any] | None:
    """``governor.metering._fastmeter.interval``, configured; None when it is not built
    or ``GOVERNOR_PURE_PYTHON=1`` asks for the Python twin."""
    fast = load("governor.metering._fastmeter")
    if fast is None:
        return None
    built: int = fast.N_QUANTITIES
    if built != len(QUANTITIES):
        # a build older than the quantities (storage_byte_seconds came later) would write
        # intervals one value short: refuse it, as _fastread refuses another GroupSample
        raise ImportError(
            f"{fast.__file__} was built for {built} quantities, but "
            f"governor.metering.usage.QUANTITIES has {len(QUANTITIES)}: rebuild it "
            "(python setup.py build_ext --inplace, or pip install -e .), or set "
            "GOVERNOR_PURE_PYTHON=1")
    fast.configure(Interval)
    return fast.interval  # type: ignore[no-any-return]


_FAST: Final = _accelerated()


def usage_between(prev: GroupSample | None, cur: GroupSample) -> IntervalUsage | None:
    """The usage between ``prev`` and ``cur``, or ``None`` when it cannot be known.

    See the module documentation for the rules on resets, new incarnations and restarts.
    ``prev`` is ``None`` for the first sample ever seen of a path.  (The meter uses
    :func:`interval_between`, the same numbers without the per-device detail.)
    """
    iv = interval_between(prev, cur)
    if iv is None:
        return None
    io = _io_deltas(None if iv.from_creation else prev, cur)
    if io is None:  # cannot be: interval_between checked the same counters
        return None
    values = dict(zip(QUANTITIES, iv.quantities, strict=True))
    return IntervalUsage(node=cur.node, tenant=cur.tenant, group=cur.group,
                         cgroup_id=cur.cgroup_id, start=iv.start, end=iv.end,
                         duration_us=iv.duration_us, io=io, from_creation=iv.from_creation,
                         **values)  # type: ignore[arg-type]
