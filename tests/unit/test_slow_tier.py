"""The slots of the sampler's slow tier (governor/metering/tiers.py): every group once per
``slow_every`` passes, the slots even, a group's slot kept while it exists."""

from __future__ import annotations

import random

import pytest

from governor.metering.tiers import SlowTier


def paths_of(n: int) -> list[str]:
    out = []
    for t in range((n + 9) // 10):
        out.append(f"t{t:03d}")
        out.extend(f"t{t:03d}/g{g}" for g in range(9))
    return sorted(out[:n])


def round_of(tier: SlowTier, paths: list[str], start: int = 0) -> list[list[str]]:
    return [[paths[i] for i in tier.marks(paths, start + k)] for k in range(tier.every)]


@pytest.mark.parametrize(("every", "n"), [(1, 7), (6, 1), (6, 5), (6, 1000), (4, 37)])
def test_every_group_once_a_round_and_the_slots_even(every: int, n: int) -> None:
    tier = SlowTier(every)
    paths = paths_of(n)
    slots = round_of(tier, paths)
    flat = [p for s in slots for p in s]
    assert sorted(flat) == paths   # each group in exactly one slot
    sizes = [len(s) for s in slots]
    assert max(sizes) - min(sizes) <= 1
    for s in slots:   # positions ascending: the pass walks the listing in order
        assert s == sorted(s, key=paths.index)
    # the next rounds are the same (a group's slot is kept)
    assert round_of(tier, paths, start=every) == slots
    assert round_of(tier, list(paths)) == slots  # an equal listing, another list


def test_a_group_keeps_its_slot_as_others_come_and_go() -> None:
    tier = SlowTier(6)
    paths = paths_of(300)
    tier.marks(paths, 0)
    before = {p: tier.slot_of(p) for p in paths}
    rng = random.Random(7)
    gone = set(rng.sample(paths, 60))
    new = [f"z{i:03d}" for i in range(45)]
    later = sorted([p for p in paths if p not in gone] + new)
    slots = round_of(tier, later)
    assert sorted(p for s in slots for p in s) == later
    for p in later:
        if p in before:
            assert tier.slot_of(p) == before[p], p
    assert all(tier.slot_of(p) is None for p in gone)
    # the newcomers filled the slots the removals emptied: still even
    sizes = [len(s) for s in slots]
    assert max(sizes) - min(sizes) <= 1, sizes


def test_removals_from_one_slot_are_refilled_there() -> None:
    tier = SlowTier(3)
    paths = paths_of(30)
    tier.marks(paths, 0)
    slot0 = [paths[i] for i in tier.marks(paths, 0)]
    left = [p for p in paths if p not in slot0[:4]]
    tier.marks(left, 0)
    new = sorted([*left, "n1", "n2", "n3", "n4"])
    tier.marks(new, 0)
    assert {tier.slot_of(p) for p in ("n1", "n2", "n3", "n4")} == {0}


def test_an_empty_listing_and_a_bad_count() -> None:
    tier = SlowTier(6)
    assert tier.marks([], 3) == []
    with pytest.raises(ValueError, match="at least 1"):
        SlowTier(0)


def test_slots_only_where_groups_are() -> None:
    """slow_every far above the number of groups: no slot is made for nothing (a
    billion-slot list would be 8 GB), each group still once in slow_every passes."""
    tier = SlowTier(10**9)
    paths = paths_of(50)
    assert sorted(p for k in range(50) for p in (paths[i] for i in tier.marks(paths, k))) \
        == paths
    assert tier.marks(paths, 50) == [] and tier.marks(paths, 10**9 - 1) == []
    assert tier.marks(paths, 10**9) == tier.marks(paths, 0) == [0]
