"""The daemon writes the derived rows every ``write_every`` passes (issue #16):
governor.metering.meter.Pending merges the steps exactly, and the store ends with the same
rollups and anchors as writing every pass, across a failed write and a restart."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from governor.metering.meter import Meter, Pending
from governor.metering.rollup import HOUR, hour_floor
from governor.store.db import upgrade
from governor.store.gate import Database
from governor.store.models import Group, HourlyRollup, IntervalUsageRow
from tests.helpers.db import make_sample
from tests.unit.test_daemon_database import daemon_for_store

T0 = datetime(2026, 11, 1, 9, 57, 3, tzinfo=UTC)   # the hour turns within the run


def passes(n: int, groups: int = 4, seed: int = 7) -> list[list[Any]]:
    """``n`` passes 10 s apart of ``groups`` groups with random growing counters; group 3
    is re-created (a new incarnation) halfway."""
    rng = random.Random(seed)
    cpu = [0] * groups
    wb = [0] * groups
    out = []
    for i in range(n):
        batch = []
        for j in range(groups):
            cpu[j] += rng.randrange(0, 10**6)
            wb[j] += rng.randrange(0, 10**5)
            cid = 10 + j if not (j == 3 and i >= n // 2) else 99
            created = T0 + timedelta(seconds=10 * i - 1) if cid == 99 and i == n // 2 \
                else None
            batch.append(make_sample(group=f"g{j}", cgroup_id=cid,
                                     wall=T0 + timedelta(seconds=10 * i),
                                     cpu=cpu[j] if cid != 99 else cpu[j] // 7,
                                     mem=rng.randrange(1 << 20, 1 << 30), wbytes=wb[j],
                                     created=created))
        out.append(batch)
    return out


def test_pending_merges_exactly_within_an_hour() -> None:
    m = Meter()
    first = passes(1)[0]
    m_anchor = m.step(first, {(s.tenant, s.group, s.cgroup_id): _anchor(s) for s in first})
    m.advance(m_anchor)
    steps = []
    for batch in passes(40)[1:]:
        resolved = {(s.tenant, s.group, s.cgroup_id): _anchor(None)
                    for s in m.unknown(batch)}
        st = m.step(batch, resolved)
        m.advance(st)
        steps.append(st)
    ids = {k: n for n, k in enumerate(sorted({k for st in steps for k, _ in st.usages},
                                             key=str))}
    p: Pending[int] = Pending()
    for st in steps:
        p.add(st, ids)
    got = p.metered()
    # the rollups: the exact sums of the steps'
    want: dict[tuple[int, datetime], list[int]] = {}
    for st in steps:
        for (k, hour), v in st.rollups.items():
            acc = want.setdefault((ids[k], hour), [0] * len(v))
            for i, x in enumerate(v):
                acc[i] += x
    assert got.rollups == want
    # the intervals: each key's tile its own intervals without gaps, none across an hour
    # boundary (but one that crossed it itself), and add up to the same quantities
    for key in set(ids.values()):
        mine = [iv for k, iv in got.usages if k == key]
        theirs = [iv for st in steps for k, iv in st.usages if ids[k] == key]
        assert mine[0].start == theirs[0].start and mine[-1].end == theirs[-1].end
        assert all(a.end == b.start for a, b in pairwise(mine))
        # across an hour boundary: only an interval that was so alone (its unknown
        # quantities stored as 0, as write_metered stores them)
        alone = [t._replace(quantities=tuple(q or 0 for q in t.quantities)) for t in theirs]
        for iv in mine:
            assert iv.end <= hour_floor(iv.start) + HOUR or iv in alone
        assert len(mine) < len(theirs)
        for q in range(len(theirs[0].quantities)):
            assert sum(iv.quantities[q] or 0 for iv in mine) == \
                sum(iv.quantities[q] or 0 for iv in theirs)
        assert sum(iv.duration_us for iv in mine) == sum(iv.duration_us for iv in theirs)
    assert got.anchors == {ids[k]: s for st in steps for k, s in st.anchors.items()}
    assert p.passes == len(steps) and bool(p)
    p.clear()
    assert not p and p.metered().usages == [] and p.metered().rollups == {}


def _anchor(s: Any) -> Any:
    from governor.metering.meter import Anchor

    return Anchor(s, s.wall if s is not None else None)


def stored(url: str) -> tuple[list[tuple[Any, ...]], dict[str, Any], int]:
    e = create_engine(url)
    with e.connect() as c:
        rollups = sorted(c.execute(select(
            Group.path, Group.cgroup_id, HourlyRollup.hour, HourlyRollup.covered_us,
            HourlyRollup.intervals, HourlyRollup.cpu_usec, HourlyRollup.memory_byte_seconds,
            HourlyRollup.io_wbytes).join(Group, Group.id == HourlyRollup.group_id)).all())
        anchors = {f"{p}#{c_}": m for p, c_, m in c.execute(
            select(Group.path, Group.cgroup_id, Group.metered_until)).all()}
        n = len(c.execute(select(IntervalUsageRow.end_ts)).all())
    e.dispose()
    return [tuple(r) for r in rollups], anchors, n


def run(tmp_path: Path, name: str, every: int, fail_at: int | None = None,
        restart_at: int | None = None) -> tuple[list[tuple[Any, ...]], dict[str, Any], int]:
    url = f"sqlite:///{tmp_path / name}.db"
    upgrade(url)
    db = Database(url)
    db.check()
    d = daemon_for_store(db, tmp_path / name)
    d.cfg.write_every = every
    all_passes = passes(30)
    held = 0
    for i, batch in enumerate(all_passes):
        if restart_at == i:   # a restart: what memory held is gone; the store catches up
            d = daemon_for_store(db, tmp_path / name)
            d.cfg.write_every = every
        assert d._store(batch) == "stored"
        if fail_at == i:
            real = d.scope

            def broken() -> Any:
                raise RuntimeError("the disk is full")
            d.scope = broken
            d._meter(batch, flush=True)  # the write of what it holds fails
            d.scope = real
            assert not d._meter_ready and not d.pending
            continue
        d._meter(batch, flush=i == len(all_passes) - 1)
        assert d._meter_ready
        assert d.pending.passes < every  # written once it holds write_every passes
        held = max(held, d.pending.passes)
    assert not d.pending  # the last pass (as at exit) wrote everything
    assert held == every - 1
    db.dispose()
    return stored(url)


def test_written_every_n_passes_same_rollups_and_anchors(tmp_path: Path) -> None:
    every_pass = run(tmp_path, "one", 1)
    batched = run(tmp_path, "six", 6)
    # the same hourly rollups and anchors (the rows the bills read); fewer interval rows
    assert batched[0] == every_pass[0]
    assert batched[1] == every_pass[1]
    assert batched[2] < every_pass[2]
    # a failed write drops what was held; the store's catch-up makes it again
    assert run(tmp_path, "failed", 6, fail_at=14)[:2] == every_pass[:2]
    # a restart (a kill -9: memory lost, the raw samples stored) likewise
    assert run(tmp_path, "restart", 6, restart_at=17)[:2] == every_pass[:2]


def test_write_every_is_checked(tmp_path: Path) -> None:
    from governor.config import load_config
    from governor.errors import ConfigError

    f = tmp_path / "c.toml"
    for bad in ("0", "361", '"6"', "true"):
        f.write_text(f"[sampling]\nwrite_every = {bad}\n")
        try:
            load_config(f)
        except ConfigError as e:
            assert "sampling.write_every" in str(e) and "1 to 360" in str(e)
        else:
            raise AssertionError(f"write_every = {bad} was taken")
    f.write_text("[sampling]\nwrite_every = 1\n")
    assert load_config(f).write_every == 1


def test_the_write_falls_every_write_every_passes(tmp_path: Path) -> None:
    """Pass 0 meters what the store holds (the catch-up); then write_every passes are held
    and written together, and the last pass flushes what is held; the bills' rows are the
    same as written every pass."""
    url = f"sqlite:///{tmp_path / 'every'}.db"
    upgrade(url)
    db = Database(url)
    db.check()
    d = daemon_for_store(db, tmp_path / "every")
    d.cfg.write_every = 6
    all_passes = passes(30)
    written_at = []
    for i, batch in enumerate(all_passes):
        assert d._store(batch) == "stored"
        before = d.pending.passes
        d._meter(batch, flush=i == len(all_passes) - 1)
        if before and not d.pending:
            written_at.append(i)
        assert d.pending.passes < 6
    db.dispose()
    assert written_at == [6, 12, 18, 24, 29]
    assert stored(url)[:2] == run(tmp_path, "one", 1)[:2]
