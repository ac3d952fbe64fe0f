"""governor.store._fastrows.sample_rows against its Python twin (bulk._sample_rows_py)
on the same random samples: the same rows, the same IO rows, the same time-text cache
afterwards (SQLite), the datetimes themselves (PostgreSQL), the same errors."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest

from governor.metering.sample import PSI_KEYS, GroupSample
from governor.store import bulk
from governor.store.bulk import _sample_rows_py, _TsCache

fast = pytest.importorskip("governor.store._fastrows")


def c_rows(samples: list[GroupSample], ids: dict[Any, int], cache: _TsCache | None
           ) -> Any:
    return fast.sample_rows(samples, ids, 7, bulk.COUNTER_COLUMNS, bulk._PSI_KEYS,
                            bulk._IO_FIELDS, cache, None if cache is None else cache.fresh,
                            0 if cache is None else cache.size)


def maybe(rng: random.Random, v: int) -> int | None:
    return None if rng.random() < 0.1 else v


def random_samples(rng: random.Random, n: int) -> list[GroupSample]:
    t0 = datetime(2026, 12, 5, 23, 59, 58, 999_990, tzinfo=UTC)
    out = []
    for i in range(n):
        tz = UTC if rng.random() < 0.8 else timezone(timedelta(hours=rng.randrange(-12, 13)))
        wall = (t0 + timedelta(microseconds=rng.randrange(0, 5_000_000))).astimezone(tz)
        if rng.random() < 0.1 and out:
            wall = out[-1].wall  # the same instant again: a cache hit
        io: dict[str, Any] = {}
        for d in range(rng.randrange(0, 3)):
            c = {f: rng.randrange(0, 1 << 64) for f in bulk._IO_FIELDS}
            io[f"{rng.randrange(1, 300)}:{d}"] = MappingProxyType(c) if rng.random() < 0.2 \
                else c
        psi = {k: rng.randrange(0, 1 << 40) for k in PSI_KEYS if rng.random() < 0.7}
        out.append(GroupSample(
            node="n", tenant=f"t{i % 3}", group=None if i % 5 == 0 else f"g{i}",
            cgroup_id=100 + i, wall=wall, monotonic=rng.random() * 1e6,
            cpu_usage_usec=maybe(rng, rng.randrange(0, 1 << 63)),
            cpu_user_usec=maybe(rng, 5), memory_current=maybe(rng, rng.randrange(0, 1 << 40)),
            memory_events_oom_kill=maybe(rng, 1), pids_current=maybe(rng, 3),
            storage_bytes=maybe(rng, rng.randrange(0, 1 << 50)), io=io, psi=psi))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_same_rows_and_cache_as_the_twin(seed: int) -> None:
    rng = random.Random(seed)
    samples = random_samples(rng, rng.randrange(1, 200))
    ids = {(s.tenant, s.group, s.cgroup_id): 1000 + i for i, s in enumerate(samples)}
    size = rng.choice([3, 50, 65_536])   # a small one: generations turn within the call
    py_cache, c_cache = _TsCache(size), _TsCache(size)
    want = _sample_rows_py(samples, ids, 7, py_cache)
    got = c_rows(samples, ids, c_cache)
    assert got == want
    assert [type(r[2]) for r in got[0]] == [str] * len(samples)
    assert dict(c_cache) == dict(py_cache) and c_cache.fresh == py_cache.fresh
    # PostgreSQL: the datetimes themselves
    assert c_rows(samples, ids, None) == _sample_rows_py(samples, ids, 7, None)


def test_text_is_sqlalchemys_format() -> None:
    s = random_samples(random.Random(1), 1)[0]
    wall = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    s2 = GroupSample(node="n", tenant="t", group="g", cgroup_id=1, wall=wall, monotonic=1.0)
    rows, _ = c_rows([s2], {("t", "g", 1): 9, (s.tenant, s.group, s.cgroup_id): 1},
                     _TsCache())
    assert rows[0][:4] == (7, 9, "2026-01-02 03:04:05.000006", 1.0)


def test_a_sample_without_a_group_id_is_a_key_error_in_both() -> None:
    samples = random_samples(random.Random(2), 3)
    ids = {(s.tenant, s.group, s.cgroup_id): 1 for s in samples[:2]}
    with pytest.raises(KeyError):
        _sample_rows_py(samples, ids, 7, _TsCache())
    with pytest.raises(KeyError):
        c_rows(samples, ids, _TsCache())


def test_the_store_uses_the_accelerator_when_built() -> None:
    assert bulk.sample_rows is not _sample_rows_py


@pytest.mark.parametrize("seed", range(10))
def test_flat_chunks_as_the_twin(seed: int) -> None:
    rng = random.Random(seed)
    width = rng.randrange(1, 40)
    rows: list[Any] = [tuple(rng.choice([None, rng.randrange(1 << 62), "x", 1.5])
                             for _ in range(width)) for _ in range(rng.randrange(0, 300))]
    if rows and rng.random() < 0.3:
        rows[0] = list(rows[0])   # any sequence
    k = rng.randrange(1, 70)
    want = bulk._flat_chunks_py(rows, k)
    assert fast.flat_chunks(rows, k) == want
    assert len(want) == len(rows) // k
    assert [v for chunk in want for v in chunk] == \
        [v for r in rows[:len(rows) // k * k] for v in r]


def test_flat_chunks_errors_as_the_twin() -> None:
    for rows, k, exc in (([(1,), 2], 1, TypeError), ([(1,)], 0, ValueError),
                         ([(1,)], -1, ValueError)):
        with pytest.raises(exc):
            bulk._flat_chunks_py(rows, k)
        with pytest.raises(exc):
            fast.flat_chunks(rows, k)


def test_the_store_flattens_with_the_accelerator_when_built() -> None:
    assert bulk.flat_chunks is not bulk._flat_chunks_py


def test_samples_of_another_type_and_unset_slots_as_the_twin() -> None:
    """sample_rows reads the first sample's type's slots directly: a sample of another
    type (a subclass overriding an attribute) is read through getattr, as the twin reads
    it, and an unset slot raises AttributeError in both."""

    class Later(GroupSample):
        @property   # type: ignore[misc]
        def cpu_usage_usec(self) -> int:
            return 42

    samples = random_samples(random.Random(3), 4)
    other = object.__new__(Later)
    for f in dataclasses.fields(GroupSample):   # each slot, as the sampler sets them
        getattr(GroupSample, f.name).__set__(other, getattr(samples[1], f.name))
    mixed = [samples[0], other, samples[2]]
    ids = {(s.tenant, s.group, s.cgroup_id): i for i, s in enumerate(mixed)}
    want = _sample_rows_py(mixed, ids, 7, _TsCache())
    assert want[0][1][4] == 42
    assert c_rows(mixed, ids, _TsCache()) == want
    hollow = object.__new__(GroupSample)
    for name in ("node", "tenant", "group", "cgroup_id", "wall", "monotonic"):
        getattr(GroupSample, name).__set__(hollow, getattr(samples[3], name))
    ids[(hollow.tenant, hollow.group, hollow.cgroup_id)] = 9
    for rows in (_sample_rows_py, lambda s, i, n, c: c_rows(s, i, c)):
        with pytest.raises(AttributeError):
            rows([samples[0], hollow], ids, 7, _TsCache())
