"""``governor recommend`` over stored history (SQLite and PostgreSQL): samples written
through the store's own writer, limits through the applied-policy recorder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from governor.errors import UnknownTenant
from governor.metering.sample import GroupSample
from governor.policy import parse_policy
from governor.recommend.errors import BadOption
from governor.recommend.rules import MIB, Settings
from governor.recommend.service import parse_percent, parse_window, recommend_groups
from governor.store.service import record_applied_policy, record_samples
from tests.helpers.db import db_url, engine, session  # noqa: F401

T0 = datetime(2026, 12, 1, tzinfo=UTC)
STEP = timedelta(seconds=10)
HOUR = timedelta(hours=1)


def sample(group: str, i: int, *, cgroup_id: int, mem: int, cores: float,
           throttled: float = 0.0, oom_kills: int = 0, mem_pressure: float = 0.0,
           tenant: str = "acme", node: str = "n1", start: datetime = T0) -> GroupSample:
    """The i-th sample (every 10 s) of a group using ``cores`` and ``mem`` steadily, with
    ``throttled`` of its periods throttled and memory stalls ``mem_pressure`` of the time."""
    secs = i * STEP.total_seconds()
    periods = int(secs * 10)                      # 100 ms periods
    return GroupSample(
        node=node, tenant=tenant, group=group, cgroup_id=cgroup_id, wall=start + i * STEP,
        monotonic=1000.0 + secs, cpu_usage_usec=int(secs * 1e6 * cores),
        cpu_nr_periods=periods, cpu_nr_throttled=int(periods * throttled),
        cpu_throttled_usec=0, memory_current=mem, memory_peak=mem,
        memory_events_oom_kill=oom_kills,
        psi={"cpu_some": 0, "memory_some": int(secs * 1e6 * mem_pressure), "io_some": 0})


def write(db: Session, samples: list[GroupSample], node: str = "n1") -> None:
    record_samples(session=db, node=node, samples=samples)
    db.commit()


def limits(db: Session, path: str, **files: str) -> None:
    record_applied_policy(session=db, node="n1", applied_at=T0 - HOUR, policy_hash="x",
                          trigger="test", writes=[
                              {"path": f"governor.slice/{path}", "file": f, "kind": "set",
                               "value": v, "ok": "yes"} for f, v in files.items()])
    db.commit()


def history(db: Session) -> None:
    """An hour of two groups: `big` (512M, 20 MiB used) and `small` (40M, OOM kills,
    memory pressure, cpu.max 0.1 core and throttled 90% of its periods)."""
    limits(db, "acme/big", **{"memory.max": str(512 * MIB)})
    limits(db, "acme/small", **{"memory.max": str(40 * MIB), "cpu.max": "10000 100000"})
    write(db, [s for i in range(361) for s in (
        sample("big", i, cgroup_id=1, mem=20 * MIB + (i % 7) * 4096, cores=0.05),
        sample("small", i, cgroup_id=2, mem=39 * MIB, cores=0.1, throttled=0.9,
               oom_kills=i // 60, mem_pressure=0.3))])


def test_tells_over_provisioned_from_starved(engine, db_url, session) -> None:  # noqa: F811
    history(session)
    recs = recommend_groups(db_url, settings=Settings(), window=HOUR, now=T0 + HOUR)
    by = {r.group: r for r in recs}
    assert set(by) == {"big", "small"}
    big, small = by["big"], by["small"]
    assert big.flags == ("over-provisioned",)
    assert big.samples == 360                       # [now - 1h, now): the last is out
    assert big.limits_from == "applied"
    assert big.current["memory.max"] == str(512 * MIB)
    assert int(big.suggest["memory.max"]) < 40 * MIB
    assert int(big.suggest["memory.max"]) % MIB == 0
    assert big.figures["cpu_p95_cores"] == pytest.approx(0.05, abs=1e-6)
    assert small.flags == ("starved",)
    reasons = " | ".join(small.reasons)
    assert "memory pressure" in reasons and "30.0%" in reasons
    assert "cpu throttled in 90.0% of periods" in reasons
    assert "5 OOM kills in the window" in reasons
    assert int(small.suggest["memory.max"]) >= 48 * MIB      # the limit + 20%
    assert small.suggest["cpu.max"] == "12000 100000"


def test_window_selects_samples_and_empty_window_is_no_data(engine, db_url,  # noqa: F811
                                                            session) -> None:  # noqa: F811
    history(session)
    recs = recommend_groups(db_url, settings=Settings(), window=timedelta(minutes=10),
                            now=T0 + HOUR)
    assert {r.samples for r in recs} == {60}
    later = recommend_groups(db_url, settings=Settings(), window=HOUR,
                             now=T0 + 3 * HOUR)
    assert [r.flags for r in later] == [("no-data",), ("no-data",)]
    assert all(r.suggest == {} for r in later)


def test_a_new_incarnation_is_no_negative_rate(engine, db_url, session) -> None:  # noqa: F811
    first = [sample("web", i, cgroup_id=7, mem=50 * MIB, cores=1.0) for i in range(30)]
    second = [sample("web", i, cgroup_id=8, mem=50 * MIB, cores=1.0,
                     start=T0 + 30 * STEP) for i in range(30)]
    write(session, first + second)
    [r] = recommend_groups(db_url, settings=Settings(), window=HOUR, now=T0 + HOUR)
    assert r.samples == 60
    assert r.figures["cpu_p95_cores"] == pytest.approx(1.0)


def test_nodes_pool_and_tenant_and_group_filters(engine, db_url, session) -> None:  # noqa: F811
    write(session, [sample("web", i, cgroup_id=1, mem=10 * MIB, cores=0.2)
                    for i in range(10)])
    write(session, [sample("web", i, cgroup_id=1, mem=30 * MIB, cores=0.2, node="n2")
                    for i in range(10)], node="n2")
    write(session, [sample("db", i, cgroup_id=2, mem=10 * MIB, cores=0.2, tenant="globex")
                    for i in range(10)])
    [r] = recommend_groups(db_url, settings=Settings(), window=HOUR, tenant="acme",
                           group="web", now=T0 + HOUR)
    assert r.samples == 20 and r.figures["working_set_peak"] == 30 * MIB
    got = recommend_groups(db_url, settings=Settings(), window=HOUR, tenant="globex",
                           now=T0 + HOUR)
    assert [x.path for x in got] == ["globex/db"]
    with pytest.raises(UnknownTenant, match=r"unknown tenant 'nobody'.*acme, globex"):
        recommend_groups(db_url, settings=Settings(), window=HOUR, tenant="nobody",
                         now=T0 + HOUR)
    with pytest.raises(UnknownTenant, match=r"unknown group acme/nope.*groups: web"):
        recommend_groups(db_url, settings=Settings(), window=HOUR, tenant="acme",
                         group="nope", now=T0 + HOUR)
    with pytest.raises(BadOption, match="--group 'web': give its tenant"):
        recommend_groups(db_url, settings=Settings(), window=HOUR, group="web")


def test_policy_groups_without_samples_and_policy_limits(engine, db_url,  # noqa: F811
                                                         session) -> None:  # noqa: F811
    write(session, [sample("web", i, cgroup_id=1, mem=10 * MIB, cores=0.2)
                    for i in range(10)])
    pol = parse_policy([("p.toml", """
[tenants.acme.groups.web]
memory.max = "1G"
[tenants.acme.groups.idle]
memory.max = "64M"
""")])
    recs = recommend_groups(db_url, settings=Settings(), window=HOUR, policy=pol,
                            now=T0 + HOUR)
    by = {r.group: r for r in recs}
    assert by["idle"].flags == ("no-data",) and by["idle"].suggest == {}
    assert by["web"].limits_from == "policy"
    assert by["web"].current["memory.max"] == str(1 << 30)
    assert "over-provisioned" in by["web"].flags


@pytest.mark.parametrize(("value", "seconds"), [("7d", 7 * 86400), ("1h", 3600),
                                                ("90m", 5400), ("2w", 14 * 86400),
                                                ("1.5h", 5400)])
def test_parse_window(value: str, seconds: int) -> None:
    assert parse_window(value).total_seconds() == seconds


@pytest.mark.parametrize("value", ["", "7", "0d", "-1d", "7 days", "abc", "400d"])
def test_parse_window_refuses(value: str) -> None:
    with pytest.raises(BadOption, match=rf"--window {value!r}: give a positive duration"):
        parse_window(value)


@pytest.mark.parametrize(("value", "fraction"), [("20%", 0.2), ("0%", 0.0), ("15", 0.15),
                                                 ("12.5%", 0.125)])
def test_parse_percent(value: str, fraction: float) -> None:
    assert parse_percent(value, "--headroom") == fraction


@pytest.mark.parametrize("value", ["-5%", "abc", "20%%", "2000%", ""])
def test_parse_percent_refuses(value: str) -> None:
    with pytest.raises(BadOption, match=rf"--headroom {value!r}: give a percentage"):
        parse_percent(value, "--headroom")
