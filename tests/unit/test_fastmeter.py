"""The meter's C accelerator (governor.metering._fastmeter) against its Python twin.

``interval_between`` (C first, the twin for what C hands back) must give exactly what
``interval_between_py`` gives, or raise the same error, for every pair of samples:
counters missing, reset in any position, past 64 bits, not ints; IO devices new, gone,
reset, with fields missing; monotonic clocks that stand still or go back; wall clocks
that do; other incarnations and other groups; memory and storage integrals whose rounding
is a tie, storage measured at one end only, past 64 bits.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from governor.metering import usage
from governor.metering.sample import COUNTER_FIELDS, IO_FIELDS, GroupSample
from governor.metering.usage import Interval, interval_between, interval_between_py

pytestmark = pytest.mark.skipif(
    usage._FAST is None,
    reason="governor.metering._fastmeter not in use (not built: pip install -e .; or "
    "GOVERNOR_PURE_PYTHON=1)")

T0 = datetime(2026, 12, 5, 9, 59, 55, tzinfo=UTC)
BIG = [0, 1, (1 << 62), (1 << 63) - 1, 1 << 63, 1 << 64, 1 << 70]


def _num(rnd: random.Random, base: int) -> Any:
    r = rnd.random()
    if r < 0.02:
        return None
    if r < 0.03:
        return rnd.choice(BIG)
    if r < 0.035:
        return float(base)
    return base


def _sample(rnd: random.Random, *, base: dict[str, int], cid: int, wall: datetime,
            mono: float, io: dict[str, dict[str, int]], mem: Any,
            group: str | None = "web", storage: Any = None) -> GroupSample:
    return GroupSample(
        node="n1", tenant="acme", group=group, cgroup_id=cid, wall=wall, monotonic=mono,
        memory_current=mem, io=io, storage_bytes=storage,
        created=wall - timedelta(seconds=rnd.choice([1, 30, 3600])) if rnd.random() < 0.5
        else None,
        **{f: _num(rnd, base[f]) for f in COUNTER_FIELDS})


def _pair(rnd: random.Random) -> tuple[GroupSample | None, GroupSample]:
    base = {f: rnd.randrange(0, 10**9) for f in COUNTER_FIELDS}
    devs = {f"8:{i}": {k: rnd.randrange(0, 10**12) for k in IO_FIELDS}
            for i in range(rnd.randrange(0, 4))}
    mem = rnd.choice([None, 0, 4096, rnd.randrange(0, 1 << 40), (1 << 63) - 1, -5])
    mono = rnd.uniform(0, 10**6)
    # the writable layers (issue #19): None on either side (measuring began or stopped,
    # a failed read), huge (past 64 bits, or a sum past them), not an int, negative
    storage = [rnd.choice([None, None, 0, 4096, rnd.randrange(0, 1 << 50), (1 << 63) - 1,
                           1 << 64, 1 << 70, -3, 2.0]) for _ in range(2)]
    if rnd.random() < 0.5:
        storage[1] = storage[0]
    prev = _sample(rnd, base=base, cid=100, wall=T0, mono=mono, io=devs, mem=mem,
                   storage=storage[0])
    # the next sample: counters up (or a reset), devices changed, clocks moved
    nxt = {f: v + rnd.choice([0, 1, rnd.randrange(0, 10**7)]) for f, v in base.items()}
    if rnd.random() < 0.15:
        nxt[rnd.choice(COUNTER_FIELDS)] -= rnd.randrange(1, 10)
    io2: dict[str, dict[str, int]] = {}
    for dev, c in devs.items():
        if rnd.random() < 0.1:
            continue   # gone
        io2[dev] = {k: v + rnd.choice([0, rnd.randrange(0, 10**6)]) for k, v in c.items()}
        if rnd.random() < 0.05:
            io2[dev][rnd.choice(IO_FIELDS)] -= 1   # a reset
        if rnd.random() < 0.03:
            del io2[dev][rnd.choice(IO_FIELDS)]    # malformed: the twin raises KeyError
    if rnd.random() < 0.3:
        io2[f"253:{rnd.randrange(9)}"] = {k: rnd.randrange(0, 10**6) for k in IO_FIELDS}
    step = rnd.choice([10.0, 10.0, 0.0, -1.0, 1e-7, 5e-7, 0.0000005, 3600.5, 1e-3])
    wall_step = rnd.choice([10, 10, 10, 0, -3, 3600, 7200])
    cur_mem = rnd.choice([mem, None, rnd.randrange(0, 1 << 40), 12345])
    cid = 100 if rnd.random() < 0.9 else 101
    group = "web" if rnd.random() < 0.97 else "db"
    cur = _sample(rnd, base=nxt, cid=cid, wall=T0 + timedelta(seconds=wall_step),
                  mono=mono + step, io=io2, mem=cur_mem, group=group, storage=storage[1])
    return (None if rnd.random() < 0.05 else prev), cur


def _outcome(f: Any, prev: GroupSample | None, cur: GroupSample) -> Any:
    try:
        return ("ok", f(prev, cur))
    except Exception as e:
        return ("raised", type(e), str(e))


@pytest.mark.parametrize("seed", range(40))
def test_c_and_the_twin_give_the_same_interval_for_every_pair(seed: int) -> None:
    rnd = random.Random(seed)
    handled = handled_storage = 0
    for _ in range(300):
        prev, cur = _pair(rnd)
        want = _outcome(interval_between_py, prev, cur)
        got = _outcome(interval_between, prev, cur)
        assert got == want, (prev, cur)
        if got[0] == "ok" and got[1] is not None:
            assert type(got[1]) is Interval
        if usage._FAST is not None and usage._FAST(prev, cur) is not NotImplemented:
            handled += 1
            storage_known = (prev is not None and prev.storage_bytes is not None
                             and cur.storage_bytes is not None)
            handled_storage += storage_known and got[1] is not None
    assert handled > 100   # the common case is C's
    assert handled_storage > 5   # storage on both ends too


def test_the_memory_integral_rounds_ties_to_even_as_the_twin() -> None:
    # (a + b) * dt / 2e6 with remainder exactly one half: q even stays, q odd goes up
    base = dict.fromkeys(COUNTER_FIELDS, 0)
    rnd = random.Random(1)
    for a, b, dt_s in ((1, 0, 1.0), (3, 0, 1.0), (1, 2, 1.0), (5, 0, 1.0),
                       ((1 << 40) + 1, 0, 1.0), (7, 8, 0.1), (1, 1, 0.5)):
        prev = _sample(rnd, base=base, cid=7, wall=T0, mono=100.0, io={}, mem=a)
        prev = dataclasses.replace(prev, **dict.fromkeys(COUNTER_FIELDS, 0))
        cur = dataclasses.replace(prev, wall=T0 + timedelta(seconds=dt_s),
                                  monotonic=100.0 + dt_s, memory_current=b)
        assert usage._FAST is not None
        fast = usage._FAST(prev, cur)
        assert fast is not NotImplemented
        assert fast == interval_between_py(prev, cur)
        # the writable layers' integral: the same rule, the same ties, at its own index
        cur = dataclasses.replace(cur, memory_current=None, storage_bytes=b)
        fast = usage._FAST(dataclasses.replace(prev, memory_current=None, storage_bytes=a),
                           cur)
        assert fast is not NotImplemented
        assert fast == interval_between_py(dataclasses.replace(
            prev, memory_current=None, storage_bytes=a), cur)
        q = dict(zip(usage.QUANTITIES, fast.quantities, strict=True))
        assert q["memory_byte_seconds"] is None
        assert q["storage_byte_seconds"] == round((a + b) * dt_s / 2)


def test_other_cases_are_handed_to_the_twin() -> None:
    assert usage._FAST is not None
    rnd = random.Random(2)
    base = dict.fromkeys(COUNTER_FIELDS, 10)
    prev = _sample(rnd, base=base, cid=7, wall=T0, mono=100.0, io={}, mem=1)
    prev = dataclasses.replace(prev, **base)
    for cur in (dataclasses.replace(prev, cgroup_id=8), dataclasses.replace(prev, group="x"),
                dataclasses.replace(prev, wall=T0 + timedelta(seconds=1)),   # mono still
                dataclasses.replace(prev, wall=T0 + timedelta(seconds=1), monotonic=101.0,
                                    cpu_usage_usec=1 << 64)):
        assert usage._FAST(prev, cur) is NotImplemented
    assert usage._FAST(None, prev) is NotImplemented


@pytest.mark.parametrize("seed", range(20))
def test_rollup_add_in_c_accumulates_as_the_twin(seed: int) -> None:
    from governor.metering import meter
    rnd = random.Random(seed)
    fast: dict[Any, list[int]] = {}
    slow: dict[Any, list[int]] = {}
    for _ in range(500):
        rkey = (rnd.randrange(6), rnd.randrange(3))
        q = tuple(rnd.choice([None, 0, 1, rnd.randrange(10**9), (1 << 63) - 1, 1 << 70])
                  for _ in usage.QUANTITIES)
        covered = rnd.randrange(0, 10**7)
        meter.rollup_add(fast, rkey, covered, q)
        meter._rollup_add_py(slow, rkey, covered, q)
    assert meter.rollup_add is not meter._rollup_add_py
    assert fast == slow


def test_pair_series_rollups_are_the_plain_sum_of_each_intervals_pieces() -> None:
    """pair_series adds an interval within the hour of the one before without splitting
    it: its rollups must be what adding every interval's split pieces gives."""
    from governor.metering.meter import add_interval, pair_series
    rnd = random.Random(3)
    series: dict[Any, list[GroupSample]] = {}
    previous: dict[Any, GroupSample | None] = {}
    for k in range(40):
        wall = T0 - timedelta(seconds=rnd.randrange(0, 7200))
        mono, cpu = 1000.0, 0
        samples = []
        for _ in range(rnd.randrange(1, 30)):
            step = rnd.choice([10, 10, 10, 0.5, 1800, 3700, 0])
            wall += timedelta(seconds=step)
            mono += step
            cpu += rnd.randrange(0, 10**6)
            samples.append(GroupSample(
                node="n1", tenant="t", group=f"g{k}", cgroup_id=k, wall=wall, monotonic=mono,
                cpu_usage_usec=cpu, memory_current=rnd.randrange(0, 1 << 30),
                created=samples[0].wall - timedelta(seconds=5) if samples else
                wall - timedelta(seconds=rnd.choice([0, 5, 4000]))))
        series[k] = samples
        previous[k] = None
    got = pair_series(series, previous)
    want: dict[Any, list[int]] = {}
    for k, iv in got.usages:
        add_interval(want, k, iv)
    assert got.rollups == want
    assert len(got.usages) > 300 and len({h for _, h in want}) > 2


def test_a_stale_build_with_other_quantities_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A _fastmeter built before storage_byte_seconds would write intervals one value
    short; importing the meter says so and how to rebuild."""
    import types

    stale = types.SimpleNamespace(N_QUANTITIES=len(usage.QUANTITIES) - 1,
                                  __file__="/x/_fastmeter.so", configure=lambda _: None)
    monkeypatch.setattr(usage, "load", lambda _: stale)
    with pytest.raises(ImportError, match=r"built for 12 quantities.*has 13: rebuild it"):
        usage._accelerated()
    monkeypatch.setattr(usage, "load", lambda _: None)
    assert usage._accelerated() is None


def test_samples_of_another_type_and_unset_slots_as_the_twin() -> None:
    """interval() reads the samples' slots directly when they are of the type it located
    (the last cur's): a sample of another type (a subclass overriding a counter) is read
    through getattr as the twin reads it, whichever of the pair it is, and an unset slot
    raises AttributeError in both."""

    class Later(GroupSample):
        @property   # type: ignore[misc]
        def cpu_usage_usec(self) -> int:
            return 10**6

    def retyped(s: GroupSample, cls: type[GroupSample]) -> GroupSample:
        out = object.__new__(cls)
        for f in dataclasses.fields(GroupSample):   # each slot, as the sampler sets them
            getattr(GroupSample, f.name).__set__(out, getattr(s, f.name))
        return out

    rnd = random.Random(5)
    base = dict.fromkeys(COUNTER_FIELDS, 10)
    prev = dataclasses.replace(
        _sample(rnd, base=base, cid=7, wall=T0, mono=100.0, io={}, mem=1), **base)
    cur = dataclasses.replace(prev, wall=T0 + timedelta(seconds=1), monotonic=101.0,
                              cpu_usage_usec=500)
    for p, c in ((prev, cur), (retyped(prev, Later), cur), (prev, retyped(cur, Later)),
                 (retyped(prev, Later), retyped(cur, Later)), (prev, cur)):
        want = interval_between_py(p, c)
        assert interval_between(p, c) == want
        assert usage._FAST(p, c) in (want, NotImplemented)
    assert interval_between(prev, retyped(cur, Later)).quantities[0] == 10**6 - 10
    def hollow(s: GroupSample) -> GroupSample:
        out = object.__new__(GroupSample)
        for name in ("node", "tenant", "group", "cgroup_id", "wall"):
            getattr(GroupSample, name).__set__(out, getattr(s, name))
        return out

    for f in (interval_between_py, interval_between):
        with pytest.raises(AttributeError):
            f(prev, hollow(cur))
        with pytest.raises(AttributeError):
            f(hollow(prev), cur)
