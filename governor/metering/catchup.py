"""The meter step over stored samples: the catch-up after a restart, a crash between a
pass's two commits, or a drained spool, and the anchors the daemon's in-memory
:class:`~governor.metering.meter.Meter` does not hold.

The rules are the in-memory meter's (:func:`~governor.metering.meter.pair_series`, the one
pairing rule); the rows come from and go to the store through
:mod:`governor.store.metered`, which only reads and writes.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from governor.metering.meter import Anchor, IncKey, inc_key, pair_series
from governor.metering.sample import GroupSample
from governor.store import metered as repo

if TYPE_CHECKING:
    from governor.store.db import Executor
    from governor.store.metered import GroupRow


@dataclasses.dataclass(frozen=True, slots=True)
class MeterResult:
    samples: int
    intervals: int
    skipped: int
    rollup_rows: int


#: how far back from the newest anchor the groups metered "lately" reach (see meter)
METER_LOOKBACK = timedelta(minutes=2)


def meter(*, session: Executor, node: str) -> MeterResult:
    """Turn the raw samples of ``node`` stored since the last run into interval usage and
    hourly rollups, then move each incarnation's anchor (``groups.metered_until``).

    Each incarnation's new samples are paired with the previous one, the first with the
    anchor: after a restart the first new sample pairs with the last stored sample, so the
    downtime is counted once.  Samples older than the anchor (arriving late) are ignored.
    """
    node_id = repo.node_id_of(session=session, node=node)
    if node_id is None:
        return MeterResult(0, 0, 0, 0)
    groups = repo.node_groups(session=session, node_id=node_id)
    tenants = repo.tenant_names(session=session)
    # Only the recent end of the raw table is read: from the oldest anchor among the
    # groups metered lately (the last pass's), by the (node, ts) primary key.  Samples
    # come in time order per node (one sampler; the spool replays in order before the next
    # pass), so nothing unmetered is older.  The anchor sample of a group metered longer
    # ago (missing from recent passes, or removed) is fetched by its key when it has new
    # samples.  Reading from each group's own anchor instead scanned the whole raw table
    # at every pass (8.6 million rows a day at 1,000 groups).
    anchors = [g.metered_until for g in groups.values() if g.metered_until is not None]
    lo: datetime | None = None
    if anchors:
        newest = max(anchors)
        lo = min(a for a in anchors if a >= newest - METER_LOOKBACK)
    by_group = repo.unmetered_samples(session=session, node=node, node_id=node_id,
                                      groups=groups, tenants=tenants, since=lo)
    if not by_group:
        return MeterResult(0, 0, 0, 0)

    by_path: dict[str, list[GroupRow]] = defaultdict(list)
    for g in groups.values():
        by_path[g.path].append(g)
    series: dict[int, Sequence[GroupSample]] = {}
    previous: dict[int, GroupSample | None] = {}
    for gid, samples in by_group.items():
        g = groups[gid]
        prev: GroupSample | None = None
        todo: Sequence[GroupSample] = samples
        if g.metered_until is not None and samples[0].wall == g.metered_until:
            prev, todo = samples[0], samples[1:]
        elif g.metered_until is None:
            prev = _previous_incarnation_sample(session=session, node=node, group=g,
                                                tenant=tenants[g.tenant_id],
                                                before=samples[0].wall,
                                                others=by_path[g.path], fresh=by_group)
        series[gid] = todo
        previous[gid] = prev
    metered = pair_series(series, previous)
    repo.write_metered(session=session, node_id=node_id, metered=metered)
    read = sum(len(samples) for samples in by_group.values())
    return MeterResult(read, len(metered.usages), metered.skipped, len(metered.rollups))


def load_anchors(*, session: Executor, node: str, node_id: int,
                 samples: Sequence[GroupSample], ids: Mapping[IncKey, int]
                 ) -> dict[IncKey, Anchor]:
    """The anchors of ``samples``' incarnations as the store has them (``ids``: their group
    ids, from :func:`governor.store.service.store_samples`): for the in-memory meter, once
    per incarnation it does not hold (after a start, a long absence, a new incarnation).
    The same rules as :func:`meter`: an incarnation metered before pairs with the sample at
    its ``metered_until`` (none if retention removed it); one never metered with the latest
    sample of an earlier incarnation of its path before its first sample."""
    wanted = {inc_key(s): s for s in samples}
    groups = repo.groups_by_id(session=session, ids=[ids[k] for k in wanted])
    tenants = repo.tenant_names(session=session, ids=[g.tenant_id for g in groups.values()])
    stored = repo.samples_at(session=session, node=node, node_id=node_id, groups=groups,
                             tenants=tenants, keys=[(g.id, g.metered_until)
                                                    for g in groups.values()
                                                    if g.metered_until is not None])
    out: dict[IncKey, Anchor] = {}
    for key, s in wanted.items():
        g = groups[ids[key]]
        if g.metered_until is not None:
            out[key] = Anchor(stored.get((g.id, g.metered_until)), g.metered_until)
            continue
        others = repo.incarnations_of_path(session=session, node_id=node_id, path=g.path)
        out[key] = Anchor(_previous_incarnation_sample(
            session=session, node=node, group=g, tenant=tenants[g.tenant_id], before=s.wall,
            others=others, fresh={}), None)
    return out


def _previous_incarnation_sample(*, session: Executor, node: str, group: GroupRow, tenant: str,
                                 before: datetime, others: Sequence[GroupRow],
                                 fresh: Mapping[int, Sequence[GroupSample]]
                                 ) -> GroupSample | None:
    """The last sample before ``before`` of an earlier incarnation of the same path on the
    same node: the latest of each such incarnation's anchor (its last metered sample) and
    its samples in this run (``fresh``), read by its primary key.  (A query for "the
    latest sample of that path before ``before``" walked the raw table back to its start
    whenever the path had no earlier incarnation: every brand-new group.)"""
    best: tuple[datetime, GroupRow] | None = None
    for other in others:
        if other.id == group.id:
            continue
        times = [x.wall for x in fresh.get(other.id, ()) if x.wall < before]
        if other.metered_until is not None and other.metered_until < before:
            times.append(other.metered_until)
        if times and (best is None or max(times) > best[0]):
            best = (max(times), other)
    if best is None:
        return None
    # removed by retention meanwhile (None): as if there were none
    return repo.counters_at(session=session, node=node, tenant=tenant, group=group.name,
                            node_id=group.node_id, group_id=best[1].id,
                            cgroup_id=best[1].cgroup_id, ts=best[0])
