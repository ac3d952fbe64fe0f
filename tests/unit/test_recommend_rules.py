"""The right-sizing rules on synthetic series: percentiles, headroom, floors, the flags and
their thresholds, and no suggestion without data."""

from __future__ import annotations

import pytest

from governor.policy.units import shares_to_weight
from governor.recommend.rules import MIB, History, Settings, mib_up, percentile, recommend

S = Settings()


def hist(**kw: object) -> History:
    base: dict[str, object] = {"tenant": "acme", "group": "web", "samples": 100}
    base.update(kw)
    return History(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("values", "pct", "expected"), [
    ([5.0], 99, 5.0),
    (list(range(1, 101)), 99, 99),
    (list(range(1, 101)), 95, 95),
    (list(range(1, 101)), 100, 100),
    (list(range(100, 0, -1)), 50, 50),     # order of the input does not matter
    ([1, 2, 3, 4], 25, 1),
    ([1, 2, 3, 4], 26, 2),                  # nearest rank: ceil(0.26 * 4) = 2
])
def test_percentile_nearest_rank(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == expected


def test_percentile_refuses_nothing_and_bad_ranks() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 99)
    with pytest.raises(ValueError, match="not in"):
        percentile([1], 0)


def test_mib_up() -> None:
    assert mib_up(1) == MIB
    assert mib_up(MIB) == MIB
    assert mib_up(MIB + 1) == 2 * MIB


def test_memory_from_p99_and_peak_with_headroom() -> None:
    # 99 samples at 100 MiB, one spike at 200 MiB: p99 100 MiB, peak 200 MiB
    ws = [100 * MIB] * 99 + [200 * MIB]
    r = recommend(hist(working_set=ws), S)
    assert r.figures["working_set_p99"] == 100 * MIB
    assert r.figures["working_set_peak"] == 200 * MIB
    assert r.suggest["memory.high"] == str(120 * MIB)          # p99 * 1.2
    assert r.suggest["memory.max"] == str(240 * MIB)           # peak * 1.2
    assert r.basis == "memory.current"
    assert r.flags == ()


def test_memory_max_keeps_high_at_most_the_kep_factor_of_it() -> None:
    # flat series: peak * 1.2 = 120 MiB, but high 120 MiB needs max >= 120 / 0.9
    r = recommend(hist(working_set=[100 * MIB] * 10), S)
    assert r.suggest["memory.high"] == str(120 * MIB)
    assert r.suggest["memory.max"] == str(mib_up(120 * MIB / 0.9))  # 134 MiB
    assert int(r.suggest["memory.high"]) <= 0.9 * int(r.suggest["memory.max"])


def test_headroom_setting() -> None:
    r = recommend(hist(working_set=[100 * MIB] * 10), Settings(headroom=0.5))
    assert r.suggest["memory.high"] == str(150 * MIB)
    r = recommend(hist(working_set=[100 * MIB] * 10), Settings(headroom=0.0))
    assert r.suggest["memory.high"] == str(100 * MIB)


def test_memory_floor_is_said() -> None:
    r = recommend(hist(working_set=[MIB] * 10), S)
    assert r.suggest["memory.high"] == str(16 * MIB)
    assert int(r.suggest["memory.max"]) >= 16 * MIB
    assert any("floor" in n for n in r.notes)


def test_suggestions_round_up_to_mib() -> None:
    r = recommend(hist(working_set=[100 * MIB + 12345] * 10, cpu_rates=[0.5] * 10), S)
    for f in ("memory.max", "memory.high"):
        assert int(r.suggest[f]) % MIB == 0


def test_no_samples_is_no_data_never_zero() -> None:
    r = recommend(hist(samples=0, limits={"memory.max": str(512 * MIB)}), S)
    assert r.flags == ("no-data",)
    assert r.suggest == {}
    assert r.reasons == ("no sample in the window",)


def test_cpu_from_p95_with_headroom_and_weight_from_the_request() -> None:
    rates = [0.5] * 95 + [4.0] * 5             # p95 = 0.5 cores
    r = recommend(hist(working_set=[100 * MIB], cpu_rates=rates), S)
    assert r.figures["cpu_p95_cores"] == 0.5
    assert r.suggest["cpu.max"] == "60000 100000"             # 0.5 * 1.2 cores
    assert r.suggest["cpu.weight"] == str(shares_to_weight(615))  # ceil(0.6 * 1024)


def test_cpu_floor() -> None:
    r = recommend(hist(working_set=[100 * MIB], cpu_rates=[0.0] * 10), S)
    assert r.suggest["cpu.max"] == "10000 100000"
    assert any("cpu.max" in n and "floor" in n for n in r.notes)


def test_one_sample_has_memory_but_no_cpu() -> None:
    r = recommend(hist(samples=1, working_set=[100 * MIB]), S)
    assert "memory.max" in r.suggest and "cpu.max" not in r.suggest
    assert any("cpu: fewer than two samples" in n for n in r.notes)


@pytest.mark.parametrize(("pressure", "starved"), [
    ({"memory": 0.05}, False), ({"memory": 0.10}, False), ({"memory": 0.11}, True),
    ({"cpu": 0.5}, True), ({"io": 0.2}, True), ({"io": None}, False),
])
def test_pressure_threshold(pressure: dict[str, float | None], starved: bool) -> None:
    r = recommend(hist(working_set=[100 * MIB], pressure=pressure), S)
    assert ("starved" in r.flags) is starved
    if starved:
        [res] = [k for k, v in pressure.items() if v]
        assert any(reason.startswith(f"{res} pressure") for reason in r.reasons)


@pytest.mark.parametrize(("throttled", "periods", "starved"), [
    (0, 0, False), (10, 100, False), (11, 100, True), (95, 100, True)])
def test_throttling_threshold(throttled: int, periods: int, starved: bool) -> None:
    r = recommend(hist(working_set=[100 * MIB], cpu_rates=[0.1] * 10,
                       nr_throttled=throttled, nr_periods=periods), S)
    assert ("starved" in r.flags) is starved
    assert any("throttled in" in x for x in r.reasons) is starved


def test_throttled_group_gets_more_than_its_censored_usage() -> None:
    # quota 0.1 core, usage pinned at 0.1 by it: the suggestion raises the quota
    r = recommend(hist(working_set=[100 * MIB], cpu_rates=[0.1] * 10, nr_throttled=90,
                       nr_periods=100, limits={"cpu.max": "10000 100000"}), S)
    assert r.suggest["cpu.max"] == "12000 100000"
    assert any("held down by the quota" in n for n in r.notes)


def test_oom_kill_starves_and_raises_memory_max_over_the_limit() -> None:
    limit = 40 * MIB
    r = recommend(hist(working_set=[39 * MIB] * 10, oom_kills=3,
                       limits={"memory.max": str(limit)}), S)
    assert "starved" in r.flags
    assert "3 OOM kills in the window" in r.reasons
    assert int(r.suggest["memory.max"]) >= mib_up(limit * 1.2)
    assert int(r.suggest["memory.high"]) < int(r.suggest["memory.max"])


@pytest.mark.parametrize(("limit_mib", "over"), [(512, True), (41, True), (40, False),
                                                 (30, False)])
def test_over_provisioned_memory_threshold(limit_mib: int, over: bool) -> None:
    r = recommend(hist(working_set=[20 * MIB] * 100,
                       limits={"memory.max": str(limit_mib * MIB)}), S)
    assert ("over-provisioned" in r.flags) is over
    if over:
        assert r.reasons[0].startswith(f"memory.max {limit_mib}M is ")
        assert int(r.suggest["memory.max"]) < limit_mib * MIB


def test_over_provisioned_cpu_and_unlimited_is_not_over() -> None:
    r = recommend(hist(working_set=[20 * MIB], cpu_rates=[0.2] * 20,
                       limits={"cpu.max": "200000 100000"}), S)
    assert "over-provisioned" in r.flags
    assert any(x.startswith("cpu.max 2 cores") for x in r.reasons)
    r = recommend(hist(working_set=[20 * MIB], cpu_rates=[0.2] * 20,
                       limits={"cpu.max": "max 100000", "memory.max": "max"}), S)
    assert r.flags == ()


def test_as_dict_is_plain() -> None:
    import json

    r = recommend(hist(working_set=[20 * MIB], cpu_rates=[0.2] * 3), S)
    doc = json.loads(json.dumps(r.as_dict()))
    assert doc["working_set_basis"] == "memory.current"
    assert doc["suggest"]["memory.max"] == r.suggest["memory.max"]
