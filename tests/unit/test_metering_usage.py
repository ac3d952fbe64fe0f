"""Usage from pairs of samples and exact hour splits (pure model, no I/O)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from governor.metering import split_by_hour, split_exact, usage_between
from tests.helpers.db import make_sample

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
GIB = 1 << 30


def test_same_incarnation_deltas_and_trapezoid():
    a = make_sample(wall=T0, cpu=1_000, mem=GIB, rbytes=4096, wbytes=0)
    b = make_sample(wall=T0 + timedelta(seconds=10), cpu=2_501_000, mem=3 * GIB,
                    rbytes=8192, wbytes=65536)
    u = usage_between(a, b)
    assert u is not None
    assert u.cpu_usec == 2_500_000
    assert u.duration_us == 10_000_000
    # trapezoid: (1 GiB + 3 GiB) / 2 * 10 s
    assert u.memory_byte_seconds == 20 * GIB
    assert (u.io_rbytes, u.io_wbytes) == (4096, 65536)
    assert u.io["8:0"]["wios"] == 16
    assert u.start == T0 and u.end == b.wall and not u.from_creation


def test_device_first_seen_counts_from_zero():
    a = make_sample(wall=T0)
    b = make_sample(wall=T0 + timedelta(seconds=5), rbytes=4096, wbytes=4096)
    u = usage_between(a, b)
    assert u is not None and u.io_rbytes == 4096


@pytest.mark.parametrize("field", ["cpu_usage_usec", "memory_events_oom_kill"])
def test_counter_going_down_is_a_reset_not_negative(field):
    a = make_sample(wall=T0, cpu=10_000, oom_kill=3)
    b = dataclasses.replace(make_sample(wall=T0 + timedelta(seconds=5), cpu=20_000, oom_kill=3),
                            **{field: 1})
    assert usage_between(a, b) is None


def test_io_counter_going_down_is_a_reset():
    a = make_sample(wall=T0, rbytes=8192)
    b = make_sample(wall=T0 + timedelta(seconds=5), rbytes=4096)
    assert usage_between(a, b) is None


def test_new_incarnation_created_after_prev_counts_from_zero():
    a = make_sample(wall=T0, cgroup_id=1, cpu=9_999_999, mem=GIB)
    created = T0 + timedelta(seconds=4)
    b = make_sample(wall=T0 + timedelta(seconds=10), cgroup_id=2, cpu=600, mem=2 * GIB,
                    created=created)
    u = usage_between(a, b)
    assert u is not None and u.from_creation
    assert u.cpu_usec == 600
    assert u.start == created
    assert u.memory_byte_seconds == 6 * GIB  # (0 + 2 GiB) / 2 * 6 s


@pytest.mark.parametrize("created", [None, T0 - timedelta(seconds=1)])
def test_new_incarnation_unknown_or_earlier_birth_is_not_counted(created):
    a = make_sample(wall=T0, cgroup_id=1, cpu=100)
    b = make_sample(wall=T0 + timedelta(seconds=10), cgroup_id=2, cpu=600, created=created)
    assert usage_between(a, b) is None


def test_first_sample_ever_counts_only_with_known_creation():
    cur = make_sample(wall=T0, cpu=500)
    assert usage_between(None, cur) is None
    u = usage_between(None, dataclasses.replace(cur, created=T0 - timedelta(seconds=2)))
    assert u is not None and u.cpu_usec == 500


def test_monotonic_going_back_falls_back_to_wall_clock():
    a = make_sample(wall=T0, mono=500.0, mem=GIB)
    b = make_sample(wall=T0 + timedelta(seconds=2), mono=1.0, mem=GIB)
    u = usage_between(a, b)
    assert u is not None and u.duration_us == 2_000_000 and u.memory_byte_seconds == 2 * GIB


def test_missing_counter_is_unknown_not_zero():
    a = dataclasses.replace(make_sample(wall=T0, cpu=5), cpu_usage_usec=None)
    b = make_sample(wall=T0 + timedelta(seconds=2), cpu=100)
    u = usage_between(a, b)
    assert u is not None and u.cpu_usec is None


def test_samples_of_different_groups_refused():
    with pytest.raises(ValueError, match="different groups"):
        usage_between(make_sample(wall=T0, group="a"),
                      make_sample(wall=T0 + timedelta(seconds=1), group="b"))


def test_naive_wall_time_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        make_sample(wall=datetime(2026, 11, 1, 10, 0))


@given(st.integers(min_value=0, max_value=10**18),
       st.lists(st.integers(min_value=1, max_value=10**10), min_size=1, max_size=20))
def test_split_exact_sums_to_whole_and_stays_within_one(total, weights):
    parts = split_exact(total, weights)
    assert sum(parts) == total
    whole = sum(weights)
    for part, w in zip(parts, weights, strict=True):
        assert part >= 0
        assert abs(Fraction(part) - Fraction(total * w, whole)) < 1


def test_interval_across_two_hour_boundaries_splits_exactly():
    start = datetime(2026, 11, 1, 10, 50, tzinfo=UTC)
    end = datetime(2026, 11, 1, 12, 10, tzinfo=UTC)  # 10 min + 60 min + 10 min
    a = make_sample(wall=start, cpu=0, mem=GIB)
    b = make_sample(wall=end, cpu=8_000_000_001, mem=GIB, wbytes=1_000_001)
    u = usage_between(a, b)
    assert u is not None
    parts = split_by_hour(u)
    assert [h.hour for h, _, _ in parts] == [10, 11, 12]
    cpu = [q["cpu_usec"] for _, _, q in parts]
    assert sum(cpu) == 8_000_000_001
    assert cpu == [1_000_000_000, 6_000_000_000, 1_000_000_001]
    assert sum(q["memory_byte_seconds"] for _, _, q in parts) == u.memory_byte_seconds
    assert [q["memory_byte_seconds"] for _, _, q in parts] == [600 * GIB, 3600 * GIB, 600 * GIB]
    assert sum(q["io_wbytes"] for _, _, q in parts) == 1_000_001
    assert sum(c for _, c, _ in parts) == u.duration_us


@given(st.integers(0, 1 << 62), st.integers(0, 1 << 62), st.integers(1, 1 << 40))
def test_trapezoid_integer_rounding_is_the_exact_half_even_one(a: int, b: int, dt: int) -> None:
    """Issue #16: the memory integral in integer arithmetic, as round(Fraction) gave it."""
    from governor.metering.usage import _trapezoid

    assert _trapezoid(a, b, dt) == round(Fraction((a + b) * dt, 2 * 1_000_000))
    assert _trapezoid(1, 0, 1_000_000) == 0 and _trapezoid(3, 0, 1_000_000) == 2


# --- the writable layers (issue #19): the memory rule, counted only with both ends known ---


@pytest.mark.parametrize(("before", "after", "want"), [
    (GIB, 3 * GIB, 20 * GIB),       # (1 GiB + 3 GiB) / 2 * 10 s, as memory
    (0, 0, 0),                      # measured and empty: 0, not unknown
    (0, 2 * GIB, 10 * GIB),         # a container started in a group measured empty
    (5 * GIB, 0, 25 * GIB),         # a layer cleaned out inside the interval
    (None, 2 * GIB, None),          # appeared: measuring began (or a read came back)
    (2 * GIB, None, None),          # disappeared: a read failed (or measuring stopped)
    (None, None, None),             # nothing measured
])
def test_storage_integral_needs_both_ends(before, after, want):
    a = make_sample(wall=T0, cpu=1_000, mem=GIB, storage=before)
    b = make_sample(wall=T0 + timedelta(seconds=10), cpu=2_000, mem=GIB, storage=after)
    u = usage_between(a, b)
    assert u is not None and u.storage_byte_seconds == want
    assert u.memory_byte_seconds == 10 * GIB and u.cpu_usec == 1_000   # the rest unchanged


def test_storage_integral_is_the_memory_integral_of_the_same_values():
    """The same trapezoid, rounding half-even and dt (monotonic, else wall) as memory."""
    for mono_b, (x, y) in ((3.0000015, (1, 2)), (1.0, (7, 0)), (2.5, (1 << 62, 1 << 62))):
        a = make_sample(wall=T0, mono=1.0, mem=x, storage=x)
        b = make_sample(wall=T0 + timedelta(seconds=2), mono=mono_b, mem=y, storage=y)
        u = usage_between(a, b)
        assert u is not None and u.storage_byte_seconds == u.memory_byte_seconds


def test_storage_from_a_known_creation_starts_at_zero():
    created = T0 + timedelta(seconds=4)
    b = make_sample(wall=T0 + timedelta(seconds=10), cgroup_id=2, mem=0, storage=2 * GIB,
                    created=created)
    u = usage_between(make_sample(wall=T0, cgroup_id=1, storage=9 * GIB), b)
    assert u is not None and u.from_creation
    assert u.storage_byte_seconds == 6 * GIB   # (0 + 2 GiB) / 2 * 6 s
    u = usage_between(None, dataclasses.replace(b, storage_bytes=None))
    assert u is not None and u.storage_byte_seconds is None


def test_storage_splits_by_hour_exactly_and_unknown_stays_out():
    start = datetime(2026, 11, 1, 10, 50, tzinfo=UTC)
    end = datetime(2026, 11, 1, 12, 10, tzinfo=UTC)
    u = usage_between(make_sample(wall=start, storage=GIB + 1),
                      make_sample(wall=end, storage=GIB))
    assert u is not None
    parts = split_by_hour(u)
    assert sum(q["storage_byte_seconds"] for _, _, q in parts) == u.storage_byte_seconds
    assert [q["storage_byte_seconds"] for _, _, q in parts] == [
        600 * GIB + 300, 3600 * GIB + 1800, 600 * GIB + 300]
    u = usage_between(make_sample(wall=start), make_sample(wall=end, storage=GIB))
    assert u is not None and all("storage_byte_seconds" not in q
                                 for _, _, q in split_by_hour(u))


def test_hour_rollups_add_up_storage_like_memory():
    # through the meter's own pairing and rollups (governor.metering.meter.pair_series)
    from governor.metering.meter import pair_series
    from governor.metering.rollup import ROLLUP_QUANTITIES

    walls = [T0 + timedelta(minutes=50 + 10 * i) for i in range(4)]   # 10:50 .. 11:20
    samples = [make_sample(wall=w, mem=GIB, storage=s)
               for w, s in zip(walls, [GIB, GIB, None, 3 * GIB], strict=True)]
    metered = pair_series({"acme/web": samples[1:]}, {"acme/web": samples[0]})
    assert len(metered.usages) == 3
    # each row: covered_us, intervals, then the ROLLUP_QUANTITIES in order
    col = {name: 2 + i for i, name in enumerate(ROLLUP_QUANTITIES)}
    by_hour = {hour.hour: row for (_, hour), row in metered.rollups.items()}
    storage, memory = col["storage_byte_seconds"], col["memory_byte_seconds"]
    assert by_hour[10][storage] == 600 * GIB   # 10:50-11:00
    assert by_hour[11][storage] == 0   # 11:00-11:10 one end unknown, then none
    assert by_hour[10][memory] + by_hour[11][memory] == 1800 * GIB
