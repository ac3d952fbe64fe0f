"""Meter.step_into (the daemon's pass: Meter.step and Pending.add in one loop, in C) holds
exactly what Meter.step then Pending.add hold, pass after pass, written every few passes:
the same intervals, rollups, anchors, counts and generic values, over incarnations that
come and go, counter resets, missing counters, samples not later than their anchor, two
samples of a key in one pass, hours turning, and samples the C hands to the twin."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from governor.metering import meter as meter_mod
from governor.metering.meter import Anchor, IncKey, Meter, Metered, Pending
from governor.metering.sample import GroupSample
from tests.helpers.db import make_sample

T0 = datetime(2026, 11, 1, 9, 58, 1, tzinfo=UTC)   # the hour turns within every run

needs_c = pytest.mark.skipif(meter_mod._STEP_INTO is None,
                             reason="the C accelerator is not built (setup.py build_ext)")


def _state(m: Meter, p: Pending[int], anchors: dict[IncKey, GroupSample]) -> Any:
    got = p.metered()
    return (sorted((k, tuple(iv)) for k, iv in got.usages),
            got.rollups, got.anchors, got.samples, got.skipped, p.passes,
            None if got.values is None else (sorted(got.values.usages, key=repr),
                                             got.values.rollups),
            dict(m._last), anchors)


class World:
    """Groups whose counters grow, with every odd case now and then."""

    def __init__(self, seed: int, groups: int) -> None:
        self.rng = random.Random(seed)
        self.cid = {g: 100 + g for g in range(groups)}
        self.cpu = dict.fromkeys(range(groups), 0)
        self.wb = dict.fromkeys(range(groups), 0)
        self.next_cid = 1000
        self.last: dict[int, GroupSample] = {}

    def sample(self, g: int, wall: datetime) -> GroupSample:
        rng = self.rng
        roll = rng.random()
        created = None
        if roll < 0.03:   # a new incarnation, born just before
            self.next_cid += 1
            self.cid[g] = self.next_cid
            self.cpu[g] = self.wb[g] = 0
            created = wall - timedelta(seconds=rng.randrange(1, 9))
        elif roll < 0.05:   # a counter went down: a reset
            self.cpu[g] = max(0, self.cpu[g] - rng.randrange(1, 10**6))
        else:
            self.cpu[g] += rng.randrange(0, 10**6)
            self.wb[g] += rng.choice((0, 0, rng.randrange(0, 10**5)))
        s = make_sample(group=f"g{g:02d}", cgroup_id=self.cid[g], wall=wall,
                        cpu=self.cpu[g], mem=rng.randrange(0, 1 << 30), wbytes=self.wb[g],
                        created=created,
                        storage=rng.choice((None, rng.randrange(0, 1 << 32))))
        roll = rng.random()
        if roll < 0.03:    # a counter the sampler could not read: missing, not zero
            s = dataclasses.replace(s, cpu_usage_usec=None)
        elif roll < 0.05:  # a float where an int belongs: the twin's case
            s = dataclasses.replace(s, memory_current=float(s.memory_current or 0))
        elif roll < 0.07:  # the monotonic clock did not move: the twin takes the wall
            prev = self.last.get(g)
            if prev is not None and prev.cgroup_id == s.cgroup_id:
                s = dataclasses.replace(s, monotonic=prev.monotonic)
        if rng.random() < 0.3:   # huge pages: the generic controllers' values
            s = dataclasses.replace(s, values={"hugetlb.2MB.current":
                                               rng.randrange(0, 64) << 21})
        self.last[g] = s
        return s

    def batch(self, i: int) -> list[GroupSample]:
        rng = self.rng
        wall = T0 + timedelta(seconds=10 * i)
        out = [self.sample(g, wall + timedelta(microseconds=rng.randrange(0, 900_000)))
               for g in sorted(self.cid) if rng.random() > 0.05]   # some not read
        if out and rng.random() < 0.1:   # a sample again, later, in the same pass
            s = rng.choice(out)
            out.append(dataclasses.replace(
                s, wall=s.wall + timedelta(seconds=2), monotonic=s.monotonic + 2,
                cpu_usage_usec=(s.cpu_usage_usec or 0) + 5))
        if out and rng.random() < 0.1:
            # a sample again, later, where the earlier one is the twin's case (a float):
            # in either order, the two must be paired in time order
            s = rng.choice([x for x in out if isinstance(x.memory_current, int)] or out)
            out.remove(s)
            out.append(dataclasses.replace(s, memory_current=float(s.memory_current or 0)))
            out.append(dataclasses.replace(
                s, wall=s.wall + timedelta(seconds=3), monotonic=s.monotonic + 3,
                cpu_usage_usec=(s.cpu_usage_usec or 0) + 9))
        if out and rng.random() < 0.1:   # a sample not later than its anchor
            s = rng.choice(out)
            out.append(dataclasses.replace(s, wall=s.wall - timedelta(seconds=30)))
        rng.shuffle(out)
        return out


def _resolve(m: Meter, batch: list[GroupSample]) -> dict[IncKey, Anchor]:
    return {(s.tenant, s.group, s.cgroup_id): Anchor(None, None) for s in m.unknown(batch)}


def _unknown_resolver(asked: list[list[IncKey]] | None = None) -> Any:
    def resolve(unknown: list[GroupSample]) -> dict[IncKey, Anchor]:
        keys = [(s.tenant, s.group, s.cgroup_id) for s in unknown]
        if asked is not None:
            asked.append(keys)
        return dict.fromkeys(keys, Anchor(None, None))
    return resolve


@needs_c
@pytest.mark.parametrize("seed", range(12))
def test_step_into_holds_what_step_then_add_holds(seed: int) -> None:
    world = World(seed, groups=25)
    batches = [world.batch(i) for i in range(60)]
    write_every = 1 + seed % 6
    ids: dict[IncKey, int] = {}
    ma, mb = Meter(), Meter()
    pa: Pending[int] = Pending()
    pb: Pending[int] = Pending()
    for i, batch in enumerate(batches):
        for s in batch:
            ids.setdefault((s.tenant, s.group, s.cgroup_id), len(ids))
        # A: the C loop, asking for the anchors it does not hold
        asked: list[list[IncKey]] = []
        anchors_a = ma.step_into(batch, _unknown_resolver(asked), pa, ids)
        want = sorted({(s.tenant, s.group, s.cgroup_id) for s in ma.unknown(batch)}, key=repr)
        assert sorted({k for ks in asked for k in ks}, key=repr) == want
        assert len(asked) <= 1   # one look-up a pass at most, none when all are known
        # B: the twin, as the daemon did it before
        step = mb.step(batch, _resolve(mb, batch), with_rollups=False)
        pb.add(step, ids)
        assert anchors_a == step.anchors
        if pa.passes >= write_every or i == len(batches) - 1:
            assert _state(ma, pa, anchors_a) == _state(mb, pb, step.anchors), i
            pa.clear()
            pb.clear()
        ma.advance_to(anchors_a)
        mb.advance(step)
        assert ma._last == mb._last


@needs_c
def test_the_c_loop_meters_the_common_pass_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # a plain pass (every group known, counters growing) leaves nothing to the twin: the
    # Python step is not called at all
    world = World(3, groups=10)
    m = Meter()
    first = [world.sample(g, T0) for g in range(10)]
    m.advance(m.step(first, _resolve(m, first)))
    plain = [make_sample(group=s.group, cgroup_id=s.cgroup_id, wall=T0 + timedelta(seconds=10),
                         cpu=(s.cpu_usage_usec or 0) + 7, mem=1 << 20) for s in first]
    called: list[int] = []
    real = Meter.step

    def spy(self: Meter, samples: Any, *a: Any, **kw: Any) -> Metered[IncKey]:
        called.append(len(samples))
        return real(self, samples, *a, **kw)

    monkeypatch.setattr(Meter, "step", spy)
    p: Pending[int] = Pending()
    ids = {(s.tenant, s.group, s.cgroup_id): n for n, s in enumerate(plain)}
    asked: list[list[IncKey]] = []
    anchors = m.step_into(plain, _unknown_resolver(asked), p, ids)
    assert called == [] and asked == []
    assert anchors == {k: s for s in plain for k in [(s.tenant, s.group, s.cgroup_id)]}
    got = p.metered()
    assert got.samples == 10 and got.skipped == 0 and p.passes == 1
    assert sorted(k for k, _ in got.usages) == list(range(10))
    for _, iv in got.usages:
        assert iv.quantities[0] == 7 and iv.duration_us == 10_000_000


def test_without_the_accelerator_it_is_step_then_add(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meter_mod, "_STEP_INTO", None)
    world = World(5, groups=8)
    ma, mb = Meter(), Meter()
    pa: Pending[int] = Pending()
    pb: Pending[int] = Pending()
    ids: dict[IncKey, int] = {}
    for i in range(12):
        batch = world.batch(i)
        for s in batch:
            ids.setdefault((s.tenant, s.group, s.cgroup_id), len(ids))
        anchors = ma.step_into(batch, _unknown_resolver(), pa, ids)
        step = mb.step(batch, _resolve(mb, batch), with_rollups=False)
        pb.add(step, ids)
        assert anchors == step.anchors
        ma.advance_to(anchors)
        mb.advance(step)
    assert _state(ma, pa, {}) == _state(mb, pb, {})


@needs_c
def test_an_unknown_id_raises_and_the_daemon_drops_what_pending_holds() -> None:
    world = World(9, groups=4)
    m = Meter()
    first = [world.sample(g, T0) for g in range(4)]
    m.advance(m.step(first, _resolve(m, first)))
    nxt = [make_sample(group=s.group, cgroup_id=s.cgroup_id, wall=T0 + timedelta(seconds=10),
                       cpu=(s.cpu_usage_usec or 0) + 1) for s in first]
    p: Pending[int] = Pending()
    with pytest.raises(KeyError):
        m.step_into(nxt, _unknown_resolver(), p, {})


def test_an_anchor_not_metered_for_keep_passes_leaves_memory() -> None:
    # keep_passes 6: looked at every 6 passes; a group gone leaves memory after 6 to 11
    # passes without a sample, one sampled every pass never does, and the looks keep
    # times, not samples (a pass's samples are not held until the next look)
    m = Meter(keep_passes=6)
    gone_at = 4
    for i in range(30):
        t = T0 + timedelta(seconds=10 * i)
        batch = [make_sample(group="stay", cgroup_id=1, wall=t, cpu=i)]
        if i < gone_at:
            batch.append(make_sample(group="gone", cgroup_id=2, wall=t, cpu=i))
        p: Pending[int] = Pending()
        ids = {(s.tenant, s.group, s.cgroup_id): s.cgroup_id for s in batch}
        m.advance_to(m.step_into(batch, _unknown_resolver(), p, ids))
        held = {k[1] for k in m._last}
        assert "stay" in held
        unseen = i - (gone_at - 1)
        if unseen < 6:
            assert "gone" in held, i
        elif unseen >= 12:
            assert "gone" not in held, i
        assert all(isinstance(mark[0], datetime) for mark in m._marks.values())
    assert {k[1] for k in m._last} == {"stay"}
