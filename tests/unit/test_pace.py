"""Issue #16: how many groups a pass reads for the first time (governor/daemon/pace.py).
Groups found at once are opened over several passes, as many a pass as the last passes'
measured costs say fit, so that a whole pass -- the known groups included -- ends within
its interval."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governor.daemon.pace import FIRST, FLOOR_SHARE, GROWTH, TARGET_SHARE, OpenPace
from governor.daemon.passes import SamplingPass


def test_the_first_pass_opens_a_fixed_few() -> None:
    assert OpenPace(10.0).limit == FIRST


def test_the_next_pass_opens_what_fits_the_room_the_known_groups_leave() -> None:
    p = OpenPace(10.0)
    # 100 opened at 20 ms each (2 s), 900 known at 1 ms each (0.9 s)
    got = p.after(groups=1000, opened=100, took=2.9, new_s=2.0)
    assert p.per_new == pytest.approx(0.020) and p.per_known == pytest.approx(0.001)
    # room: 7 s - 1,000 known x 1 ms = 6 s, at 20 ms a group = 300 (under 4 x 100)
    assert got == p.limit == 300


def test_growth_is_bounded_by_what_the_last_pass_opened() -> None:
    p = OpenPace(10.0)
    assert p.after(groups=100, opened=100, took=0.1, new_s=0.1) == GROWTH * FIRST
    assert p.after(groups=600, opened=400, took=0.5, new_s=0.4) == GROWTH * 400


def test_known_groups_that_fill_the_interval_leave_the_floor() -> None:
    p = OpenPace(10.0)
    # 5,000 known at 2 ms: 10 s, past the target: new groups get the floor's 2 s
    got = p.after(groups=5100, opened=100, took=10.0 + 1.0, new_s=1.0)
    assert got == int(FLOOR_SHARE * 10.0 / 0.010)


def test_a_pass_that_opened_nothing_keeps_the_limit() -> None:
    p = OpenPace(10.0)
    p.after(groups=1000, opened=100, took=2.9, new_s=2.0)
    assert p.after(groups=1000, opened=0, took=1.0, new_s=0.0) == 300
    assert p.after(groups=1000, opened=5, took=0.0, new_s=0.0) == 300  # nothing measured


def test_a_pass_that_writes_is_planned_with_the_cost_of_the_passes_that_write() -> None:
    """Every write_every-th pass writes the metered rows (dearer by seconds at 10,000
    groups): the pass before it plans for that, the others for a plain pass."""
    p = OpenPace(10.0)
    p.after(groups=1000, opened=100, took=2.9, new_s=2.0)              # plain: 1 ms
    # a pass that writes: 3 ms a known group; the next is plain again
    got = p.after(groups=1100, opened=100, took=2.0 + 3.0, new_s=2.0, wrote=True)
    assert p.per_known == pytest.approx(0.001)
    assert abs(got - (7.0 - 1100 * 0.001) / 0.020) <= 1
    # the next writes: planned with 3 ms (room: 7 s - 1,200 x 3 ms)
    got = p.after(groups=1200, opened=100, took=2.0 + 1.1, new_s=2.0, writes_next=True)
    assert p.per_known == pytest.approx(0.003)
    assert abs(got - (7.0 - 1200 * 0.003) / 0.020) <= 1


def test_a_kind_not_measured_yet_is_planned_with_the_dearest_known() -> None:
    p = OpenPace(10.0)
    p.after(groups=1000, opened=0, took=3.0, new_s=0.0, wrote=True)   # 3 ms
    p.after(groups=1000, opened=0, took=1.0, new_s=0.0, writes_next=True)
    assert p.per_known == pytest.approx(0.003)
    p = OpenPace(10.0)
    p.after(groups=1000, opened=0, took=3.0, new_s=0.0)                # plain, 3 ms
    p.after(groups=1000, opened=0, took=1.0, new_s=0.0)                # plain, 1 ms
    assert p.per_known == pytest.approx(0.003)                         # the dearer of two
    p.after(groups=1000, opened=0, took=1.0, new_s=0.0)
    assert p.per_known == pytest.approx(0.001)


def test_at_least_one_group_a_pass() -> None:
    p = OpenPace(1.0)
    assert p.after(groups=10, opened=1, took=30.0, new_s=30.0) == 1


@settings(max_examples=300, deadline=None)
@given(groups=st.integers(1, 20_000), per_new=st.floats(1e-4, 0.05),
       per_known=st.floats(1e-5, 5e-4), interval=st.sampled_from([2.0, 10.0, 60.0]))
def test_a_start_opens_every_group_and_no_pass_after_the_first_outruns_its_interval(
        groups: int, per_new: float, per_known: float, interval: float) -> None:
    """A start finding ``groups`` groups, each costing ``per_new`` on its first pass and
    ``per_known`` on each later one: every group is opened, and each pass after the first
    (nothing measured before it) ends within the target share of the interval, or within
    the floor's share on top of the known groups when those alone fill it."""
    p = OpenPace(interval)
    known, passes = 0, 0
    while known < groups:
        opened = min(p.limit, groups - known)
        took = known * per_known + opened * per_new
        if passes:
            # (the second pass knows no known group's cost yet: the first had none)
            unmeasured = known * per_known if p.per_known == 0 else 0.0
            assert took <= max(TARGET_SHARE * interval,
                               known * per_known + FLOOR_SHARE * interval) + unmeasured + 1e-9
        known += opened
        p.after(groups=known, opened=opened, took=took, new_s=opened * per_new)
        passes += 1
        assert passes < 10_000
    assert known == groups


def _pass(deferred: int, sampled: int, opened: int) -> SimpleNamespace:
    return SimpleNamespace(deferred=["x"] * deferred, samples=[None] * sampled, opened=opened)


def test_an_opening_over_several_passes_is_logged_at_its_start_and_end(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """...and its end freezes the heap again: the groups opened after the start-up's freeze
    live as long as they exist, out of the full collections' way."""
    settled: list[int] = []
    monkeypatch.setattr("governor.daemon.passes.settle_heap",
                        lambda: settled.append(1) or 12345)
    sp = SamplingPass.__new__(SamplingPass)
    sp.sampler = SimpleNamespace(passes=1, first_read_max=100)  # type: ignore[assignment]
    with caplog.at_level(logging.DEBUG, logger="governor.daemon"):
        sp._log_opening(_pass(900, 100, 100))
        sp.sampler.passes = 2
        sp._log_opening(_pass(500, 500, 400))
        sp.sampler.passes = 3
        sp._log_opening(_pass(0, 1000, 500))
        sp.sampler.passes = 4
        sp._log_opening(_pass(0, 1000, 0))     # nothing new: nothing said
    got = [(r.levelno, r.getMessage(), r.__dict__.get("deferred"), r.__dict__.get("passes"))
           for r in caplog.records]
    assert got == [(logging.INFO, "groups left for the next pass", 900, None),
                   (logging.DEBUG, "groups left for the next pass", 500, None),
                   (logging.INFO, "every group read", None, 3)]
    assert settled == [1] and caplog.records[-1].__dict__["heap_frozen"] == 12345
