"""The meter step: samples paired into interval usage and hourly rollups.  No I/O here.

:func:`pair_series` is the one pairing rule, used both by the daemon's in-memory
:class:`Meter` (each pass pairs what it just read with the previous pass's samples, held in
memory: nothing is read back from the database) and by :func:`governor.metering.catchup.meter`
(the catch-up over stored samples after a restart, a crash between a pass's two commits, or
a drained spool).  Both give the same rows for the same samples: one function, one answer.

An *anchor* is an incarnation's last metered sample: the next sample pairs with it.  The
daemon holds every live incarnation's anchor in memory; one it does not hold (the first
pass after a start, a group seen again after a long absence, a new incarnation) is
resolved from the database once, by :func:`governor.metering.catchup.load_anchors`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

from governor.accel import load
from governor.metering.generic import PendingValues, Values, meter_values
from governor.metering.rollup import HOUR, hour_floor, split_interval
from governor.metering.sample import GroupSample
from governor.metering.usage import Interval, interval_between

K = TypeVar("K", bound=Hashable)

#: an incarnation in memory: (tenant, group, cgroup_id)
IncKey = tuple[str, str | None, int]


def inc_key(s: GroupSample) -> IncKey:
    return (s.tenant, s.group, s.cgroup_id)


@dataclasses.dataclass(slots=True)
class Metered(Generic[K]):
    """What one meter step produced, keyed by ``K`` (a group id in the store, an
    :data:`IncKey` in memory)."""

    #: samples paired (the anchors' own samples not counted)
    samples: int
    #: ``(key, interval)`` of each interval, in the order of the samples
    usages: list[tuple[K, Interval]]
    #: ``(key, hour) -> [covered_us, intervals, *quantities]`` (the quantities in
    #: :data:`~governor.metering.rollup.ROLLUP_QUANTITIES` order, unknown ones as 0) to add
    #: into the hourly rollups
    rollups: dict[tuple[K, datetime], list[int]]
    #: the new anchor of each key that had samples
    anchors: dict[K, GroupSample]
    #: intervals that could not be known (a reset, an unknown birth)
    skipped: int
    #: the generic controllers' quantities (governor.metering.generic), None: none
    values: Values[K] | None = None


def _rollup_add_py(rollups: dict[Any, list[int]], rkey: Any, covered: int,
                   quantities: tuple[int | None, ...]) -> None:
    """Add one piece into ``rollups[rkey]``: the twin of ``_fastmeter.rollup_add``."""
    acc = rollups.get(rkey)
    if acc is None:
        rollups[rkey] = [covered, 1, *[q or 0 for q in quantities]]
        return
    acc[0] += covered
    acc[1] += 1
    for i, q in enumerate(quantities, 2):
        if q:
            acc[i] += q


def _rollup_add_fast() -> Callable[[dict[Any, list[int]], Any, int,
                                    tuple[int | None, ...]], None] | None:
    fast = load("governor.metering._fastmeter")
    return None if fast is None else fast.rollup_add


#: ``rollup_add(rollups, (key, hour), covered_us, quantities)``: C when built, else Python
rollup_add: Final = _rollup_add_fast() or _rollup_add_py


def add_interval(rollups: dict[tuple[K, datetime], list[int]], key: K,
                 iv: Interval) -> None:
    """Add ``iv``, split on hour boundaries, into ``rollups``."""
    for hour, covered, quantities in split_interval(iv):
        rollup_add(rollups, (key, hour), covered, quantities)


def pair_series(series: Mapping[K, Sequence[GroupSample]],
                previous: Mapping[K, GroupSample | None], *,
                with_rollups: bool = True) -> Metered[K]:
    """Pair each key's samples (oldest first) with the one before: the first with
    ``previous[key]`` (``None``: the first sample of a path, counted from its birth when
    known).  See :func:`~governor.metering.usage.usage_between` for the rules.  Without
    ``with_rollups`` the rollups are left empty (:class:`Pending` makes them when it
    writes)."""
    usages: list[tuple[K, Interval]] = []
    rollups: dict[tuple[K, datetime], list[int]] = {}
    anchors: dict[K, GroupSample] = {}
    skipped = n = 0
    add = rollup_add
    # the hour of the last interval that lay within one hour: nearly every interval of a
    # pass lies in the same hour, and is added without splitting (what split_interval
    # gives for it: one piece of its whole length)
    lo: datetime | None = None
    hi: datetime | None = None
    for key, samples in series.items():
        if not samples:
            continue
        prev = previous.get(key)
        for cur in samples:
            iv = interval_between(prev, cur)
            if iv is None:
                skipped += 1
            else:
                usages.append((key, iv))
                if not with_rollups:
                    prev = cur
                    continue
                start, end = iv.start, iv.end
                if lo is not None and hi is not None and lo <= start < end <= hi:
                    add(rollups, (key, lo), iv.duration_us, iv.quantities)
                else:
                    add_interval(rollups, key, iv)
                    hour = hour_floor(start)
                    if start < end <= hour + HOUR:
                        lo, hi = hour, hour + HOUR
            prev = cur
        n += len(samples)
        anchors[key] = samples[-1]
    return Metered(n, usages, rollups, anchors, skipped,
                   meter_values(series, previous, with_rollups=with_rollups))


@dataclasses.dataclass(frozen=True, slots=True)
class Anchor:
    """Where an incarnation's metering stands: ``sample`` pairs with its next sample
    (``None``: none to pair with; the next is counted from its birth when known), and
    samples at or before ``floor`` are metered already (``None``: nothing metered yet)."""

    sample: GroupSample | None
    floor: datetime | None


def _step_into_fast() -> Callable[..., tuple[list[GroupSample], int, int]] | None:
    # (a build made for other quantities is refused when usage.py is imported, above)
    fast = load("governor.metering._fastmeter")
    return None if fast is None else fast.step_into


#: ``_fastmeter.step_into`` (C), or None: Meter.step_into is then step + Pending.add
_STEP_INTO: Final = _step_into_fast()

#: an incarnation not sampled for this many passes (at most 59 more) leaves memory (a
#: removed group); if it comes back its anchor is resolved from the database again
KEEP_PASSES = 360


class Meter:
    """The daemon's in-memory meter: every live incarnation's anchor.

    A pass calls :meth:`unknown` (incarnations to resolve from the database), then
    :meth:`step` (pure: nothing changes here), hands the step to :class:`Pending` (the
    daemon writes what it holds every few passes, in one transaction) and calls
    :meth:`advance`.  The daemon does the first three in one call, :meth:`step_into`
    (it resolves only what it finds unknown), and then :meth:`advance_to`.  When a write
    fails, the daemon drops what :class:`Pending` holds and calls :meth:`forget`, which
    drops everything here: the store then meters from its rows (from the anchors it holds,
    which only move with a write) and the anchors are resolved again.

    An anchor in memory is always its incarnation's last metered sample, which is also its
    floor (``Anchor(s, s.wall)``): the sample itself is kept, so advancing a pass is two
    dictionary updates rather than a thousand objects made.
    """

    def __init__(self, *, keep_passes: int = KEEP_PASSES) -> None:
        self.keep_passes = keep_passes
        #: each live incarnation's last metered sample
        self._last: dict[IncKey, GroupSample] = {}
        #: at the last look for old anchors: each one's sample time then, and at how many
        #: looks in a row it was the same (no per-pass bookkeeping: issue #16).  The time,
        #: not the sample: a mark must not keep a pass's samples alive until the next look
        self._marks: dict[IncKey, tuple[datetime, int]] = {}
        self._passes = 0

    def __len__(self) -> int:
        return len(self._last)

    def forget(self) -> None:
        self._last.clear()
        self._marks.clear()

    def unknown(self, samples: Sequence[GroupSample]) -> list[GroupSample]:
        """The samples whose incarnation has no anchor in memory."""
        last = self._last
        return [s for s in samples if (s.tenant, s.group, s.cgroup_id) not in last]

    def step(self, samples: Sequence[GroupSample],
             resolved: Mapping[IncKey, Anchor] | None = None, *,
             with_rollups: bool = True,
             after: Mapping[IncKey, GroupSample] | None = None) -> Metered[IncKey]:
        """Meter ``samples`` (one pass: one sample per incarnation, or several in time
        order) against the anchors in memory and ``resolved`` (those :meth:`unknown`
        named).  Samples at or before an anchor's floor are ignored, as the store does
        with samples that arrive late.  ``after``: anchors newer than the ones in memory
        (what :meth:`step_into` metered of the same pass), taken first."""
        last = self._last
        series: dict[IncKey, list[GroupSample]] = {}
        previous: dict[IncKey, GroupSample | None] = {}
        for s in samples:
            key = (s.tenant, s.group, s.cgroup_id)
            prev = after.get(key) if after else None
            if prev is None:
                prev = last.get(key)
            if prev is not None:
                if s.wall <= prev.wall:
                    continue
            else:
                a = resolved.get(key) if resolved is not None else None
                if a is None:
                    raise ValueError(f"no anchor for {s.path} (cgroup id {s.cgroup_id}): "
                                     "resolve what Meter.unknown names first")
                if a.floor is not None and s.wall <= a.floor:
                    continue
                prev = a.sample
            got = series.get(key)
            if got is None:
                series[key] = [s]
                previous[key] = prev
            elif s.wall > got[-1].wall:
                got.append(s)
        return pair_series(series, previous, with_rollups=with_rollups)

    def step_into(self, samples: Sequence[GroupSample],
                  resolve: Callable[[list[GroupSample]], Mapping[IncKey, Anchor] | None],
                  pending: Pending[int],
                  ids: Mapping[IncKey, int]) -> dict[IncKey, GroupSample]:
        """:meth:`unknown`, ``resolve`` of those (the daemon's: their anchors from the
        database), :meth:`step` (without rollups) and ``pending.add`` of it with ``ids``,
        in one loop over the pass: the daemon's way (issue #16).  ``resolve`` is called
        only when some sample's incarnation has no anchor in memory.  Returns the step's
        anchors, for :meth:`advance_to` once what ``pending`` holds is safe.

        The C accelerator (``_fastmeter.step_into``) meters every sample whose incarnation
        has an anchor in memory straight into ``pending``'s growing intervals: no
        Interval, no step's list, no second loop.  What it leaves (no anchor in memory,
        a second sample of a key, any case :func:`~governor.metering.usage.interval_between`
        hands to its Python twin) goes through :meth:`step` and :meth:`Pending.add` after
        it, paired with what it metered.  The generic controllers' values are metered by
        :func:`~governor.metering.generic.meter_values` over the same pairs.  Without the
        accelerator this is the two calls.  The rows ``pending`` writes are the same
        either way (tests/unit/test_meter_step_into.py)."""
        fast = _STEP_INTO
        if fast is None:
            unknown = self.unknown(samples)
            step = self.step(samples, resolve(unknown) if unknown else None,
                             with_rollups=False)
            pending.add(step, ids)
            return step.anchors
        anchors: dict[IncKey, GroupSample] = {}
        vseries: dict[IncKey, list[GroupSample]] = {}
        vprev: dict[IncKey, GroupSample | None] = {}
        leftover, n, skipped = fast(
            samples if isinstance(samples, list) else list(samples), self._last,
            ids if isinstance(ids, dict) else dict(ids),
            pending._span, pending._acc, pending._done, anchors, pending._anchors,
            vseries, vprev, hour_floor, HOUR)
        values = meter_values(vseries, vprev, with_rollups=False) if vseries else None
        pending.add(Metered(n, [], {}, {}, skipped, values), ids)
        if leftover:
            unknown = [s for s in self.unknown(leftover)
                       if (s.tenant, s.group, s.cgroup_id) not in anchors]
            rest = self.step(leftover, resolve(unknown) if unknown else None,
                             with_rollups=False, after=anchors)
            pending.add(rest, ids, another_pass=False)
            anchors.update(rest.anchors)
        return anchors

    def advance(self, metered: Metered[IncKey]) -> None:
        """The step's rows are committed: its samples are the anchors now."""
        self.advance_to(metered.anchors)

    def advance_to(self, anchors: Mapping[IncKey, GroupSample]) -> None:
        """:meth:`advance` with the step's anchors (what :meth:`step_into` returns)."""
        self._passes += 1
        last = self._last
        last.update(anchors)
        every = max(1, min(60, self.keep_passes))
        if self._passes % every:
            return
        # every `every` passes: an anchor whose time is the same at enough looks in a row
        # was not metered for keep_passes passes (at most `every` - 1 more); a new anchor
        # is always later than the one it replaces (step drops the others)
        looks = -(-self.keep_passes // every)
        marks = self._marks
        kept: dict[IncKey, tuple[datetime, int]] = {}
        old = []
        for k, s in last.items():
            m = marks.get(k)
            wall = s.wall
            if m is None or m[0] != wall:
                kept[k] = (wall, 0)
            elif m[1] + 1 >= looks:
                old.append(k)
            else:
                kept[k] = (wall, m[1] + 1)
        for k in old:
            del last[k]
        self._marks = kept


class Pending(Generic[K]):
    """Meter steps computed but not written yet: the daemon writes the derived rows every
    few passes (issue #16), the raw samples every pass.

    Why that loses nothing: the raw samples of every pass are committed before their step
    is added here, and the stored anchors (``groups.metered_until``) move only when the
    rows this holds are written, in the same transaction.  A crash, a failed write or a
    database outage drops what this holds, and the store's catch-up meter (from the stored
    anchors over the stored samples: :func:`governor.metering.catchup.meter`) makes the same
    usage again.

    What it saves: a group costs one rollup upsert, one anchor update and one interval row
    per write instead of per pass.  A key's consecutive intervals are merged while they
    are contiguous and inside one hour: the merged interval's quantities are the sums of
    its pieces' (counter deltas and integrals over adjacent pieces; an unknown quantity
    counts 0, as :func:`governor.store.metered.write_metered` stores it), accumulated by
    the meter's own ``rollup_add`` (C when built).  The rollups are made when written, from
    the merged intervals: one that lies in an hour adds its sums and its count of pieces
    there, as the pieces would have one by one; an interval across an hour boundary is
    never merged and is split as :func:`pair_series` splits it.  So the rows written are
    the rollups, anchors and usage of the passes held, to the unit.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.passes = 0
        self.samples = 0
        self.skipped = 0
        #: each key's growing interval: [start, end, end of its hour (start when it
        #: crosses one: never merged), from_creation]
        self._span: dict[K, list[Any]] = {}
        #: each growing interval's [duration_us, pieces, *quantities]
        self._acc: dict[K, list[int]] = {}
        #: closed intervals: (key, span, acc), in order
        self._done: list[tuple[K, list[Any], list[int]]] = []
        self._anchors: dict[K, GroupSample] = {}
        self._values: PendingValues[K] = PendingValues()

    def __bool__(self) -> bool:
        return self.passes > 0

    def clear(self) -> None:
        self._reset()

    def add(self, step: Metered[Any], ids: Mapping[Any, K], *,
            another_pass: bool = True) -> None:
        """Hold ``step``, its keys turned into this one's by ``ids`` (the daemon's:
        incarnation keys into the store's group ids of the pass that made it);
        ``another_pass=False``: the rest of the pass added last (Meter.step_into)."""
        self.passes += another_pass
        self.samples += step.samples
        self.skipped += step.skipped
        span, acc, done, add = self._span, self._acc, self._done, rollup_add
        # the hour of the last new span: nearly every interval of a step starts in it
        # (hour_floor per key was 5% of the daemon's CPU at 1,000 groups, issue #16)
        lo = hi = None
        for k, iv in step.usages:
            key = ids[k]
            sp = span.get(key)
            if sp is not None:
                if sp[1] == iv.start and iv.end <= sp[2]:
                    sp[1] = iv.end
                    add(acc, key, iv.duration_us, iv.quantities)
                    continue
                done.append((key, sp, acc.pop(key)))
            start, end = iv.start, iv.end
            if lo is None or hi is None or not lo <= start < hi:
                lo = hour_floor(start)
                hi = lo + HOUR
            hour_end = hi
            span[key] = [start, end, hour_end if end <= hour_end else start,
                         iv.from_creation]
            add(acc, key, iv.duration_us, iv.quantities)
        anchors = self._anchors
        for k, sample in step.anchors.items():
            anchors[ids[k]] = sample
        self._values.add(step.values, ids)

    def metered(self) -> Metered[K]:
        """Everything held, as one step to write."""
        usages: list[tuple[K, Interval]] = []
        rollups: dict[tuple[K, datetime], list[int]] = {}
        acc = self._acc
        lo = hi = None   # the hour of the last span (as in add)
        for key, sp, a in [*self._done, *((k, sp, acc[k]) for k, sp in self._span.items())]:
            iv = Interval(sp[0], sp[1], a[0], sp[3], tuple(a[2:]))
            usages.append((key, iv))
            if sp[2] == sp[0]:  # across an hour boundary: alone, split as pair_series does
                add_interval(rollups, key, iv)
                continue
            if lo is None or hi is None or not lo <= sp[0] < hi:
                lo = hour_floor(sp[0])
                hi = lo + HOUR
            rkey = (key, lo)
            got = rollups.get(rkey)
            if got is None:
                rollups[rkey] = list(a)
            else:
                for i, v in enumerate(a):
                    got[i] += v
        return Metered(self.samples, usages, rollups, self._anchors, self.skipped,
                       self._values.metered())
