"""Reading a group's history for the rules: raw samples in the window and the limits
applied (the store's tables, through the session passed in; nothing is written).

Raw samples, not hourly rollups: a percentile needs each sample, and rollups keep sums.
The raw samples are kept ``[database] retention_raw`` (14 days by default), so a window
longer than that sees only what is left; each result says its first and last sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby, pairwise
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import or_, select

from governor.recommend.rules import FILES, PRESSURE_RESOURCES, History
from governor.store.db import Executor
from governor.store.tables import applied_policies, groups, samples, tenants

#: the sample columns the rules read
_COLUMNS: Final = ("mono", "cpu_usage_usec", "cpu_nr_periods", "cpu_nr_throttled",
                   "memory_current", "memory_events_oom_kill",
                   *(f"psi_{r}_some_usec" for r in PRESSURE_RESOURCES))


@dataclass(slots=True)
class _Acc:
    """Sums over the pairs of consecutive samples of one group's incarnations."""

    working_set: list[int] = field(default_factory=list)
    cpu_rates: list[float] = field(default_factory=list)
    nr_periods: int = 0
    nr_throttled: int = 0
    stalled: dict[str, int] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    oom_kills: int = 0
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None


#: positions in a row of :func:`_rows` (tenant, group, gid, ts, then :data:`_COLUMNS`)
_GID, _TS, _MONO, _CPU, _PERIODS, _THROTTLED, _MEM, _KILLS = 2, 3, 4, 5, 6, 7, 8, 9
_PSI: Final = tuple(range(10, 10 + len(PRESSURE_RESOURCES)))


def _grew(a: Any, b: Any) -> bool:
    """A counter went from ``a`` to ``b``: both read, and no reset (a decrease)."""
    return a is not None and b is not None and b >= a


def _pairs(acc: _Acc, batch: Sequence[Any]) -> None:
    """The pairs of consecutive samples of one incarnation (a hot loop: a week of 10 s
    samples is 60,480 pairs per group, so positions and locals, not names)."""
    rates = acc.cpu_rates
    stalled = [0] * len(_PSI)
    measured = [0.0] * len(_PSI)
    for prev, row in pairwise(batch):
        us = (row[_MONO] - prev[_MONO]) * 1e6
        if not us > 0:
            continue
        if _grew(prev[_CPU], row[_CPU]):
            rates.append((row[_CPU] - prev[_CPU]) / us)
        if _grew(prev[_PERIODS], row[_PERIODS]) and _grew(prev[_THROTTLED], row[_THROTTLED]):
            acc.nr_periods += row[_PERIODS] - prev[_PERIODS]
            acc.nr_throttled += row[_THROTTLED] - prev[_THROTTLED]
        for i, col in enumerate(_PSI):
            if _grew(prev[col], row[col]):
                stalled[i] += row[col] - prev[col]
                measured[i] += us
        if _grew(prev[_KILLS], row[_KILLS]):
            acc.oom_kills += row[_KILLS] - prev[_KILLS]
    for i, res in enumerate(PRESSURE_RESOURCES):
        if measured[i]:
            acc.stalled[res] = acc.stalled.get(res, 0) + stalled[i]
            acc.measured[res] = acc.measured.get(res, 0.0) + measured[i]


def _accumulate(rows: Iterable[Any]) -> _Acc:
    """One group's rows, ordered by incarnation and time."""
    acc = _Acc()
    for _, incarnation in groupby(rows, key=itemgetter(_GID)):
        batch = list(incarnation)
        acc.count += len(batch)
        first, last = batch[0][_TS], batch[-1][_TS]
        acc.first = first if acc.first is None else min(acc.first, first)
        acc.last = last if acc.last is None else max(acc.last, last)
        acc.working_set.extend(int(r[_MEM]) for r in batch if r[_MEM] is not None)
        _pairs(acc, batch)
    return acc


def _rows(session: Executor, start: datetime, end: datetime, tenant: str | None,
          group: str | None) -> Iterator[Any]:
    q = (select(tenants.c.name.label("tenant"), groups.c.name.label("group"),
                groups.c.id.label("gid"), samples.c.ts,
                *(samples.c[c] for c in _COLUMNS))
         .join(groups, groups.c.id == samples.c.group_id)
         .join(tenants, tenants.c.id == groups.c.tenant_id)
         .where(samples.c.ts >= start, samples.c.ts < end, groups.c.name.is_not(None))
         .order_by(tenants.c.name, groups.c.name, groups.c.id, samples.c.ts))
    if tenant is not None:
        q = q.where(tenants.c.name == tenant)
    if group is not None:
        q = q.where(groups.c.name == group)
    yield from session.execute(q.execution_options(yield_per=10_000))


def known_groups(*, session: Executor, start: datetime) -> dict[str, set[str]]:
    """Tenant -> the groups the store knows that were alive at some point after ``start``."""
    q = (select(tenants.c.name, groups.c.name)
         .join(tenants, tenants.c.id == groups.c.tenant_id)
         .where(groups.c.name.is_not(None),
                or_(groups.c.removed_at.is_(None), groups.c.removed_at >= start)))
    out: dict[str, set[str]] = {}
    for t, g in session.execute(q):
        out.setdefault(t, set()).add(g)
    for (t,) in session.execute(select(tenants.c.name)):
        out.setdefault(t, set())
    return out


def applied_limits(*, session: Executor, end: datetime) -> dict[str, dict[str, str]]:
    """``"tenant/group"`` -> the last value of each suggested file that governor wrote
    (successfully) before ``end``, from the applied policies (their paths are relative to
    the cgroup mount: the last two components name the group)."""
    out: dict[str, dict[str, str]] = {}
    q = (select(applied_policies.c.writes).where(applied_policies.c.applied_at < end)
         .order_by(applied_policies.c.applied_at, applied_policies.c.id))
    for (writes,) in session.execute(q):
        for w in writes or ():
            if not isinstance(w, Mapping) or w.get("file") not in FILES:
                continue
            if w.get("kind", "set") != "set" or w.get("ok", "yes") != "yes":
                continue
            parts = str(w.get("path", "")).strip("/").split("/")
            if len(parts) >= 2:
                out.setdefault("/".join(parts[-2:]), {})[str(w["file"])] = str(w["value"])
    return out


def read_histories(*, session: Executor, start: datetime, end: datetime,
                   tenant: str | None = None, group: str | None = None,
                   also: Sequence[tuple[str, str]] = (),
                   policy_limits: Mapping[str, Mapping[str, str]] | None = None,
                   ) -> Iterator[History]:
    """One :class:`History` per group with samples in ``[start, end)``, then per group
    known to the store (or named in ``also``, the policy's groups) without any: those
    have empty series (no-data).  Limits: ``policy_limits``' (by path), overlaid by the
    values governor last wrote (what the kernel had during the window).

    A generator: one group's series are held at a time (a week of 10 s samples is 60,480
    per group), so the caller reduces each before the next is read."""
    applied = applied_limits(session=session, end=end)
    policy_limits = policy_limits or {}

    def made(t: str, g: str, acc: _Acc) -> History:
        path = f"{t}/{g}"
        limits = {**policy_limits.get(path, {}), **applied.get(path, {})}
        where = "+".join(w for w, src in (("applied", applied), ("policy", policy_limits))
                         if path in src)
        pressure = {r: acc.stalled[r] / acc.measured[r] for r in acc.measured
                    if acc.measured[r] > 0}
        return History(t, g, acc.count, acc.first, acc.last, acc.working_set,
                       acc.cpu_rates, acc.nr_periods, acc.nr_throttled, pressure,
                       acc.oom_kills, {f: v for f, v in limits.items() if f in FILES},
                       where)

    seen: set[tuple[str, str]] = set()
    for key, rows in groupby(_rows(session, start, end, tenant, group),
                             key=lambda r: (r.tenant, r.group)):
        seen.add(key)
        yield made(*key, _accumulate(rows))
    names = set(also)
    for t, gs in known_groups(session=session, start=start).items():
        names.update((t, g) for g in gs)
    for t, g in sorted(names - seen):
        if (tenant is None or t == tenant) and (group is None or g == group):
            yield made(t, g, _Acc())
