"""The slots of a rolling round (governor/rounds.py), which the sampler's slow tier and
the drift watch's sweep share."""

from __future__ import annotations

import random

import pytest

from governor.rounds import Rounds


def test_keys_in_order_fill_the_slots_in_turn() -> None:
    r = Rounds(4)
    assert [r.add(f"g{i}") for i in range(10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert r.add("g5") == 1   # a key keeps its slot
    assert r.members(1) == {"g1", "g5", "g9"} and r.members(5) == r.members(1)
    assert "g3" in r and "x" not in r and r.slot_of("x") is None


def test_removals_are_refilled_and_the_slots_stay_even() -> None:
    r = Rounds(6)
    keys = [f"g{i:04d}" for i in range(600)]
    for k in keys:
        r.add(k)
    rng = random.Random(3)
    for _ in range(20):   # churn: some leave, as many or fewer come
        for k in rng.sample(r.held(), 40):
            r.drop(k)
        for i in range(rng.randint(20, 40)):
            r.add(f"n{rng.random()}-{i}")
        sizes = [len(r.members(t)) for t in range(6)]
        assert sum(sizes) == len(r.held())
        assert all(r.slot_of(k) == t for t in range(6) for k in r.members(t))
    # whatever the removals left, newcomers go to the emptiest slots first
    before = [len(r.members(t)) for t in range(6)]
    low = min(before)
    got = r.add("last")
    assert before[got] == low


def test_drop_of_an_unknown_key_and_a_huge_count() -> None:
    r = Rounds(10**9)
    r.drop("nobody")
    assert [r.add(f"g{i}") for i in range(3)] == [0, 1, 2]
    assert r.in_use == 3 and r.members(7) == set() and r.members(10**9 + 2) == {"g2"}
    with pytest.raises(ValueError, match="at least 1"):
        Rounds(0)
